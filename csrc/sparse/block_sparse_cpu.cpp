// Block-sparse linear on packed 32x32 blocks (see block_sparse_core.h).
//
// Register tile: `Tile` token rows x the 32 outputs of one block row, held in
// 2 * Tile vectors of 16 floats across all the live blocks of that block row;
// per input feature k the kernel loads the 32 weights W[.., k] once and does
// one multiply-add per token row. The vectors are GCC vector types, so each
// ISA variant (isa_dispatch.h) gets its own code: one zmm per vector on
// AVX-512 (tile 8: 16 accumulators), two ymm on AVX2 (tile 4), four xmm on
// the baseline (tile 2), always within the 16/32 vector registers.
#include <cstring>

// The vector helpers are always inlined into one ISA variant; the ABI note about passing
// 64-byte vectors between functions does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "../common/fast_math.h"
#include "../common/isa_dispatch.h"
#include "block_sparse_core.h"

namespace pyprune {
namespace bsr {
namespace {

typedef float Vec16 __attribute__((vector_size(64)));

PYPRUNE_INLINE Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

PYPRUNE_INLINE void store16(float* p, Vec16 v) { std::memcpy(p, &v, sizeof v); }

// Outputs of block row r for token rows [m0, m0 + Tile).
template <int Tile>
PYPRUNE_INLINE void tile(const Problem& p, int64_t r, int64_t m0) {
  Vec16 acc[Tile][2];
  Vec16 low = {}, high = {};
  if (p.bias != nullptr) {
    low = load16(p.bias + r * kBlock);
    high = load16(p.bias + r * kBlock + 16);
  }
#pragma GCC unroll 16
  for (int m = 0; m < Tile; ++m) {
    acc[m][0] = low;
    acc[m][1] = high;
  }
  const float* x = p.x + m0 * p.ldx;
  for (int64_t b = p.row_ptr[r]; b < p.row_ptr[r + 1]; ++b) {
    const float* w = p.blocks + b * kBlock * kBlock;
    const float* xc = x + p.col_index[b] * kBlock;
    for (int k = 0; k < kBlock; ++k) {
      const Vec16 w0 = load16(w + k * kBlock), w1 = load16(w + k * kBlock + 16);
#pragma GCC unroll 16
      for (int m = 0; m < Tile; ++m) {
        const float s = xc[m * p.ldx + k];
        acc[m][0] += s * w0;
        acc[m][1] += s * w1;
      }
    }
  }
  float* y = p.y + m0 * p.ldy + r * kBlock;
#pragma GCC unroll 16
  for (int m = 0; m < Tile; ++m) {
    store16(y + m * p.ldy, acc[m][0]);
    store16(y + m * p.ldy + 16, acc[m][1]);
  }
}

// The last rows % Tile token rows, one smaller tile.
template <int Tile>
PYPRUNE_INLINE void remainder(const Problem& p, int64_t r, int64_t m0, int64_t left) {
  if constexpr (Tile > 1) {
    if (left == Tile - 1) return tile<Tile - 1>(p, r, m0);
    return remainder<Tile - 1>(p, r, m0, left);
  }
}

template <int Tile>
PYPRUNE_INLINE void rows_impl(const Problem& p, int64_t first, int64_t last) {
  for (int64_t r = first; r < last; ++r) {
    int64_t m = 0;
    for (; m + Tile <= p.rows; m += Tile) tile<Tile>(p, r, m);
    if (m < p.rows) remainder<Tile>(p, r, m, p.rows - m);
  }
}

}  // namespace

#ifdef PYPRUNE_X86_DISPATCH
PYPRUNE_TARGET_AVX512 static void rows_avx512(const Problem& p, int64_t first, int64_t last) {
  rows_impl<8>(p, first, last);
}
PYPRUNE_TARGET_AVX2 static void rows_avx2(const Problem& p, int64_t first, int64_t last) {
  rows_impl<4>(p, first, last);
}
#endif

static void rows_base(const Problem& p, int64_t first, int64_t last) { rows_impl<2>(p, first, last); }

void linear_rows(const Problem& p, int64_t first, int64_t last) {
#ifdef PYPRUNE_X86_DISPATCH
  const Isa isa = cpu_isa();
  if (isa == Isa::kAvx512) return rows_avx512(p, first, last);
  if (isa == Isa::kAvx2) return rows_avx2(p, first, last);
#endif
  rows_base(p, first, last);
}

}  // namespace bsr
}  // namespace pyprune
