// Float32 vectors of N lanes as GCC vector types, and the loads and stores
// of float32 and bfloat16 (as its bit patterns), exp and GELU the CPU
// kernels share. Each ISA variant (isa_dispatch.h) works at its register
// width (native:: there): 16 lanes (one zmm) on AVX-512, 8 (one ymm) on AVX2,
// 4 (one xmm, or a NEON register off x86) on the baseline. A vector wider
// than the target's registers has no machine mode, and GCC then keeps it in
// memory, a store and a load around every operation: with 16-lane vectors
// everywhere, the packed linear kernel's AVX2 variant ran at 3 GFLOP/s
// (against about 200 on AVX-512). Include inside the kernels' translation
// units only (always inlined; -Wpsabi's note about passing 64-byte vectors
// between functions does not apply).
#pragma once

#include <cstdint>
#include <cstring>

#include "fast_math.h"

namespace pyprune {

template <int N>
struct Lanes {
  typedef float F __attribute__((vector_size(4 * N)));
  typedef uint32_t U __attribute__((vector_size(4 * N)));
  typedef uint16_t H __attribute__((vector_size(2 * N)));
};

// VecF<N>: N float32 lanes; lanes_of<V>: a vector type's lane count.
template <int N>
using VecF = typename Lanes<N>::F;
using Vec16 = VecF<16>;
template <typename V>
constexpr int lanes_of = static_cast<int>(sizeof(V) / sizeof(float));
template <typename V>
using UnsignedOf = typename Lanes<lanes_of<V>>::U;

template <typename V>
PYPRUNE_INLINE V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Lanes of bfloat16 widened to float32 (a bfloat16 is the top half of a float32).
template <typename V>
PYPRUNE_INLINE V load(const uint16_t* p) {
  typename Lanes<lanes_of<V>>::H h;
  std::memcpy(&h, p, sizeof h);
  const UnsignedOf<V> u = __builtin_convertvector(h, UnsignedOf<V>) << 16;
  V v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

template <typename V>
PYPRUNE_INLINE void store(float* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// Rounded to the nearest bfloat16, ties to even (as torch rounds); NaN becomes the quiet NaN 0x7fc0
// (float_to_bf16 lane by lane).
template <typename V>
PYPRUNE_INLINE void store(uint16_t* p, V v) {
  using U = UnsignedOf<V>;
  U u;
  std::memcpy(&u, &v, sizeof u);
  const U rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const U nan = U{} + 0x7fc0u;
  const auto h = __builtin_convertvector((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded,
                                         typename Lanes<lanes_of<V>>::H);
  std::memcpy(p, &h, sizeof h);
}

template <typename V>
PYPRUNE_INLINE V splat(float v) {
  return V{} + v;
}

// fast_exp (fast_math.h) lane by lane (0 below -87, NaN propagates).
template <typename V>
PYPRUNE_INLINE V exp_lanes(V x) {
  const V low = splat<V>(-87.0f), high = splat<V>(88.8f);
  V xc = x < low ? low : x;
  xc = xc > high ? high : xc;
  return x < low ? V{} : exp_of_clamped<V, UnsignedOf<V>>(xc);
}

// GELU with the exact erf (torch's default, approximate="none") lane by lane: 0.5 x (1 + erf(x / sqrt 2)).
// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7): for a = |z|, t = 1 / (1 + p a),
// erfc(a) = t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-a^2); 1 + erf(z) is erfc(a) for z < 0 (the small
// outputs of negative x keep their precision) and 2 - erfc(a) otherwise. Absolute error below 1e-7 |x|
// plus rounding; +inf stays +inf, -inf gives NaN (as torch's), NaN propagates.
template <typename V>
PYPRUNE_INLINE V gelu_lanes(V x) {
  const V z = x * 0.70710678118654752f;
  const V a = (V)(((UnsignedOf<V>)z) & 0x7fffffffu);
  const V t = 1.0f / (1.0f + 0.3275911f * a);
  V p = splat<V>(1.061405429f);
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const V erfc_a = p * t * exp_lanes(-(a * a));
  return 0.5f * x * (z < 0.0f ? erfc_a : 2.0f - erfc_a);
}

// The sum of the lanes, halves added pairwise (16 lanes: (v0..7 + v8..15), then the same on 8 and 4).
template <typename V>
PYPRUNE_INLINE float hsum(V v) {
  if constexpr (lanes_of<V> == 16) {
    return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
  } else if constexpr (lanes_of<V> == 8) {
    return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
  } else {
    static_assert(lanes_of<V> == 4, "hsum: 4, 8 or 16 lanes");
    return (v[0] + v[2]) + (v[1] + v[3]);
  }
}

// The largest lane, halves compared pairwise as in hsum; NaN lanes may or may not win (callers that care
// look for NaN themselves).
template <typename V>
PYPRUNE_INLINE float hmax(V v) {
  if constexpr (lanes_of<V> == 16) {
    const auto a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
    const auto b = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    return hmax(a > b ? a : b);
  } else if constexpr (lanes_of<V> == 8) {
    const auto a = __builtin_shufflevector(v, v, 0, 1, 2, 3), b = __builtin_shufflevector(v, v, 4, 5, 6, 7);
    return hmax(a > b ? a : b);
  } else {
    static_assert(lanes_of<V> == 4, "hmax: 4, 8 or 16 lanes");
    const float a = v[0] > v[2] ? v[0] : v[2], b = v[1] > v[3] ? v[1] : v[3];
    return a > b ? a : b;
  }
}

// One element either way.
PYPRUNE_INLINE float to_float(float v) { return v; }
PYPRUNE_INLINE float to_float(uint16_t h) { return bf16_to_float(h); }
PYPRUNE_INLINE void store1(float* p, float v) { *p = v; }
PYPRUNE_INLINE void store1(uint16_t* p, float v) { *p = float_to_bf16(v); }

}  // namespace pyprune
