// Run-time ISA dispatch for the CPU kernels.
//
// PYPRUNE_ISA_VARIANTS(name, (params), (args), body) defines `name` plus three
// copies of it compiled for AVX-512, AVX2+FMA and the baseline ISA, and makes
// `name` call the best one the CPU supports. Each copy inlines `body` (a
// PYPRUNE_INLINE function), so every variant gets its own vectorised loops
// and, above the baseline, hardware popcount. GCC's target_clones with arch=
// levels resolves by CPU model and picked the baseline on AMD EPYC, hence the
// explicit feature tests. The environment variable PYPRUNE_CPU_ISA (base,
// avx2, avx512, avx512bf16) caps the choice, so tests can run every variant
// on one CPU. AVX512_BF16 (bfloat16 dot products) is a level above AVX-512:
// kernels without a bfloat16 variant run their AVX-512 copy there (compare
// with >= kAvx512); "avx512" caps below it.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PYPRUNE_X86_DISPATCH 1
#define PYPRUNE_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,popcnt")))
#define PYPRUNE_TARGET_AVX2 __attribute__((target("avx2,fma,popcnt")))
#define PYPRUNE_TARGET_AVX512BF16 \
  __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma,popcnt")))
#endif

namespace pyprune {

enum class Isa { kBase, kAvx2, kAvx512, kAvx512Bf16 };

inline Isa isa_cap() {
  const char* cap = std::getenv("PYPRUNE_CPU_ISA");
  if (cap == nullptr) return Isa::kAvx512Bf16;
  if (std::strcmp(cap, "base") == 0) return Isa::kBase;
  if (std::strcmp(cap, "avx2") == 0) return Isa::kAvx2;
  if (std::strcmp(cap, "avx512") == 0) return Isa::kAvx512;
  return Isa::kAvx512Bf16;
}

inline Isa detect_cpu_isa() {
#ifdef PYPRUNE_X86_DISPATCH
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("popcnt");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return __builtin_cpu_supports("avx512bf16") ? Isa::kAvx512Bf16 : Isa::kAvx512;
  if (avx2) return Isa::kAvx2;
#endif
  return Isa::kBase;
}

inline Isa detect_isa() {
  const Isa cap = isa_cap();
  const Isa found = detect_cpu_isa();
  return found < cap ? found : cap;
}

// Detected once per process.
inline Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

// Each variant's vector register width in float32 lanes, the width its kernels' vectors take (common/vec.h):
// zmm, ymm, and xmm (or a NEON register where the baseline is not x86).
namespace native {
constexpr int kAvx512 = 16;
constexpr int kAvx2 = 8;
constexpr int kBase = 4;
}  // namespace native

}  // namespace pyprune

#ifdef PYPRUNE_X86_DISPATCH
// NAME calling the copy of its three (NAME_base, NAME_avx2, NAME_avx512) that the CPU runs.
#define PYPRUNE_ISA_DISPATCH(NAME, PARAMS, ARGS)                     \
  static void NAME PARAMS {                                          \
    const ::pyprune::Isa isa = ::pyprune::cpu_isa();                 \
    if (isa >= ::pyprune::Isa::kAvx512) return NAME##_avx512 ARGS;   \
    if (isa == ::pyprune::Isa::kAvx2) return NAME##_avx2 ARGS;       \
    return NAME##_base ARGS;                                         \
  }

#define PYPRUNE_ISA_VARIANTS(NAME, PARAMS, ARGS, BODY)                  \
  static void NAME##_base PARAMS { BODY ARGS; }                         \
  PYPRUNE_TARGET_AVX2 static void NAME##_avx2 PARAMS { BODY ARGS; }     \
  PYPRUNE_TARGET_AVX512 static void NAME##_avx512 PARAMS { BODY ARGS; } \
  PYPRUNE_ISA_DISPATCH(NAME, PARAMS, ARGS)

// The same for a BODY templated on its vector width in float32 lanes: each copy runs BODY<its native width>.
#define PYPRUNE_ISA_VARIANTS_LANES(NAME, PARAMS, ARGS, BODY)                                          \
  static void NAME##_base PARAMS { BODY<::pyprune::native::kBase> ARGS; }                             \
  PYPRUNE_TARGET_AVX2 static void NAME##_avx2 PARAMS { BODY<::pyprune::native::kAvx2> ARGS; }         \
  PYPRUNE_TARGET_AVX512 static void NAME##_avx512 PARAMS { BODY<::pyprune::native::kAvx512> ARGS; }   \
  PYPRUNE_ISA_DISPATCH(NAME, PARAMS, ARGS)
#else
#define PYPRUNE_ISA_VARIANTS(NAME, PARAMS, ARGS, BODY) \
  static void NAME PARAMS { BODY ARGS; }
#define PYPRUNE_ISA_VARIANTS_LANES(NAME, PARAMS, ARGS, BODY) \
  static void NAME PARAMS { BODY<::pyprune::native::kBase> ARGS; }
#endif
