// CPU registrations of the CTC kernel ops: tensors in, ctc::*_cpu out,
// parallel over samples (or frames) with at::parallel_for.
#include <ATen/Parallel.h>
#include <algorithm>
#include <limits>
#include <torch/library.h>

#include "ctc_common.h"

namespace pyprune {
namespace ctc {
namespace {

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& scores,
                                           const c10::optional<at::Tensor>& row_shift,
                                           const at::Tensor& targets,
                                           const at::Tensor& target_offsets,
                                           const at::Tensor& input_lengths,
                                           const at::Tensor& target_lengths,
                                           int64_t max_target_length, int64_t blank,
                                           bool zero_infinity) {
  const Batch b = make_batch(scores, targets, target_offsets, input_lengths, target_lengths,
                             max_target_length, blank);
  auto nll = at::empty({b.batch_size}, scores.options());
  // Filled so that slots no sample uses hold a defined value (-inf).
  auto log_alpha = at::full({alpha_size(b)}, -std::numeric_limits<double>::infinity(), scores.options());
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "pyprune_ctc_forward", [&] {
    const scalar_t* shift = row_shift ? row_shift->data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, b.batch_size, 1, [&](int64_t lo, int64_t hi) {
      forward_cpu<scalar_t>(b, scores.data_ptr<scalar_t>(), shift, zero_infinity,
                            nll.data_ptr<scalar_t>(), log_alpha.data_ptr<scalar_t>(), lo, hi);
    });
  });
  return {nll, log_alpha};
}

at::Tensor backward(const at::Tensor& grad_nll, const c10::optional<at::Tensor>& grad_smooth,
                    const at::Tensor& scores, const c10::optional<at::Tensor>& row_shift,
                    const at::Tensor& targets, const at::Tensor& target_offsets,
                    const at::Tensor& input_lengths, const at::Tensor& target_lengths,
                    const at::Tensor& nll, const at::Tensor& log_alpha,
                    int64_t max_target_length, int64_t blank, bool zero_infinity) {
  const Batch b = make_batch(scores, targets, target_offsets, input_lengths, target_lengths,
                             max_target_length, blank);
  TORCH_CHECK(log_alpha.numel() == alpha_size(b), "pyprune_C: log_alpha has the wrong size");
  // The gradient takes the input's memory layout (batch-first stays batch-first).
  auto grad = empty_output_like(scores);
  const auto g = as_scores_dtype(grad_nll, scores);
  const auto h = as_scores_dtype(grad_smooth, scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "pyprune_ctc_backward", [&] {
    const scalar_t* shift = row_shift ? row_shift->data_ptr<scalar_t>() : nullptr;
    const scalar_t* hp = h ? h->data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, b.batch_size, 1, [&](int64_t lo, int64_t hi) {
      backward_cpu<scalar_t>(b, scores.data_ptr<scalar_t>(), shift, g.data_ptr<scalar_t>(), hp,
                             nll.data_ptr<scalar_t>(), log_alpha.data_ptr<scalar_t>(),
                             zero_infinity, grad.data_ptr<scalar_t>(), grad.stride(0),
                             grad.stride(1), lo, hi);
    });
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> logsumexp_rows(const at::Tensor& logits) {
  Batch b = make_scores_batch(logits);
  auto lse = at::empty({b.max_time, b.batch_size}, logits.options());
  auto neg_mean = at::empty({b.max_time, b.batch_size}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "pyprune_ctc_logsumexp_rows", [&] {
    at::parallel_for(0, b.max_time * b.batch_size, 16, [&](int64_t lo, int64_t hi) {
      logsumexp_rows_cpu<scalar_t>(b, logits.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                                   neg_mean.data_ptr<scalar_t>(), lo, hi);
    });
  });
  return {lse, neg_mean};
}

std::tuple<at::Tensor, at::Tensor> best_alignment(const at::Tensor& scores,
                                                  const at::Tensor& targets,
                                                  const at::Tensor& target_offsets,
                                                  const at::Tensor& input_lengths,
                                                  const at::Tensor& target_lengths,
                                                  int64_t max_target_length, int64_t blank) {
  const Batch b = make_batch(scores, targets, target_offsets, input_lengths, target_lengths,
                             max_target_length, blank);
  auto alignment = at::empty({b.batch_size, b.max_time}, targets.options());
  auto score = at::empty({b.batch_size}, scores.options());
  auto backpointers = at::empty({alpha_size(b)}, scores.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "pyprune_ctc_best_alignment", [&] {
    at::parallel_for(0, b.batch_size, 1, [&](int64_t lo, int64_t hi) {
      best_alignment_cpu<scalar_t>(b, scores.data_ptr<scalar_t>(), alignment.data_ptr<int64_t>(),
                                   score.data_ptr<scalar_t>(), backpointers.data_ptr<uint8_t>(),
                                   lo, hi);
    });
  });
  return {alignment, score};
}

// Greedy decoding of every sample into tokens (N, T) and lengths (N), with b's blank penalty.
void greedy_into(const Batch& b, const at::Tensor& scores, at::Tensor& tokens, at::Tensor& lengths) {
  if (scores.scalar_type() == at::kBFloat16) {  // read as it is: no float32 copy of the scores
    const auto* bits = reinterpret_cast<const uint16_t*>(scores.const_data_ptr<at::BFloat16>());
    at::parallel_for(0, b.batch_size, 1, [&](int64_t lo, int64_t hi) {
      greedy_decode_cpu<uint16_t>(b, bits, tokens.data_ptr<int64_t>(), lengths.data_ptr<int64_t>(),
                                  lo, hi);
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "pyprune_ctc_greedy_decode", [&] {
    at::parallel_for(0, b.batch_size, 1, [&](int64_t lo, int64_t hi) {
      greedy_decode_cpu<scalar_t>(b, scores.data_ptr<scalar_t>(), tokens.data_ptr<int64_t>(),
                                  lengths.data_ptr<int64_t>(), lo, hi);
    });
  });
}

std::tuple<at::Tensor, at::Tensor> greedy_decode(const at::Tensor& scores,
                                                 const at::Tensor& input_lengths, int64_t blank) {
  Batch b = make_scores_batch(scores, /*bfloat16_ok=*/true);
  check_index(input_lengths, "input_lengths", b.batch_size, scores);
  b.input_lengths = input_lengths.data_ptr<int64_t>();
  b.blank = blank;
  auto tokens = at::empty({b.batch_size, b.max_time}, input_lengths.options());
  auto lengths = at::empty({b.batch_size}, input_lengths.options());
  greedy_into(b, scores, tokens, lengths);
  return {tokens, lengths};
}

// Greedy decoding to framed token rows: [bos] class_map[label]... [eos], padded with `pad`, each row's
// labels cut to max_length - 2; the width is the longest row's.
at::Tensor greedy_draft(const at::Tensor& scores, const at::Tensor& input_lengths,
                        const at::Tensor& class_map, int64_t blank, double blank_penalty, int64_t bos,
                        int64_t eos, int64_t pad, int64_t max_length) {
  Batch b = make_scores_batch(scores, /*bfloat16_ok=*/true);
  check_index(input_lengths, "input_lengths", b.batch_size, scores);
  check_index(class_map, "class_map", b.num_classes, scores);
  TORCH_CHECK(blank >= 0 && blank < b.num_classes, "pyprune_C: blank must be in [0, ", b.num_classes,
              "), got ", blank);
  TORCH_CHECK(max_length >= 2, "pyprune_C: max_length must be at least 2 ([bos] and [eos]), got ",
              max_length);
  const int64_t* in_len = input_lengths.data_ptr<int64_t>();
  for (int64_t n = 0; n < b.batch_size; ++n)
    TORCH_CHECK(in_len[n] >= 0 && in_len[n] <= b.max_time, "pyprune_C: input_lengths must be in [0, ",
                b.max_time, "], got ", in_len[n], " in row ", n);
  b.input_lengths = in_len;
  b.blank = blank;
  b.blank_penalty = blank_penalty;
  auto labels = at::empty({b.batch_size, b.max_time}, input_lengths.options());
  auto lengths = at::empty({b.batch_size}, input_lengths.options());
  greedy_into(b, scores, labels, lengths);
  const int64_t* len = lengths.data_ptr<int64_t>();
  int64_t longest = 0;
  for (int64_t n = 0; n < b.batch_size; ++n) longest = std::max(longest, std::min(len[n], max_length - 2));
  const int64_t width = longest + 2;
  auto out = at::empty({b.batch_size, width}, input_lengths.options());
  const int64_t* map = class_map.data_ptr<int64_t>();
  const int64_t* from = labels.data_ptr<int64_t>();
  int64_t* to = out.data_ptr<int64_t>();
  for (int64_t n = 0; n < b.batch_size; ++n) {
    const int64_t count = std::min(len[n], max_length - 2);
    int64_t* row = to + n * width;
    row[0] = bos;
    for (int64_t i = 0; i < count; ++i) row[1 + i] = map[from[n * b.max_time + i]];
    row[1 + count] = eos;
    std::fill(row + 2 + count, row + width, pad);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_C, CPU, m) {
  m.impl("ctc_forward", &forward);
  m.impl("ctc_backward", &backward);
  m.impl("ctc_logsumexp_rows", &logsumexp_rows);
  m.impl("ctc_best_alignment", &best_alignment);
  m.impl("ctc_greedy_decode", &greedy_decode);
  m.impl("ctc_greedy_draft", &greedy_draft);
}

}  // namespace ctc
}  // namespace pyprune
