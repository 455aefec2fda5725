// CPU kernels for batched CTC. See ctc_core.h for the contracts.
//
// Work is split over samples; inside a sample the recursions are vectorised
// over the 2S+1 extended-label states (the states of one frame depend only on
// the previous frame), and the dense gradient over the vocabulary row. The
// hot loops call fast_exp/fast_log, which GCC vectorises; target_clones
// builds AVX2 and AVX-512 variants beside the baseline and picks one at load.
#include "ctc_core.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "../common/fast_math.h"
#include "../common/isa_dispatch.h"

namespace pyprune {
namespace ctc {
namespace {

template <typename T> constexpr T neg_inf() { return -std::numeric_limits<T>::infinity(); }
template <typename T> constexpr T quiet_nan() { return std::numeric_limits<T>::quiet_NaN(); }

// The extended label sequence l' = (blank, l1, blank, l2, ..., lS, blank) of
// one sample, and for each state the additive mask of the skip transition
// s-2 -> s (0 where allowed, -inf where not). Buffers are reused across
// samples so the per-sample loops do not allocate.
template <typename T>
struct ExtendedLabels {
  std::vector<int64_t> label;
  // skip[s + 2] belongs to state s: two leading -inf pads for the forward
  // recursion, two trailing ones for the backward recursion's s + 2 lookup.
  std::vector<T> skip;

  int64_t build(const Batch& b, int64_t n) {
    const int64_t target_length = b.target_lengths[n];
    const int64_t* target = b.targets + b.target_offsets[n];
    const int64_t width = 2 * target_length + 1;
    label.resize(width);
    skip.assign(width + 4, neg_inf<T>());
    for (int64_t s = 0; s < width; ++s) {
      label[s] = (s % 2 == 0) ? b.blank : target[s / 2];
      if (s % 2 == 1 && s >= 3 && target[s / 2] != target[s / 2 - 1]) skip[s + 2] = T(0);
    }
    return width;
  }
};

template <typename T>
PYPRUNE_INLINE const T* frame(const Batch& b, const T* scores, int64_t t, int64_t n) {
  return scores + t * b.stride_time + n * b.stride_batch;
}

template <typename T>
PYPRUNE_INLINE T shift_of(const Batch& b, const T* row_shift, int64_t t, int64_t n) {
  return row_shift == nullptr ? T(0) : row_shift[t * b.batch_size + n];
}

template <typename T>
PYPRUNE_INLINE void forward_impl(const Batch& b, const T* scores, const T* row_shift,
                                 bool zero_infinity, T* nll, T* log_alpha, int64_t begin,
                                 int64_t end) {
  ExtendedLabels<T> ext;
  std::vector<T> prev;      // previous frame's alphas with two leading -inf pads
  std::vector<T> emission;  // this frame's score of each state's label
  for (int64_t n = begin; n < end; ++n) {
    if (!sample_is_valid(b, n)) {
      nll[n] = quiet_nan<T>();
      continue;
    }
    const int64_t input_length = b.input_lengths[n];
    const int64_t width = ext.build(b, n);
    const int64_t* label = ext.label.data();
    const T* skip = ext.skip.data();
    if (input_length == 0) {
      nll[n] = width == 1 ? T(0) : std::numeric_limits<T>::infinity();
      if (zero_infinity && width != 1) nll[n] = T(0);
      continue;
    }
    T* alpha = log_alpha + alpha_offset(b, n);
    prev.assign(width + 2, neg_inf<T>());
    {
      const T* row = frame(b, scores, 0, n);
      const T shift = shift_of(b, row_shift, 0, n);
      for (int64_t s = 0; s < width; ++s) alpha[s] = neg_inf<T>();
      alpha[0] = row[label[0]] - shift;
      if (width > 1) alpha[1] = row[label[1]] - shift;
    }
    for (int64_t t = 1; t < input_length; ++t) {
      const T* row = frame(b, scores, t, n);
      const T shift = shift_of(b, row_shift, t, n);
      const T* last = alpha + (t - 1) * width;
      T* cur = alpha + t * width;
      std::copy(last, last + width, prev.begin() + 2);
      emission.resize(width);
      for (int64_t s = 0; s < width; ++s) emission[s] = row[label[s]] - shift;
      const T* p = prev.data();
      const T* em = emission.data();
#pragma omp simd
      for (int64_t s = 0; s < width; ++s) {
        cur[s] = logsumexp3<T>(p[s + 2], p[s + 1], p[s] + skip[s + 2]) + em[s];
      }
    }
    const T* final_row = alpha + (input_length - 1) * width;
    const T tail = width > 1 ? final_row[width - 2] : neg_inf<T>();
    T loss = -logsumexp3<T>(final_row[width - 1], tail, neg_inf<T>());
    if (zero_infinity && loss == std::numeric_limits<T>::infinity()) loss = T(0);
    nll[n] = loss;
  }
}

template <typename T>
PYPRUNE_INLINE void fill_rows(const Batch& b, T* grad, int64_t stride_time,
                              int64_t stride_batch, int64_t n, int64_t t_begin,
                              int64_t t_end, T value) {
  for (int64_t t = t_begin; t < t_end; ++t) {
    T* out = grad + t * stride_time + n * stride_batch;
    std::fill(out, out + b.num_classes, value);
  }
}

template <typename T>
PYPRUNE_INLINE void backward_impl(const Batch& b, const T* scores, const T* row_shift,
                                  const T* grad_nll, const T* grad_smooth, const T* nll,
                                  const T* log_alpha, bool zero_infinity, T* grad,
                                  int64_t gst, int64_t gsb, int64_t begin, int64_t end) {
  (void)nll;  // zero_infinity may have replaced it: impossibility is read from log_alpha
  const int64_t C = b.num_classes;
  ExtendedLabels<T> ext;
  std::vector<T> next, beta;  // beta of frame t+1 (two trailing -inf pads), frame t
  std::vector<T> emission;    // frame t's score of each state's label
  for (int64_t n = begin; n < end; ++n) {
    if (!sample_is_valid(b, n)) {
      fill_rows(b, grad, gst, gsb, n, 0, b.max_time, quiet_nan<T>());
      continue;
    }
    const int64_t input_length = b.input_lengths[n];
    fill_rows(b, grad, gst, gsb, n, input_length, b.max_time, T(0));
    if (input_length == 0) continue;
    const T g = grad_nll[n];
    const T h = grad_smooth == nullptr ? T(0) : grad_smooth[n] / static_cast<T>(input_length);
    const T uniform = -h / static_cast<T>(C);
    const int64_t width = ext.build(b, n);
    const int64_t* label = ext.label.data();
    const T* skip = ext.skip.data();
    const T* alpha = log_alpha + alpha_offset(b, n);

    // Whether the targets are unreachable is read from the forward variables,
    // not from nll, which zero_infinity may have replaced by 0.
    const T* final_row = alpha + (input_length - 1) * width;
    const T log_likelihood =
        logsumexp3<T>(final_row[width - 1], width > 1 ? final_row[width - 2] : neg_inf<T>(),
                      neg_inf<T>());
    if (log_likelihood == neg_inf<T>()) {
      if (!zero_infinity) {
        // torch returns NaN for every class of every valid frame here.
        fill_rows(b, grad, gst, gsb, n, 0, input_length, quiet_nan<T>());
        continue;
      }
      // zero_infinity: the CTC term contributes nothing, the smoothing term
      // still does.
      for (int64_t t = 0; t < input_length; ++t) {
        const T* row = frame(b, scores, t, n);
        const T shift = shift_of(b, row_shift, t, n);
        T* out = grad + t * gst + n * gsb;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) out[c] = h * vexp<T>(row[c] - shift) + uniform;
      }
      continue;
    }

    next.assign(width + 2, neg_inf<T>());
    beta.assign(width, neg_inf<T>());
    for (int64_t t = input_length - 1; t >= 0; --t) {
      const T* row = frame(b, scores, t, n);
      const T shift = shift_of(b, row_shift, t, n);
      if (t == input_length - 1) {
        beta[width - 1] = row[label[width - 1]] - shift;
        if (width > 1) beta[width - 2] = row[label[width - 2]] - shift;
      } else {
        emission.resize(width);
        for (int64_t s = 0; s < width; ++s) emission[s] = row[label[s]] - shift;
        const T* q = next.data();
        const T* em = emission.data();
        T* out_beta = beta.data();
#pragma omp simd
        for (int64_t s = 0; s < width; ++s) {
          out_beta[s] = logsumexp3<T>(q[s], q[s + 1], q[s + 2] + skip[s + 4]) + em[s];
        }
      }
      // Dense part over the vocabulary row, then the posterior correction.
      T* out = grad + t * gst + n * gsb;
      const T dense_scale = g + h;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) out[c] = dense_scale * vexp<T>(row[c] - shift) + uniform;
      const T* a = alpha + t * width;
      for (int64_t s = 0; s < width; ++s) {
        const T log_gamma = a[s] + beta[s] - (row[label[s]] - shift) - log_likelihood;
        out[label[s]] -= g * vexp<T>(log_gamma);
      }
      std::copy(beta.begin(), beta.end(), next.begin());
    }
  }
}

template <typename T>
PYPRUNE_INLINE void logsumexp_rows_impl(const Batch& b, const T* logits, T* lse, T* neg_mean,
                                        int64_t row_begin, int64_t row_end) {
  const int64_t C = b.num_classes;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t t = r / b.batch_size, n = r % b.batch_size;
    const T* row = frame(b, logits, t, n);
    T m = neg_inf<T>();
    T total = T(0);
#pragma omp simd reduction(max : m) reduction(+ : total)
    for (int64_t c = 0; c < C; ++c) {
      // A plain select, not std::max: GCC vectorises std::max's reduction
      // here about 6x slower.
      const T value = row[c];
      m = value > m ? value : m;
      total += value;
    }
    const T shift = m == neg_inf<T>() ? T(0) : m;
    T sum = T(0);
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; ++c) sum += vexp<T>(row[c] - shift);
    lse[r] = shift + vlog<T>(sum);
    neg_mean[r] = lse[r] - total / static_cast<T>(C);
  }
}

template <typename T>
PYPRUNE_INLINE void best_alignment_impl(const Batch& b, const T* scores, int64_t* alignment,
                                        T* score, uint8_t* backpointers, int64_t begin,
                                        int64_t end) {
  ExtendedLabels<T> ext;
  std::vector<T> prev, cur;
  for (int64_t n = begin; n < end; ++n) {
    int64_t* path = alignment + n * b.max_time;
    const bool valid = sample_is_valid(b, n);
    std::fill(path, path + b.max_time, valid ? b.blank : int64_t(-1));
    if (!valid) {
      score[n] = quiet_nan<T>();
      continue;
    }
    const int64_t input_length = b.input_lengths[n];
    const int64_t width = ext.build(b, n);
    const int64_t* label = ext.label.data();
    const T* skip = ext.skip.data();
    if (input_length == 0) {
      score[n] = width == 1 ? T(0) : neg_inf<T>();
      continue;
    }
    uint8_t* back = backpointers + alpha_offset(b, n);
    prev.assign(width + 2, neg_inf<T>());
    cur.assign(width, neg_inf<T>());
    const T* row0 = frame(b, scores, 0, n);
    prev[2] = row0[label[0]];
    if (width > 1) prev[3] = row0[label[1]];
    for (int64_t t = 1; t < input_length; ++t) {
      const T* row = frame(b, scores, t, n);
      uint8_t* bp = back + t * width;
      for (int64_t s = 0; s < width; ++s) {
        T best = prev[s + 2];
        uint8_t step = 0;
        if (prev[s + 1] > best) { best = prev[s + 1]; step = 1; }
        const T jump = prev[s] + skip[s + 2];
        if (jump > best) { best = jump; step = 2; }
        cur[s] = best + row[label[s]];
        bp[s] = step;
      }
      std::copy(cur.begin(), cur.end(), prev.begin() + 2);
    }
    int64_t state = width - 1;
    if (width > 1 && prev[2 + width - 2] > prev[2 + width - 1]) state = width - 2;
    const T best = prev[2 + state];
    score[n] = best;
    if (best == neg_inf<T>()) continue;
    for (int64_t t = input_length - 1; t >= 0; --t) {
      path[t] = label[state];
      if (t > 0) state -= back[t * width + state];
    }
  }
}

// A score as a number to compare: a bfloat16 (its bits, uint16_t) widened to float32, which is exact,
// so decoding bfloat16 scores gives what decoding their float32 copy does, without the copy.
PYPRUNE_INLINE float score_value(float s) { return s; }
PYPRUNE_INLINE double score_value(double s) { return s; }
PYPRUNE_INLINE float score_value(uint16_t s) { return bf16_to_float(s); }

// score - penalty as torch's in-place subtraction leaves it in the scores' dtype, as a value to compare:
// for bfloat16 torch rounds the penalty to bfloat16 first, subtracts in float32 and rounds the result.
PYPRUNE_INLINE float penalised(float s, double p) { return s - static_cast<float>(p); }
PYPRUNE_INLINE double penalised(double s, double p) { return s - p; }
PYPRUNE_INLINE float penalised(uint16_t s, double p) {
  const float penalty = bf16_to_float(float_to_bf16(static_cast<float>(p)));
  return bf16_to_float(float_to_bf16(bf16_to_float(s) - penalty));
}

// The first c in [begin, end) with row[c] == m, else end: whole chunks compared at once (vector
// compares), then the matching chunk one by one. Scanning one by one from the start cost more than
// finding the maximum (half the classes on average, each a scalar compare).
template <typename T, typename Value>
PYPRUNE_INLINE int64_t first_equal(const T* row, int64_t begin, int64_t end, Value m) {
  constexpr int64_t kChunk = 32;
  int64_t c = begin;
  for (; c + kChunk <= end; c += kChunk) {
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t j = 0; j < kChunk; ++j) hit |= score_value(row[c + j]) == m;
    if (hit) break;
  }
  for (; c < end; ++c)
    if (score_value(row[c]) == m) return c;
  return end;
}

// The first class of `row` with the highest value, the blank's value being `blank_value` (C - 1 where no
// value equals the maximum: NaN scores).
template <typename T, typename Value>
PYPRUNE_INLINE int64_t best_class(const T* row, int64_t C, int64_t blank, Value blank_value) {
  Value m = blank_value;
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < blank; ++c) {
    const Value x = score_value(row[c]);
    m = x > m ? x : m;
  }
#pragma omp simd reduction(max : m)
  for (int64_t c = blank + 1; c < C; ++c) {
    const Value x = score_value(row[c]);
    m = x > m ? x : m;
  }
  const int64_t before = first_equal(row, 0, blank, m);
  if (before < blank) return before;
  if (blank_value == m) return blank;
  const int64_t after = first_equal(row, blank + 1, C, m);
  return after < C ? after : C - 1;
}

template <typename T>
PYPRUNE_INLINE void greedy_decode_impl(const Batch& b, const T* scores, int64_t* tokens,
                                       int64_t* lengths, int64_t begin, int64_t end) {
  const int64_t C = b.num_classes;
  for (int64_t n = begin; n < end; ++n) {
    int64_t* out = tokens + n * b.max_time;
    std::fill(out, out + b.max_time, b.blank);
    const int64_t input_length = b.input_lengths[n];
    if (input_length < 0 || input_length > b.max_time || b.blank < 0 || b.blank >= C) {
      lengths[n] = -1;
      continue;
    }
    int64_t count = 0, previous = -1;
    for (int64_t t = 0; t < input_length; ++t) {
      const T* row = frame(b, scores, t, n);
      const auto blank_value =
          b.blank_penalty != 0.0 ? penalised(row[b.blank], b.blank_penalty) : score_value(row[b.blank]);
      const int64_t best = best_class(row, C, b.blank, blank_value);
      if (best != b.blank && best != previous) out[count++] = best;
      previous = best;
    }
    lengths[n] = count;
  }
}

}  // namespace

// One dispatched function per (kernel, dtype); see isa_dispatch.h.
#define PYPRUNE_CTC_ENTRY_POINTS(T, SUFFIX)                                                      \
  PYPRUNE_ISA_VARIANTS(forward_##SUFFIX,                                                          \
                       (const Batch& b, const T* s, const T* rs, bool zi, T* nll, T* la,          \
                        int64_t lo, int64_t hi),                                                  \
                       (b, s, rs, zi, nll, la, lo, hi), forward_impl<T>)                          \
  PYPRUNE_ISA_VARIANTS(backward_##SUFFIX,                                                         \
                       (const Batch& b, const T* s, const T* rs, const T* gn, const T* gs,        \
                        const T* nll, const T* la, bool zi, T* g, int64_t gst, int64_t gsb,       \
                        int64_t lo, int64_t hi),                                                  \
                       (b, s, rs, gn, gs, nll, la, zi, g, gst, gsb, lo, hi), backward_impl<T>)    \
  PYPRUNE_ISA_VARIANTS(lse_##SUFFIX,                                                              \
                       (const Batch& b, const T* x, T* lse, T* nm, int64_t lo, int64_t hi),       \
                       (b, x, lse, nm, lo, hi), logsumexp_rows_impl<T>)                           \
  PYPRUNE_ISA_VARIANTS(align_##SUFFIX,                                                            \
                       (const Batch& b, const T* s, int64_t* a, T* sc, uint8_t* bp, int64_t lo,   \
                        int64_t hi),                                                              \
                       (b, s, a, sc, bp, lo, hi), best_alignment_impl<T>)                         \
  PYPRUNE_ISA_VARIANTS(greedy_##SUFFIX,                                                           \
                       (const Batch& b, const T* s, int64_t* tok, int64_t* len, int64_t lo,       \
                        int64_t hi),                                                              \
                       (b, s, tok, len, lo, hi), greedy_decode_impl<T>)

PYPRUNE_CTC_ENTRY_POINTS(float, f32)
PYPRUNE_CTC_ENTRY_POINTS(double, f64)
#undef PYPRUNE_CTC_ENTRY_POINTS

// bfloat16 (as its bits) for greedy decoding only: the losses and alignments compute in float32.
PYPRUNE_ISA_VARIANTS(greedy_bf16,
                     (const Batch& b, const uint16_t* s, int64_t* tok, int64_t* len, int64_t lo,
                      int64_t hi),
                     (b, s, tok, len, lo, hi), greedy_decode_impl<uint16_t>)

#define PYPRUNE_CTC_SPECIALISE(T, SUFFIX)                                                     \
  template <>                                                                                 \
  void forward_cpu<T>(const Batch& b, const T* s, const T* rs, bool zi, T* nll, T* la,        \
                      int64_t lo, int64_t hi) {                                               \
    forward_##SUFFIX(b, s, rs, zi, nll, la, lo, hi);                                          \
  }                                                                                           \
  template <>                                                                                 \
  void backward_cpu<T>(const Batch& b, const T* s, const T* rs, const T* gn, const T* gs,     \
                       const T* nll, const T* la, bool zi, T* g, int64_t gst, int64_t gsb,    \
                       int64_t lo, int64_t hi) {                                              \
    backward_##SUFFIX(b, s, rs, gn, gs, nll, la, zi, g, gst, gsb, lo, hi);                    \
  }                                                                                           \
  template <>                                                                                 \
  void logsumexp_rows_cpu<T>(const Batch& b, const T* x, T* lse, T* nm, int64_t lo,           \
                             int64_t hi) {                                                    \
    lse_##SUFFIX(b, x, lse, nm, lo, hi);                                                      \
  }                                                                                           \
  template <>                                                                                 \
  void best_alignment_cpu<T>(const Batch& b, const T* s, int64_t* a, T* sc, uint8_t* bp,      \
                             int64_t lo, int64_t hi) {                                        \
    align_##SUFFIX(b, s, a, sc, bp, lo, hi);                                                  \
  }                                                                                           \
  template <>                                                                                 \
  void greedy_decode_cpu<T>(const Batch& b, const T* s, int64_t* tok, int64_t* len,           \
                            int64_t lo, int64_t hi) {                                         \
    greedy_##SUFFIX(b, s, tok, len, lo, hi);                                                  \
  }

PYPRUNE_CTC_SPECIALISE(float, f32)
PYPRUNE_CTC_SPECIALISE(double, f64)
#undef PYPRUNE_CTC_SPECIALISE

template <>
void greedy_decode_cpu<uint16_t>(const Batch& b, const uint16_t* s, int64_t* tok, int64_t* len,
                                 int64_t lo, int64_t hi) {
  greedy_bf16(b, s, tok, len, lo, hi);
}

}  // namespace ctc
}  // namespace pyprune
