// Masked attention for decoding (see attention_core.h).
//
// Head sizes that are a multiple of 16 (heads_vector, GCC vector types at
// each ISA variant's register width, common/vec.h): per (batch, head),
// with four or more query rows the keys are widened once into float32
// scratch transposed (head_dim x keys, padded to 16 keys), and query rows go
// four at a time against one vector of keys, each loaded vector serving the
// four; with fewer rows each score is one dot product read in place. Then
// per row: masking, max, exp, sum (in vector lanes); and the weighted sum of
// the v rows that carry weight, four rows at a time where the head size is
// known at compile time (float32 v read in place, bfloat16 widened once per
// pair). Other head sizes run heads_generic, plain loops that GCC
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
  // The maximum over the lanes, then across them (a NaN score is passed over here and turns its exp, and so
  // the sum and the row, into NaN below).
  V lanes = splat<V>(kNegInf);
  for (int64_t j = 0; j < KP; j += N) {
    const V x = load<V>(s + j);
    lanes = x > lanes ? x : lanes;
  }
  const float m = hmax(lanes);
  if (m == kNegInf) {  // no key seen, or every score seen NaN
    for (int64_t j = 0; j < KP; ++j)
      if (s[j] != s[j]) return s[j];
    return 0.f;
  }
  for (int64_t j = 0; j < KP; ++j) s[j] = fast_exp(s[j] - m);
  V total = V{};
  for (int64_t j = 0; j < KP; j += N) total += load<V>(s + j);
  return hsum(total);
}

// The outputs of R consecutive query rows (the first is row i0) from their softmax numerators w (R x KP, a
// row's unseen keys 0) and sums (`total`, 0 for a row that sees no key), the v rows read at `vrows`: the
// weighted sum of the v rows, divided by the sum. NV vectors per row (0: `nv`, read at run time, R = 1).
// The rows go together, so each loaded v vector serves R rows and their R x NV sums are independent chains
// of multiply-adds; a key is skipped where every row's weight is 0 (masked keys cost nothing), and keys that
// only some rows see (DEER's prefix rule: rows before `prefix` see keys before it) feed only those rows.
template <int N, int NV, int R, typename T>
PYPRUNE_INLINE void weighted_rows(const float* w, int64_t KP, const float* vrows, int64_t vstride, int64_t i0,
                                  int64_t prefix, int64_t K, const float* total, T* out, int64_t out_row,
                                  int64_t nv = NV) {
  using V = VecF<N>;
  constexpr int kMaxNV = NV ? NV : 256 / N;
  V acc[R][kMaxNV];
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < nv; ++c) acc[r][c] = V{};
  // Rows before the prefix see [0, prefix), the others [0, K): all R rows see [0, lo), some [lo, hi).
  const int64_t first_seen = i0 < prefix ? prefix : K, last_seen = i0 + R - 1 < prefix ? prefix : K;
  const int64_t lo = std::min(first_seen, last_seen), hi = std::max(first_seen, last_seen);
  for (int64_t j = 0; j < lo; ++j) {
    float wj[R];
    bool any = false;
    for (int r = 0; r < R; ++r) {
      wj[r] = w[r * KP + j];
      any |= wj[r] != 0.f;
    }
    if (!any) continue;
    for (int64_t c = 0; c < nv; ++c) {
      const V x = load<V>(vrows + j * vstride + N * c);
      for (int r = 0; r < R; ++r) acc[r][c] += wj[r] * x;
    }
  }
  for (int r = 0; r < R; ++r) {
    if (i0 + r < prefix) continue;  // keys [lo, hi) are seen by the rows from the prefix on (lo == prefix)
    for (int64_t j = lo; j < hi; ++j) {
      const float wj = w[r * KP + j];
      if (wj == 0.f) continue;
      for (int64_t c = 0; c < nv; ++c) acc[r][c] += wj * load<V>(vrows + j * vstride + N * c);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float inv = total[r] != 0.f ? 1.f / total[r] : 0.f;
    for (int64_t c = 0; c < nv; ++c) store(out + r * out_row + N * c, acc[r][c] * inv);
  }
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
      float total[kRows];
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r, seen = i < p.prefix ? p.prefix : K;
        total[r] = softmax_numerators<N>(s + r * KP, valid, seen, KP);
        if (total[r] == 0.f)  // the row sees no key: no weight (its scores are still -inf)
          for (int64_t j = 0; j < KP; ++j) s[r * KP + j] = 0.f;
      }
      T* out = p.out + ((b * p.queries + i0) * p.heads + h) * D;
      const int64_t out_row = p.heads * D;
      if constexpr (D16 != 0) {
        if (rows == kRows) {
          weighted_rows<N, D16 * 16 / N, kRows>(s, KP, vrows, vstride, i0, p.prefix, K, total, out, out_row);
          continue;
        }
      }
      for (int64_t r = 0; r < rows; ++r)
        weighted_rows<N, 0, 1>(s + r * KP, KP, vrows, vstride, i0 + r, p.prefix, K, total + r, out + r * out_row,
                               out_row, nv);
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
