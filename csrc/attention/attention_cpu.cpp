// Masked attention for decoding (see attention_core.h).
//
// Head sizes that are a multiple of 16 (heads_vector, GCC vector types at
// each ISA variant's register width, common/vec.h): per (batch, head),
// with four or more query rows the keys are widened once into float32
// scratch transposed (head_dim x keys, padded to 16 keys), and query rows go
// four at a time against one vector of keys, each loaded vector serving the
// four; with fewer rows each score is one dot product read in place. Then
// per row: masking, max, exp, sum (in vector lanes), and the weighted sum of
// the v rows that carry weight (float32 v read in place, bfloat16 widened
// once per pair). Other head sizes run heads_generic, plain loops that GCC
// vectorises along keys or features.

// The vector helpers are always inlined into one ISA variant; the ABI note about passing 64-byte vectors
// between functions does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "../common/fast_math.h"
#include "../common/isa_dispatch.h"
#include "../common/vec.h"
#include "attention_core.h"

namespace pyprune {
namespace attn {
namespace {

// Keys padded to a multiple of 16 in the scratch rows: whole vectors at every width.
constexpr int64_t kKeyPad = 16;

PYPRUNE_INLINE int64_t padded(int64_t keys) { return (keys + kKeyPad - 1) / kKeyPad * kKeyPad; }

// The running maximum after seeing x; a NaN, once seen, stays (it then propagates to the row's output).
PYPRUNE_INLINE float after(float m, float x) { return x > m || x != x ? x : m; }

// Scores of `R` query rows (qf, R x D scaled) against every key, from the transposed keys kt (D x KP):
// each loaded vector of N keys serves the R rows.
template <int N, int R>
PYPRUNE_INLINE void scores_transposed(const float* qf, const float* kt, int64_t D, int64_t KP, float* s) {
  using V = VecF<N>;
  for (int64_t kv = 0; kv < KP; kv += N) {
    V acc[R];
    for (int r = 0; r < R; ++r) acc[r] = V{};
    for (int64_t d = 0; d < D; ++d) {
      const V keys = load<V>(kt + d * KP + kv);
      for (int r = 0; r < R; ++r) acc[r] += qf[r * D + d] * keys;
    }
    for (int r = 0; r < R; ++r) store(s + r * KP + kv, acc[r]);
  }
}

// Turns one row's scores into softmax numerators in place (masked keys: 0); returns their sum, 0 when the
// row sees no key (NaN scores propagate). Vectors of N lanes (KP is a multiple of 16).
template <int N>
PYPRUNE_INLINE float softmax_numerators(float* __restrict s, const uint8_t* valid, int64_t seen, int64_t KP) {
  const float kNegInf = -std::numeric_limits<float>::infinity();
  if (valid != nullptr)
    for (int64_t j = 0; j < seen; ++j) s[j] = valid[j] ? s[j] : kNegInf;
  for (int64_t j = seen; j < KP; ++j) s[j] = kNegInf;
  using V = VecF<N>;
  V lanes = splat<V>(kNegInf);
  for (int64_t j = 0; j < KP; j += N) {
    const V x = load<V>(s + j);
    lanes = (x > lanes) | (x != x) ? x : lanes;
  }
  float m = kNegInf;
  for (int l = 0; l < N; ++l) m = after(m, lanes[l]);
  if (m == kNegInf) return 0.f;
  for (int64_t j = 0; j < KP; ++j) s[j] = fast_exp(s[j] - m);
  V total = V{};
  for (int64_t j = 0; j < KP; j += N) total += load<V>(s + j);
  return hsum(total);
}

// Any head size: plain loops (the reference-like path; head sizes that are not a multiple of 16).
template <int N, typename T>
PYPRUNE_INLINE void heads_generic(const AttentionOf<T>& p, int64_t first, int64_t last, float* scratch) {
  const int64_t D = p.head_dim, K = p.keys, KP = padded(K);
  float* kt = scratch;           // (D, KP): kt[d * KP + j] = k[j][d]
  float* vf = kt + D * KP;       // (K, D)
  float* s = vf + K * D;         // (KP) scores, then weights
  float* qf = s + KP;            // (D) the query row, scaled
  float* acc = qf + D;           // (D)
  for (int64_t pair = first; pair < last; ++pair) {
    const int64_t b = pair / p.heads, h = pair % p.heads;
    const T* kb = p.k + b * p.k_batch + h * p.k_head;
    const T* vb = p.v + b * p.v_batch + h * p.v_head;
    for (int64_t j = 0; j < K; ++j)
      for (int64_t d = 0; d < D; ++d) kt[d * KP + j] = to_float(kb[j * p.k_row + d]);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t j = K; j < KP; ++j) kt[d * KP + j] = 0.f;
    for (int64_t j = 0; j < K; ++j)
      for (int64_t d = 0; d < D; ++d) vf[j * D + d] = to_float(vb[j * p.v_row + d]);
    const uint8_t* valid = p.key_valid != nullptr ? p.key_valid + b * p.valid_batch : nullptr;
    for (int64_t i = 0; i < p.queries; ++i) {
      T* out = p.out + ((b * p.queries + i) * p.heads + h) * D;
      const T* qrow = p.q + b * p.q_batch + h * p.q_head + i * p.q_row;
      for (int64_t d = 0; d < D; ++d) qf[d] = to_float(qrow[d]) * p.scale;
      for (int64_t j = 0; j < KP; ++j) s[j] = 0.f;
      for (int64_t d = 0; d < D; ++d) {
        const float qd = qf[d];
        const float* krow = kt + d * KP;
        for (int64_t j = 0; j < KP; ++j) s[j] += qd * krow[j];
      }
      const int64_t seen = i < p.prefix ? p.prefix : K;  // keys this row sees: [0, seen) where valid
      const float total = softmax_numerators<N>(s, valid, seen, KP);
      for (int64_t d = 0; d < D; ++d) acc[d] = 0.f;
      if (total != 0.f) {
        for (int64_t j = 0; j < seen; ++j) {
          const float w = s[j];
          if (w == 0.f) continue;  // masked (or negligible) keys cost nothing
          const float* vrow = vf + j * D;
          for (int64_t d = 0; d < D; ++d) acc[d] += w * vrow[d];
        }
        const float inv = 1.f / total;
        for (int64_t d = 0; d < D; ++d) acc[d] *= inv;
      }
      for (int64_t d = 0; d < D; ++d) store1(out + d, acc[d]);
    }
  }
}

// Head sizes that are a multiple of 16 (D16 groups of 16 features; 0: read from p at run time), in vectors
// of N lanes.
template <int N, int D16, typename T>
PYPRUNE_INLINE void heads_vector(const AttentionOf<T>& p, int64_t first, int64_t last, float* scratch) {
  using V = VecF<N>;
  constexpr int kRows = 4;
  const int64_t D = D16 ? D16 * 16 : p.head_dim, nv = D / N, K = p.keys, KP = padded(K);
  float* kt = scratch;           // (D, KP), for kRows or more query rows
  float* vf = kt + D * KP;       // (K, D) widened v (bfloat16)
  float* s = vf + K * D;         // (kRows, KP)
  float* qf = s + kRows * KP;    // (kRows, D)
  for (int64_t pair = first; pair < last; ++pair) {
    const int64_t b = pair / p.heads, h = pair % p.heads;
    const T* kb = p.k + b * p.k_batch + h * p.k_head;
    const T* vb = p.v + b * p.v_batch + h * p.v_head;
    const uint8_t* valid = p.key_valid != nullptr ? p.key_valid + b * p.valid_batch : nullptr;
    const bool transposed = p.queries >= kRows;
    if (transposed) {
      for (int64_t j = 0; j < K; ++j)
        for (int64_t d = 0; d < D; ++d) kt[d * KP + j] = to_float(kb[j * p.k_row + d]);
      for (int64_t d = 0; d < D; ++d)
        for (int64_t j = K; j < KP; ++j) kt[d * KP + j] = 0.f;
    }
    // float32 v rows are read in place; bfloat16 ones widened once.
    const float* vrows = reinterpret_cast<const float*>(vb);
    int64_t vstride = p.v_row;
    if (sizeof(T) != sizeof(float)) {
      for (int64_t j = 0; j < K; ++j)
        for (int64_t c = 0; c < nv; ++c) store(vf + j * D + N * c, load<V>(vb + j * p.v_row + N * c));
      vrows = vf;
      vstride = D;
    }
    for (int64_t i0 = 0; i0 < p.queries; i0 += kRows) {
      const int64_t rows = std::min<int64_t>(kRows, p.queries - i0);
      for (int64_t r = 0; r < rows; ++r) {
        const T* qrow = p.q + b * p.q_batch + h * p.q_head + (i0 + r) * p.q_row;
        for (int64_t d = 0; d < D; ++d) qf[r * D + d] = to_float(qrow[d]) * p.scale;
      }
      if (transposed && rows == kRows) {
        scores_transposed<N, kRows>(qf, kt, D, KP, s);
      } else {  // few rows: one dot product per key, no transposed copy
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t j = 0; j < K; ++j) {
            V acc = V{};
            for (int64_t c = 0; c < nv; ++c) acc += load<V>(qf + r * D + N * c) * load<V>(kb + j * p.k_row + N * c);
            s[r * KP + j] = hsum(acc);
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        T* out = p.out + ((b * p.queries + i) * p.heads + h) * D;
        const int64_t seen = i < p.prefix ? p.prefix : K;
        float* w = s + r * KP;
        const float total = softmax_numerators<N>(w, valid, seen, KP);
        V acc[(D16 ? D16 : 16) * 16 / N];
        for (int64_t c = 0; c < nv; ++c) acc[c] = V{};
        if (total != 0.f) {
          for (int64_t j = 0; j < seen; ++j) {
            const float wj = w[j];
            if (wj == 0.f) continue;  // masked (or negligible) keys cost nothing
            for (int64_t c = 0; c < nv; ++c) acc[c] += wj * load<V>(vrows + j * vstride + N * c);
          }
          const float inv = 1.f / total;
          for (int64_t c = 0; c < nv; ++c) acc[c] *= inv;
        }
        for (int64_t c = 0; c < nv; ++c) store(out + N * c, acc[c]);
      }
    }
  }
}

template <int N, typename T>
PYPRUNE_INLINE void heads_impl(const AttentionOf<T>& p, int64_t first, int64_t last, float* scratch) {
  if (p.head_dim % 16 != 0 || p.head_dim > 256) return heads_generic<N>(p, first, last, scratch);
  switch (p.head_dim / 16) {
    case 2: return heads_vector<N, 2>(p, first, last, scratch);
    case 4: return heads_vector<N, 4>(p, first, last, scratch);
    case 8: return heads_vector<N, 8>(p, first, last, scratch);
    default: return heads_vector<N, 0>(p, first, last, scratch);
  }
}

PYPRUNE_ISA_VARIANTS_LANES(run_f32, (const Attention& p, int64_t first, int64_t last, float* scratch),
                           (p, first, last, scratch), heads_impl)
PYPRUNE_ISA_VARIANTS_LANES(run_bf16, (const AttentionBf16& p, int64_t first, int64_t last, float* scratch),
                           (p, first, last, scratch), heads_impl)

}  // namespace

int64_t scratch_floats(int64_t keys, int64_t head_dim) {
  // The larger of the two paths' needs: kt, vf, then 4 rows of scores and of queries (heads_vector).
  const int64_t kp = padded(keys);
  return head_dim * kp + keys * head_dim + 4 * kp + 4 * head_dim;
}

void attention_heads(const Attention& p, int64_t first, int64_t last, float* scratch) {
  run_f32(p, first, last, scratch);
}

void attention_heads_bf16(const AttentionBf16& p, int64_t first, int64_t last, float* scratch) {
  run_bf16(p, first, last, scratch);
}

}  // namespace attn
}  // namespace pyprune
