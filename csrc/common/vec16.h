// 16 float32 lanes as a GCC vector type, and the loads and stores of float32
// and bfloat16 (as its bit patterns) the CPU kernels share. Each ISA variant
// (isa_dispatch.h) that inlines them gets its own code: one zmm on AVX-512,
// two ymm on AVX2, four xmm on the baseline. Include inside the kernels'
// translation units only (they are always inlined; -Wpsabi's note about
// passing 64-byte vectors between functions does not apply).
#pragma once

#include <cstdint>
#include <cstring>

#include "fast_math.h"

namespace pyprune {

typedef float Vec16 __attribute__((vector_size(64)));
typedef uint32_t U32x16 __attribute__((vector_size(64)));
typedef uint16_t U16x16 __attribute__((vector_size(32)));

PYPRUNE_INLINE Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// 16 bfloat16 widened to float32 (a bfloat16 is the top half of a float32).
PYPRUNE_INLINE Vec16 load16(const uint16_t* p) {
  U16x16 h;
  std::memcpy(&h, p, sizeof h);
  const U32x16 u = __builtin_convertvector(h, U32x16) << 16;
  Vec16 v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

PYPRUNE_INLINE void store16(float* p, Vec16 v) { std::memcpy(p, &v, sizeof v); }

// Rounded to the nearest bfloat16, ties to even (as torch rounds); NaN becomes the quiet NaN 0x7fc0
// (float_to_bf16 on 16 lanes).
PYPRUNE_INLINE void store16(uint16_t* p, Vec16 v) {
  U32x16 u;
  std::memcpy(&u, &v, sizeof u);
  const U32x16 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const U32x16 nan = U32x16{} + 0x7fc0u;
  const U16x16 h = __builtin_convertvector((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded, U16x16);
  std::memcpy(p, &h, sizeof h);
}

// One element either way.
PYPRUNE_INLINE float to_float(float v) { return v; }
PYPRUNE_INLINE float to_float(uint16_t h) { return bf16_to_float(h); }
PYPRUNE_INLINE void store1(float* p, float v) { *p = v; }
PYPRUNE_INLINE void store1(uint16_t* p, float v) { *p = float_to_bf16(v); }

}  // namespace pyprune
