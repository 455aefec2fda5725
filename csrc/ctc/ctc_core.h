// Batched CTC: the torch-free interface shared by the CPU and CUDA kernels.
//
// Scores are addressed as scores[t * stride_time + n * stride_batch + c]: the
// class dimension must be contiguous, the other two may be in either order,
// so (T, N, C) and batch-first (N, T, C) inputs need no copy.
//
// Targets are one flat label array plus a start offset per sample. Padded
// (N, S) targets have offsets n * S; concatenated targets have the exclusive
// cumulative sum of the target lengths. The forward variables of sample n live
// at log_alpha + alpha_offset(n), as input_length rows of 2 * S_n + 1 states,
// so the whole buffer holds T * (2 * M + N) values (M = number of flat labels)
// and can be sized from shapes alone, without reading lengths on the host.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PYPRUNE_HOST_DEVICE __host__ __device__
#else
#define PYPRUNE_HOST_DEVICE
#endif

namespace pyprune {
namespace ctc {

struct Batch {
  int64_t max_time = 0;          // T
  int64_t batch_size = 0;        // N
  int64_t num_classes = 0;       // C
  int64_t stride_time = 0;       // element stride between frames
  int64_t stride_batch = 0;      // element stride between samples
  const int64_t* targets = nullptr;         // [num_labels]
  int64_t num_labels = 0;                   // M
  const int64_t* target_offsets = nullptr;  // [N]
  const int64_t* input_lengths = nullptr;   // [N]
  const int64_t* target_lengths = nullptr;  // [N]
  int64_t max_target_length = 0;  // S for padded targets, M for concatenated
  int64_t blank = 0;
  double blank_penalty = 0.0;  // greedy decoding only: subtracted from the blank's score first
};

PYPRUNE_HOST_DEVICE inline int64_t alpha_offset(const Batch& b, int64_t n) {
  return b.max_time * (2 * b.target_offsets[n] + n);
}

PYPRUNE_HOST_DEVICE inline int64_t alpha_size(const Batch& b) {
  return b.max_time * (2 * b.num_labels + b.batch_size);
}

// Whether sample n can be processed without reading out of bounds: lengths in
// range, labels in [0, C) and different from blank. Kernels never touch the
// data of an invalid sample; they report NaN for it.
PYPRUNE_HOST_DEVICE inline bool sample_is_valid(const Batch& b, int64_t n) {
  if (b.blank < 0 || b.blank >= b.num_classes) return false;
  const int64_t input_length = b.input_lengths[n];
  const int64_t target_length = b.target_lengths[n];
  const int64_t offset = b.target_offsets[n];
  if (input_length < 0 || input_length > b.max_time) return false;
  if (target_length < 0 || target_length > b.max_target_length) return false;
  if (offset < 0 || offset > b.num_labels - target_length) return false;
  for (int64_t i = 0; i < target_length; ++i) {
    const int64_t label = b.targets[offset + i];
    if (label < 0 || label >= b.num_classes || label == b.blank) return false;
  }
  return true;
}

// ---------------------------------------------------------------- CPU kernels
// Each processes samples [begin, end) so the caller can run ranges in
// parallel (the torch binding uses at::parallel_for). float and double.
//
// row_shift: nullptr for log-probabilities; for raw logits, the per-frame
// log-sum-exp at row_shift[t * batch_size + n], subtracted from every score.

template <typename scalar_t>
void forward_cpu(const Batch& b, const scalar_t* scores, const scalar_t* row_shift,
                 bool zero_infinity, scalar_t* nll, scalar_t* log_alpha,
                 int64_t begin, int64_t end);

// Gradient with respect to the scores, written for every frame of each sample
// in [begin, end) (zeros past the input length):
//   grad = (g + h_t) * exp(score - shift) - h_t / C - g * occupancy
// where g = grad_nll[n], h_t = grad_smooth[n] / input_length (grad_smooth may
// be nullptr), occupancy is the CTC posterior of the class at that frame.
// With row_shift == nullptr and grad_smooth == nullptr this is torch's
// ctc_loss gradient convention (exp(log_probs) - occupancy). An infinite
// loss gives zeros with zero_infinity and NaN without, as torch does.
template <typename scalar_t>
void backward_cpu(const Batch& b, const scalar_t* scores, const scalar_t* row_shift,
                  const scalar_t* grad_nll, const scalar_t* grad_smooth,
                  const scalar_t* nll, const scalar_t* log_alpha, bool zero_infinity,
                  scalar_t* grad, int64_t grad_stride_time, int64_t grad_stride_batch,
                  int64_t begin, int64_t end);

// Per-frame log-sum-exp and smoothing term of rows [row_begin, row_end) of
// raw logits, row r = t * batch_size + n: lse[r] and
// neg_mean[r] = lse[r] - mean_c(logits) = -mean_c(log_softmax).
template <typename scalar_t>
void logsumexp_rows_cpu(const Batch& b, const scalar_t* logits, scalar_t* lse,
                        scalar_t* neg_mean, int64_t row_begin, int64_t row_end);

// Viterbi alignment: the label (or blank) of every frame on the most probable
// path; frames past the input length, and every frame of an impossible
// sample, get blank. score[n] is the path's log-probability (-inf when no
// path exists). Ties prefer staying in a state, then the previous state, and
// end on the final blank. backpointers: alpha_size(b) bytes of scratch.
template <typename scalar_t>
void best_alignment_cpu(const Batch& b, const scalar_t* scores, int64_t* alignment,
                        scalar_t* score, uint8_t* backpointers, int64_t begin,
                        int64_t end);

// Greedy decoding: argmax per frame (first maximal class), merge repeats, drop
// blanks, left-pack into tokens[n, :]; the rest of the row is blank. scalar_t: float, double, or
// uint16_t for bfloat16 scores (their bit patterns; compared as their exact float32 values).
// A nonzero b.blank_penalty is subtracted from the blank's score first, rounded as torch rounds
// `scores[..., blank] -= penalty` in the scores' dtype (bfloat16: the penalty rounded to bfloat16,
// the difference taken in float32 and rounded), so the decision is the one that in-place
// subtraction would give.
template <typename scalar_t>
void greedy_decode_cpu(const Batch& b, const scalar_t* scores, int64_t* tokens,
                       int64_t* lengths, int64_t begin, int64_t end);

}  // namespace ctc
}  // namespace pyprune
