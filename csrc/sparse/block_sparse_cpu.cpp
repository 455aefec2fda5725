// Block-sparse linear on packed 32x32 blocks (see block_sparse_core.h).
//
// Register tile: `Tile` token rows x the 32 outputs of one block row, held in
// Tile x 32 / N vectors of N floats (N: the ISA variant's register width,
// common/vec.h) across all the live blocks of that block row; per input
// feature k the kernel loads the 32 weights W[.., k] once and does one
// multiply-add per token row. The largest tile per variant was measured
// (AMD EPYC with AVX512_BF16, 2 threads, the DEER encoder's layer shapes):
// 12 rows on AVX-512 (24 of the 32 zmm registers hold accumulators); on
// AVX2 3 rows in float32 (12 of 16 ymm) and 4 in bfloat16; on the baseline
// 2 and 3. Each tile size is its own function (tile_table), and the token
// rows are split into tiles of near-equal size (rows()).
//
// bfloat16 runs the same tile on weights and inputs widened to float32 as
// they are loaded, except on CPUs with AVX512_BF16: there `tile_dot` takes
// the input features in pairs, interleaves the two k-rows of 32 bfloat16
// weights into (k, k+1) pairs in registers (unpacklo/hi: the accumulators
// then hold the outputs in a fixed permuted order, undone once per tile) and
// does two multiply-adds per lane with vdpbf16ps: twice the float32 rate.
//
// Prefetch: the first tile of a block row waits on its weights (a model's
// layers are larger than the caches, so they come from memory); the tiles
// after it find them in cache and only compute. Those later tiles (the
// second one) therefore prefetch the next block row's weights into L2, so
// its first tile starts on cached weights too. One-tile calls (up to 12
// rows: the AR baseline's one-token steps) are left to the hardware
// prefetcher: there the stream is the whole cost (prefetching in every tile
// made the AR slower in a throwaway timing; the measured change is the one
// here: scripts/deer_builds_ab.py, README).
#include <array>
#include <cstring>
#include <utility>

// The vector helpers are always inlined into one ISA variant; the ABI note about passing
// 64-byte vectors between functions does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "../common/fast_math.h"
#include "../common/isa_dispatch.h"
#include "../common/vec.h"
#include "block_sparse_core.h"

#ifdef PYPRUNE_X86_DISPATCH
#include <immintrin.h>
#endif

namespace pyprune {
namespace bsr {
namespace {

// The weights of the block row after a tile's, for the tile to prefetch (`size` elements from `start`; none
// where `start` is null).
template <typename T>
struct Ahead {
  const T* start;
  int64_t size;
};

// Prefetches into L2 `rows` k-rows of 32 weights at `offset` into `ahead`'s block row: the lines a tile
// reads at that offset into its own block row (nothing past the next row's end).
template <typename T>
PYPRUNE_INLINE void prefetch_k_rows(const Ahead<T>& ahead, int64_t offset, int rows) {
  constexpr int kLine = 64 / sizeof(T);
  if (ahead.start == nullptr || offset >= ahead.size) return;
  for (int i = 0; i < rows * kBlock; i += kLine) __builtin_prefetch(ahead.start + offset + i, 0, 2);
}

// The finished float32 outputs of one tile (bias included) for block row r, token rows [m0, m0 + Tile), in
// vectors of V's width: activated, then stored (bfloat16: rounded once).
template <int Tile, typename T, typename V, int P>
PYPRUNE_INLINE void store_tile(const ProblemOf<T>& p, int64_t r, int64_t m0, V (&out)[Tile][P]) {
  static_assert(P * lanes_of<V> == kBlock, "store_tile: one block row of outputs per token row");
  if (p.activation == Activation::kGelu) {
#pragma GCC unroll 16
    for (int m = 0; m < Tile; ++m)
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) out[m][j] = gelu_lanes(out[m][j]);
  }
  T* y = p.y + m0 * p.ldy + r * kBlock;
#pragma GCC unroll 16
  for (int m = 0; m < Tile; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) store(y + m * p.ldy + j * lanes_of<V>, out[m][j]);
}

// Outputs of block row r for token rows [m0, m0 + Tile), in vectors of N lanes; prefetching `ahead` at the
// offsets it reads.
template <int Tile, int N, typename T>
PYPRUNE_INLINE void tile(const ProblemOf<T>& p, int64_t r, int64_t m0, Ahead<T> ahead) {
  using V = VecF<N>;
  constexpr int P = kBlock / N;  // vectors per row of 32 outputs
  V acc[Tile][P];
  V start[P] = {};
  if (p.bias != nullptr) {
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) start[j] = load<V>(p.bias + r * kBlock + j * N);
  }
#pragma GCC unroll 16
  for (int m = 0; m < Tile; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) acc[m][j] = start[j];
  const T* x = p.x + m0 * p.ldx;
  const T* row = p.blocks + p.row_ptr[r] * kBlock * kBlock;
  for (int64_t b = p.row_ptr[r]; b < p.row_ptr[r + 1]; ++b) {
    const T* w = p.blocks + b * kBlock * kBlock;
    const T* xc = x + p.col_index[b] * kBlock;
    for (int k = 0; k < kBlock; ++k) {
      prefetch_k_rows(ahead, (w - row) + k * kBlock, 1);
      V wk[P];
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) wk[j] = load<V>(w + k * kBlock + j * N);
#pragma GCC unroll 16
      for (int m = 0; m < Tile; ++m) {
        const float s = to_float(xc[m * p.ldx + k]);
#pragma GCC unroll 8
        for (int j = 0; j < P; ++j) acc[m][j] += s * wk[j];
      }
    }
  }
  store_tile<Tile>(p, r, m0, acc);
}

#ifdef PYPRUNE_X86_DISPATCH
// bfloat16 on vdpbf16ps: per pair of input features (2j, 2j+1) one 32-bit broadcast of the token's pair
// and two pairwise dot products per token row. acc[m][0] holds outputs {0-3, 8-11, 16-19, 24-27} of the
// block row (unpacklo's order), acc[m][1] the others.
template <int Tile>
PYPRUNE_TARGET_AVX512BF16 PYPRUNE_INLINE void tile_dot(const ProblemBf16& p, int64_t r, int64_t m0,
                                                       Ahead<uint16_t> ahead) {
  __m512 acc[Tile][2];
#pragma GCC unroll 16
  for (int m = 0; m < Tile; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  const uint16_t* x = p.x + m0 * p.ldx;
  const uint16_t* row = p.blocks + p.row_ptr[r] * kBlock * kBlock;
  for (int64_t b = p.row_ptr[r]; b < p.row_ptr[r + 1]; ++b) {
    const uint16_t* w = p.blocks + b * kBlock * kBlock;
    const uint16_t* xc = x + p.col_index[b] * kBlock;
    for (int k = 0; k < kBlock; k += 2) {
      prefetch_k_rows(ahead, (w - row) + k * kBlock, 2);
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
    low = load<Vec16>(p.bias + r * kBlock);
    high = load<Vec16>(p.bias + r * kBlock + 16);
  }
  Vec16 out[Tile][2];
#pragma GCC unroll 16
  for (int m = 0; m < Tile; ++m) {
    out[m][0] = (Vec16)_mm512_permutex2var_ps(acc[m][0], first, acc[m][1]) + low;
    out[m][1] = (Vec16)_mm512_permutex2var_ps(acc[m][0], second, acc[m][1]) + high;
  }
  store_tile<Tile>(p, r, m0, out);
}

#endif

// One function per ISA variant and tile size, each compiled on its own (noinline). Inlined together into one
// function per variant, GCC kept the accumulators of some tile sizes in memory (AVX-512 float32, tiles of 4
// to 7 rows: a load and a store around every multiply-add, up to 1.9x slower); alone, every size keeps
// them in registers.
template <typename T>
using TileKernel = void (*)(const ProblemOf<T>&, int64_t, int64_t, Ahead<T>);

#define PYPRUNE_TILE_VARIANT(NAME, TARGET, BODY)                                        \
  struct NAME {                                                                         \
    template <int Tile, typename T>                                                     \
    TARGET __attribute__((noinline)) static void run(const ProblemOf<T>& p, int64_t r, \
                                                     int64_t m0, Ahead<T> ahead) {      \
      BODY(p, r, m0, ahead);                                                            \
    }                                                                                   \
  };

#define PYPRUNE_NO_TARGET
PYPRUNE_TILE_VARIANT(BaseTiles, PYPRUNE_NO_TARGET, (tile<Tile, native::kBase>))
#ifdef PYPRUNE_X86_DISPATCH
PYPRUNE_TILE_VARIANT(Avx2Tiles, PYPRUNE_TARGET_AVX2, (tile<Tile, native::kAvx2>))
PYPRUNE_TILE_VARIANT(Avx512Tiles, PYPRUNE_TARGET_AVX512, (tile<Tile, native::kAvx512>))
PYPRUNE_TILE_VARIANT(DotTiles, PYPRUNE_TARGET_AVX512BF16, tile_dot<Tile>)
#endif
#undef PYPRUNE_TILE_VARIANT
#undef PYPRUNE_NO_TARGET

// A variant's kernels for tiles of 1 .. sizeof...(Sizes) rows (entry size - 1).
template <typename Variant, typename T, int... Sizes>
constexpr std::array<TileKernel<T>, sizeof...(Sizes)> tile_table(std::integer_sequence<int, Sizes...>) {
  return {&Variant::template run<Sizes + 1, T>...};
}

// The token rows go in the fewest tiles of at most MaxTile rows, of sizes that differ by at most one (20
// rows with MaxTile 12: 10 + 10, not 12 + 8): every tile re-reads the block row's weights, and a tile much
// smaller than the others does as many weight loads per multiply-add as they do for fewer rows.
template <typename Variant, typename T, int MaxTile>
void rows(const ProblemOf<T>& p, int64_t first, int64_t last) {
  static constexpr auto table = tile_table<Variant, T>(std::make_integer_sequence<int, MaxTile>{});
  if (p.rows <= 0) return;
  const int64_t tiles = (p.rows + MaxTile - 1) / MaxTile, base = p.rows / tiles, larger = p.rows % tiles;
  const Ahead<T> none{nullptr, 0};
  for (int64_t r = first; r < last; ++r) {
    // The second tile prefetches the next block row of this range (see the top of the file).
    const Ahead<T> next = r + 1 < last ? Ahead<T>{p.blocks + p.row_ptr[r + 1] * kBlock * kBlock,
                                                  (p.row_ptr[r + 2] - p.row_ptr[r + 1]) * kBlock * kBlock}
                                       : none;
    for (int64_t t = 0, m = 0; t < tiles; ++t) {
      const int64_t size = base + (t < larger ? 1 : 0);
      table[size - 1](p, r, m, t == 1 ? next : none);
      m += size;
    }
  }
}

}  // namespace

void linear_rows(const Problem& p, int64_t first, int64_t last) {
#ifdef PYPRUNE_X86_DISPATCH
  const Isa isa = cpu_isa();
  if (isa >= Isa::kAvx512) return rows<Avx512Tiles, float, 12>(p, first, last);
  if (isa == Isa::kAvx2) return rows<Avx2Tiles, float, 3>(p, first, last);
#endif
  rows<BaseTiles, float, 2>(p, first, last);
}

void linear_rows_bf16(const ProblemBf16& p, int64_t first, int64_t last) {
#ifdef PYPRUNE_X86_DISPATCH
  const Isa isa = cpu_isa();
  if (isa == Isa::kAvx512Bf16) return rows<DotTiles, uint16_t, 12>(p, first, last);
  if (isa == Isa::kAvx512) return rows<Avx512Tiles, uint16_t, 12>(p, first, last);
  if (isa == Isa::kAvx2) return rows<Avx2Tiles, uint16_t, 4>(p, first, last);
#endif
  rows<BaseTiles, uint16_t, 3>(p, first, last);
}

}  // namespace bsr
}  // namespace pyprune
