// Block-sparse linear on packed 32x32 blocks (see block_sparse_core.h).
//
// Register tile: `Tile` token rows x the 32 outputs of one block row, held in
// 2 * Tile vectors of 16 floats across all the live blocks of that block row;
// per input feature k the kernel loads the 32 weights W[.., k] once and does
// one multiply-add per token row. The vectors are GCC vector types, so each
// ISA variant (isa_dispatch.h) gets its own code: one zmm per vector on
// AVX-512 (tile 8: 16 accumulators), two ymm on AVX2 (tile 4), four xmm on
// the baseline (tile 2), always within the 16/32 vector registers.
//
// bfloat16 runs the same tile on weights and inputs widened to float32 as
// they are loaded, except on CPUs with AVX512_BF16: there `tile_dot` takes
// the input features in pairs, interleaves the two k-rows of 32 bfloat16
// weights into (k, k+1) pairs in registers (unpacklo/hi: the accumulators
// then hold the outputs in a fixed permuted order, undone once per tile) and
// does two multiply-adds per lane with vdpbf16ps: twice the float32 rate.
#include <cstring>

// The vector helpers are always inlined into one ISA variant; the ABI note about passing
// 64-byte vectors between functions does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "../common/fast_math.h"
#include "../common/isa_dispatch.h"
#include "../common/vec16.h"
#include "block_sparse_core.h"

#ifdef PYPRUNE_X86_DISPATCH
#include <immintrin.h>
#endif

namespace pyprune {
namespace bsr {
namespace {

// The finished float32 outputs of one tile (bias included) for block row r, token rows [m0, m0 + Tile):
// activated, then stored (bfloat16: rounded once).
template <int Tile, typename T>
PYPRUNE_INLINE void store_tile(const ProblemOf<T>& p, int64_t r, int64_t m0, Vec16 (&out)[Tile][2]) {
  if (p.activation == Activation::kGelu) {
#pragma GCC unroll 16
    for (int m = 0; m < Tile; ++m) {
      out[m][0] = gelu16(out[m][0]);
      out[m][1] = gelu16(out[m][1]);
    }
  }
  T* y = p.y + m0 * p.ldy + r * kBlock;
#pragma GCC unroll 16
  for (int m = 0; m < Tile; ++m) {
    store16(y + m * p.ldy, out[m][0]);
    store16(y + m * p.ldy + 16, out[m][1]);
  }
}

// Outputs of block row r for token rows [m0, m0 + Tile).
template <int Tile, typename T>
PYPRUNE_INLINE void tile(const ProblemOf<T>& p, int64_t r, int64_t m0) {
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
  const T* x = p.x + m0 * p.ldx;
  for (int64_t b = p.row_ptr[r]; b < p.row_ptr[r + 1]; ++b) {
    const T* w = p.blocks + b * kBlock * kBlock;
    const T* xc = x + p.col_index[b] * kBlock;
    for (int k = 0; k < kBlock; ++k) {
      const Vec16 w0 = load16(w + k * kBlock), w1 = load16(w + k * kBlock + 16);
#pragma GCC unroll 16
      for (int m = 0; m < Tile; ++m) {
        const float s = to_float(xc[m * p.ldx + k]);
        acc[m][0] += s * w0;
        acc[m][1] += s * w1;
      }
    }
  }
  store_tile<Tile>(p, r, m0, acc);
}

// The last rows % Tile token rows, one smaller tile.
template <int Tile, typename T>
PYPRUNE_INLINE void remainder(const ProblemOf<T>& p, int64_t r, int64_t m0, int64_t left) {
  if constexpr (Tile > 1) {
    if (left == Tile - 1) return tile<Tile - 1>(p, r, m0);
    return remainder<Tile - 1>(p, r, m0, left);
  }
}

template <int Tile, typename T>
PYPRUNE_INLINE void rows_impl(const ProblemOf<T>& p, int64_t first, int64_t last) {
  for (int64_t r = first; r < last; ++r) {
    int64_t m = 0;
    for (; m + Tile <= p.rows; m += Tile) tile<Tile>(p, r, m);
    if (m < p.rows) remainder<Tile>(p, r, m, p.rows - m);
  }
}

#ifdef PYPRUNE_X86_DISPATCH
// bfloat16 on vdpbf16ps: per pair of input features (2j, 2j+1) one 32-bit broadcast of the token's pair
// and two pairwise dot products per token row. acc[m][0] holds outputs {0-3, 8-11, 16-19, 24-27} of the
// block row (unpacklo's order), acc[m][1] the others.
template <int Tile>
PYPRUNE_TARGET_AVX512BF16 PYPRUNE_INLINE void tile_dot(const ProblemBf16& p, int64_t r, int64_t m0) {
  __m512 acc[Tile][2];
#pragma GCC unroll 16
  for (int m = 0; m < Tile; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  const uint16_t* x = p.x + m0 * p.ldx;
  for (int64_t b = p.row_ptr[r]; b < p.row_ptr[r + 1]; ++b) {
    const uint16_t* w = p.blocks + b * kBlock * kBlock;
    const uint16_t* xc = x + p.col_index[b] * kBlock;
    for (int k = 0; k < kBlock; k += 2) {
      const __m512i even = _mm512_loadu_si512(w + k * kBlock), odd = _mm512_loadu_si512(w + (k + 1) * kBlock);
      const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(even, odd);
      const __m512bh hi = (__m512bh)_mm512_unpackhi_epi16(even, odd);
#pragma GCC unroll 16
      for (int m = 0; m < Tile; ++m) {
        uint32_t pair;
        std::memcpy(&pair, xc + m * p.ldx + k, sizeof pair);
        const __m512bh s = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
        acc[m][0] = _mm512_dpbf16_ps(acc[m][0], lo, s);
        acc[m][1] = _mm512_dpbf16_ps(acc[m][1], hi, s);
      }
    }
  }
  // Back to output order: 128-bit lanes (four outputs) alternate between the two accumulators.
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  Vec16 low = {}, high = {};
  if (p.bias != nullptr) {
    low = load16(p.bias + r * kBlock);
    high = load16(p.bias + r * kBlock + 16);
  }
  Vec16 out[Tile][2];
#pragma GCC unroll 16
  for (int m = 0; m < Tile; ++m) {
    out[m][0] = (Vec16)_mm512_permutex2var_ps(acc[m][0], first, acc[m][1]) + low;
    out[m][1] = (Vec16)_mm512_permutex2var_ps(acc[m][0], second, acc[m][1]) + high;
  }
  store_tile<Tile>(p, r, m0, out);
}

// remainder_dot and rows_bf16_dot mirror remainder and rows_impl: an always-inline function can only
// inline tile_dot if it carries the AVX512_BF16 target itself, which the shared helpers must not.
template <int Tile>
PYPRUNE_TARGET_AVX512BF16 PYPRUNE_INLINE void remainder_dot(const ProblemBf16& p, int64_t r, int64_t m0,
                                                            int64_t left) {
  if constexpr (Tile > 1) {
    if (left == Tile - 1) return tile_dot<Tile - 1>(p, r, m0);
    return remainder_dot<Tile - 1>(p, r, m0, left);
  }
}
#endif

}  // namespace

#ifdef PYPRUNE_X86_DISPATCH
PYPRUNE_TARGET_AVX512 static void rows_avx512(const Problem& p, int64_t first, int64_t last) {
  rows_impl<8>(p, first, last);
}
PYPRUNE_TARGET_AVX2 static void rows_avx2(const Problem& p, int64_t first, int64_t last) {
  rows_impl<4>(p, first, last);
}
PYPRUNE_TARGET_AVX512 static void rows_bf16_avx512(const ProblemBf16& p, int64_t first, int64_t last) {
  rows_impl<8>(p, first, last);
}
PYPRUNE_TARGET_AVX2 static void rows_bf16_avx2(const ProblemBf16& p, int64_t first, int64_t last) {
  rows_impl<4>(p, first, last);
}
PYPRUNE_TARGET_AVX512BF16 static void rows_bf16_dot(const ProblemBf16& p, int64_t first, int64_t last) {
  constexpr int kTile = 8;
  for (int64_t r = first; r < last; ++r) {
    int64_t m = 0;
    for (; m + kTile <= p.rows; m += kTile) tile_dot<kTile>(p, r, m);
    if (m < p.rows) remainder_dot<kTile>(p, r, m, p.rows - m);
  }
}
#endif

static void rows_base(const Problem& p, int64_t first, int64_t last) { rows_impl<2>(p, first, last); }
static void rows_bf16_base(const ProblemBf16& p, int64_t first, int64_t last) { rows_impl<2>(p, first, last); }

void linear_rows(const Problem& p, int64_t first, int64_t last) {
#ifdef PYPRUNE_X86_DISPATCH
  const Isa isa = cpu_isa();
  if (isa >= Isa::kAvx512) return rows_avx512(p, first, last);
  if (isa == Isa::kAvx2) return rows_avx2(p, first, last);
#endif
  rows_base(p, first, last);
}

void linear_rows_bf16(const ProblemBf16& p, int64_t first, int64_t last) {
#ifdef PYPRUNE_X86_DISPATCH
  const Isa isa = cpu_isa();
  if (isa == Isa::kAvx512Bf16) return rows_bf16_dot(p, first, last);
  if (isa == Isa::kAvx512) return rows_bf16_avx512(p, first, last);
  if (isa == Isa::kAvx2) return rows_bf16_avx2(p, first, last);
#endif
  rows_bf16_base(p, first, last);
}

}  // namespace bsr
}  // namespace pyprune
