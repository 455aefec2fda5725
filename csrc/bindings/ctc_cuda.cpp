// CUDA registrations of the CTC kernel ops (built only where torch has CUDA).
// Allocates outputs and scratch with the caching allocator, launches on the
// current stream, and never synchronises with the host.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "../ctc/ctc_cuda.h"
#include "ctc_common.h"

namespace pyprune {
namespace ctc {
namespace {

at::Tensor scratch(int64_t bytes, const at::Tensor& like) {
  return at::empty({std::max<int64_t>(bytes, 1)}, like.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& scores,
                                           const c10::optional<at::Tensor>& row_shift,
                                           const at::Tensor& targets,
                                           const at::Tensor& target_offsets,
                                           const at::Tensor& input_lengths,
                                           const at::Tensor& target_lengths,
                                           int64_t max_target_length, int64_t blank,
                                           bool zero_infinity) {
  const c10::cuda::CUDAGuard guard(scores.device());
  const Batch b = make_batch(scores, targets, target_offsets, input_lengths, target_lengths,
                             max_target_length, blank);
  auto nll = at::empty({b.batch_size}, scores.options());
  auto log_alpha = at::full({alpha_size(b)}, -std::numeric_limits<double>::infinity(), scores.options());
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "pyprune_ctc_forward_cuda", [&] {
    C10_CUDA_CHECK(cuda::forward<scalar_t>(
        b, scores.data_ptr<scalar_t>(), row_shift ? row_shift->data_ptr<scalar_t>() : nullptr,
        zero_infinity, nll.data_ptr<scalar_t>(), log_alpha.data_ptr<scalar_t>(),
        c10::cuda::getCurrentCUDAStream()));
  });
  return {nll, log_alpha};
}

at::Tensor backward(const at::Tensor& grad_nll, const c10::optional<at::Tensor>& grad_smooth,
                    const at::Tensor& scores, const c10::optional<at::Tensor>& row_shift,
                    const at::Tensor& targets, const at::Tensor& target_offsets,
                    const at::Tensor& input_lengths, const at::Tensor& target_lengths,
                    const at::Tensor& nll, const at::Tensor& log_alpha,
                    int64_t max_target_length, int64_t blank, bool zero_infinity) {
  const c10::cuda::CUDAGuard guard(scores.device());
  const Batch b = make_batch(scores, targets, target_offsets, input_lengths, target_lengths,
                             max_target_length, blank);
  TORCH_CHECK(log_alpha.numel() == alpha_size(b), "pyprune_C: log_alpha has the wrong size");
  auto grad = empty_output_like(scores);
  const auto g = as_scores_dtype(grad_nll, scores);
  const auto h = as_scores_dtype(grad_smooth, scores);
  auto work = scratch(cuda::backward_scratch_bytes(b, scores.element_size()), scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "pyprune_ctc_backward_cuda", [&] {
    C10_CUDA_CHECK(cuda::backward<scalar_t>(
        b, scores.data_ptr<scalar_t>(), row_shift ? row_shift->data_ptr<scalar_t>() : nullptr,
        g.data_ptr<scalar_t>(), h ? h->data_ptr<scalar_t>() : nullptr, nll.data_ptr<scalar_t>(),
        log_alpha.data_ptr<scalar_t>(), zero_infinity, grad.data_ptr<scalar_t>(), grad.stride(0),
        grad.stride(1), work.data_ptr(), c10::cuda::getCurrentCUDAStream()));
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> logsumexp_rows(const at::Tensor& logits) {
  const c10::cuda::CUDAGuard guard(logits.device());
  Batch b = make_scores_batch(logits);
  auto lse = at::empty({b.max_time, b.batch_size}, logits.options());
  auto neg_mean = at::empty({b.max_time, b.batch_size}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "pyprune_ctc_logsumexp_rows_cuda", [&] {
    C10_CUDA_CHECK(cuda::logsumexp_rows<scalar_t>(b, logits.data_ptr<scalar_t>(),
                                                  lse.data_ptr<scalar_t>(),
                                                  neg_mean.data_ptr<scalar_t>(),
                                                  c10::cuda::getCurrentCUDAStream()));
  });
  return {lse, neg_mean};
}

std::tuple<at::Tensor, at::Tensor> best_alignment(const at::Tensor& scores,
                                                  const at::Tensor& targets,
                                                  const at::Tensor& target_offsets,
                                                  const at::Tensor& input_lengths,
                                                  const at::Tensor& target_lengths,
                                                  int64_t max_target_length, int64_t blank) {
  const c10::cuda::CUDAGuard guard(scores.device());
  const Batch b = make_batch(scores, targets, target_offsets, input_lengths, target_lengths,
                             max_target_length, blank);
  auto alignment = at::empty({b.batch_size, b.max_time}, targets.options());
  auto score = at::empty({b.batch_size}, scores.options());
  auto work = scratch(cuda::best_alignment_scratch_bytes(b, scores.element_size()), scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "pyprune_ctc_best_alignment_cuda", [&] {
    C10_CUDA_CHECK(cuda::best_alignment<scalar_t>(b, scores.data_ptr<scalar_t>(),
                                                  alignment.data_ptr<int64_t>(),
                                                  score.data_ptr<scalar_t>(), work.data_ptr(),
                                                  c10::cuda::getCurrentCUDAStream()));
  });
  return {alignment, score};
}

std::tuple<at::Tensor, at::Tensor> greedy_decode(const at::Tensor& scores,
                                                 const at::Tensor& input_lengths, int64_t blank) {
  const c10::cuda::CUDAGuard guard(scores.device());
  Batch b = make_scores_batch(scores);
  check_index(input_lengths, "input_lengths", b.batch_size, scores);
  b.input_lengths = input_lengths.data_ptr<int64_t>();
  b.blank = blank;
  auto tokens = at::empty({b.batch_size, b.max_time}, input_lengths.options());
  auto lengths = at::empty({b.batch_size}, input_lengths.options());
  auto work = scratch(cuda::greedy_decode_scratch_bytes(b), scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "pyprune_ctc_greedy_decode_cuda", [&] {
    C10_CUDA_CHECK(cuda::greedy_decode<scalar_t>(b, scores.data_ptr<scalar_t>(),
                                                 tokens.data_ptr<int64_t>(),
                                                 lengths.data_ptr<int64_t>(), work.data_ptr(),
                                                 c10::cuda::getCurrentCUDAStream()));
  });
  return {tokens, lengths};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_C, CUDA, m) {
  m.impl("ctc_forward", &forward);
  m.impl("ctc_backward", &backward);
  m.impl("ctc_logsumexp_rows", &logsumexp_rows);
  m.impl("ctc_best_alignment", &best_alignment);
  m.impl("ctc_greedy_decode", &greedy_decode);
}

}  // namespace ctc
}  // namespace pyprune
