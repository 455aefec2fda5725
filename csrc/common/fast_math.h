// Branch-free float32 exp/log that GCC vectorises inside simple loops.
//
// std::exp and std::log are scalar libm calls; in the CTC kernels they sit in
// loops over a 32k-wide vocabulary row, where a vectorised polynomial is
// several times faster. Accuracy: about 1 ulp for exp, about 2 ulp for log,
// with exact handling of 0, +-inf and NaN (the CTC recursions rely on
// exp(-inf) == 0 and log(0) == -inf). float64 callers get the libm functions.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__GNUC__)
#define PYPRUNE_INLINE inline __attribute__((always_inline))
#else
#define PYPRUNE_INLINE inline
#endif

namespace pyprune {

// __builtin_bit_cast rather than memcpy: GCC's vectoriser gives up on loops
// whose memcpy temporaries it has to zero-initialise.
PYPRUNE_INLINE float bits_to_float(uint32_t u) { return __builtin_bit_cast(float, u); }

PYPRUNE_INLINE uint32_t float_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }

// exp(x) for x already clamped to [-87, 88.8]: x = n ln2 + r with |r| <= ln2/2,
// exp(r) by a degree-6 Taylor polynomial (truncation error r^7/7! < 1.3e-7
// relative), times 2^n built in the exponent bits. ln2 is split in two parts
// so that r keeps full precision. `F` is float (with `U` uint32_t) or a GCC
// vector of floats (with the unsigned vector of the same size: vec.h's
// exp_lanes): the same steps, lane by lane.
template <typename F, typename U>
PYPRUNE_INLINE F exp_of_clamped(F xc) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  // Round to nearest by adding and removing 1.5 * 2^23 (bit pattern 0x4b400000): no libm call.
  const float kRound = 12582912.0f;
  const F shifted = xc * kLog2e + kRound;
  const F n = shifted - kRound;
  const F r = (xc - n * kLn2Hi) - n * kLn2Lo;
  F p = r * (1.0f / 720.0f) + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // The low mantissa bits of `shifted` hold n: build 2^n from them with integer
  // arithmetic only (a float->int conversion blocks vectorisation too).
  const F scale = __builtin_bit_cast(F, (__builtin_bit_cast(U, shifted) - 0x4b400000u + 127u) << 23);
  return p * scale;
}

// exp(x) (exp_of_clamped). Written without data-dependent selects: GCC turns
// chains of ?: into branches, which stops AVX2 vectorisation. Below -87 the
// result is exactly 0; above about 88.4 it is +inf (n reaches 128, whose
// exponent pattern is inf). NaN propagates.
PYPRUNE_INLINE float fast_exp(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.8f);
  return exp_of_clamped<float, uint32_t>(xc) * static_cast<float>(!(x < -87.0f));
}

// log(x) for x >= 0: x = m 2^e with m in [sqrt(1/2), sqrt(2)), then
// log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.1716, by its odd series up to
// s^9 (truncation error < 4e-10). Exact for 0 (-inf) and NaN; denormals count
// as 0. The CTC code only takes logs of sums that are 0 or >= 1, so +inf (only
// reachable from non-finite inputs, which already give NaN) is not handled.
// Single selects only, no short-circuit conditions: those become branches.
PYPRUNE_INLINE float fast_log(float x) {
  const uint32_t bits = float_to_bits(x);
  const float big = static_cast<float>(bits_to_float((bits & 0x007fffffu) | 0x3f800000u) > 1.41421356f);
  // Halve m when it is above sqrt(2) and count it in the exponent instead.
  const float m = bits_to_float((bits & 0x007fffffu) | 0x3f800000u) * (1.0f - 0.5f * big);
  const float e = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xffu)) - 127.0f + big;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  float y = e * 0.693147180559945309f + 2.0f * s * p;
  y = x < std::numeric_limits<float>::min() ? -std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}

// bfloat16 (as its bit pattern, the top half of a float32) to float32: exact.
PYPRUNE_INLINE float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

// float32 to the nearest bfloat16, ties to even (as torch rounds); NaN becomes the quiet NaN 0x7fc0.
PYPRUNE_INLINE uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
}

template <typename T> PYPRUNE_INLINE T vexp(T x) { return std::exp(x); }
template <typename T> PYPRUNE_INLINE T vlog(T x) { return std::log(x); }
template <> PYPRUNE_INLINE float vexp<float>(float x) { return fast_exp(x); }
template <> PYPRUNE_INLINE float vlog<float>(float x) { return fast_log(x); }

// log(exp(a) + exp(b) + exp(c)), -inf when all three are -inf.
template <typename T> PYPRUNE_INLINE T max3(T a, T b, T c) {
  const T m = a > b ? a : b;
  return m > c ? m : c;
}

template <typename T> PYPRUNE_INLINE T logsumexp3(T a, T b, T c) {
  const T m = max3(a, b, c);
  const T shift = m == -std::numeric_limits<T>::infinity() ? T(0) : m;
  return shift + vlog<T>(vexp<T>(a - shift) + vexp<T>(b - shift) + vexp<T>(c - shift));
}

}  // namespace pyprune
