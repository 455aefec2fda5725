// Shared glue between torch tensors and the torch-free ctc::Batch.
#pragma once

#include <ATen/ATen.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <cstdint>

#include "../ctc/ctc_core.h"

namespace pyprune {
namespace ctc {

// scores: (T, N, C) with a contiguous class dimension. The Python layer
// normalises layouts and validates values; these checks keep the kernels safe
// when the raw ops are called directly.
// `bfloat16_ok`: the CPU greedy decoder also reads bfloat16 scores.
inline void check_scores(const at::Tensor& scores, bool bfloat16_ok = false) {
  TORCH_CHECK(scores.dim() == 3, "pyprune_C: scores must be (T, N, C), got ", scores.dim(), " dims");
  TORCH_CHECK(scores.stride(2) == 1 || scores.size(2) <= 1,
              "pyprune_C: scores must have a contiguous class dimension");
  const auto dtype = scores.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || (bfloat16_ok && dtype == at::kBFloat16),
              "pyprune_C: scores must be float32 or float64", bfloat16_ok ? " or bfloat16" : "",
              ", got ", dtype);
}

inline void check_index(const at::Tensor& t, const char* name, int64_t numel, const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 1 && t.is_contiguous(),
              "pyprune_C: ", name, " must be a contiguous 1-D int64 tensor");
  TORCH_CHECK(numel < 0 || t.numel() == numel, "pyprune_C: ", name, " must have ", numel,
              " elements, got ", t.numel());
  TORCH_CHECK(t.device() == like.device(), "pyprune_C: ", name, " must be on ", like.device());
}

// An uninitialised tensor like `like` (same layout when its class dimension is
// contiguous) for an output the kernel writes once, front to back. Large CPU
// outputs are advised to use transparent huge pages before the first touch:
// on the machines measured, faulting in a fresh 500 MB gradient page by page
// cost more than computing it (see bench/RESULTS.md).
inline at::Tensor empty_output_like(const at::Tensor& like) {
  auto out = at::empty_like(like);
  if (out.stride(-1) != 1) out = at::empty(like.sizes(), like.options());
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t end = begin + out.nbytes();
  const uintptr_t aligned = (begin + kHuge - 1) & ~(kHuge - 1);
  if (out.device().is_cpu() && end > aligned + kHuge) {
    // Advice only: failure (THP disabled) leaves ordinary pages.
    (void)madvise(reinterpret_cast<void*>(aligned), (end - aligned) & ~(kHuge - 1), MADV_HUGEPAGE);
  }
#endif
  return out;
}

// A Batch over the scores alone (log-sum-exp rows, greedy decoding).
inline Batch make_scores_batch(const at::Tensor& scores, bool bfloat16_ok = false) {
  check_scores(scores, bfloat16_ok);
  Batch b;
  b.max_time = scores.size(0);
  b.batch_size = scores.size(1);
  b.num_classes = scores.size(2);
  b.stride_time = scores.stride(0);
  b.stride_batch = scores.stride(1);
  return b;
}

inline Batch make_batch(const at::Tensor& scores, const at::Tensor& targets,
                        const at::Tensor& target_offsets, const at::Tensor& input_lengths,
                        const at::Tensor& target_lengths, int64_t max_target_length,
                        int64_t blank) {
  Batch b = make_scores_batch(scores);
  const int64_t N = b.batch_size;
  check_index(targets, "targets", -1, scores);
  check_index(target_offsets, "target_offsets", N, scores);
  check_index(input_lengths, "input_lengths", N, scores);
  check_index(target_lengths, "target_lengths", N, scores);
  b.targets = targets.data_ptr<int64_t>();
  b.num_labels = targets.numel();
  b.target_offsets = target_offsets.data_ptr<int64_t>();
  b.input_lengths = input_lengths.data_ptr<int64_t>();
  b.target_lengths = target_lengths.data_ptr<int64_t>();
  b.max_target_length = max_target_length;
  b.blank = blank;
  return b;
}

// grad_nll / grad_smooth in the scores' dtype, contiguous (grad_smooth optional).
inline at::Tensor as_scores_dtype(const at::Tensor& t, const at::Tensor& scores) {
  return t.to(scores.scalar_type()).contiguous();
}

inline c10::optional<at::Tensor> as_scores_dtype(const c10::optional<at::Tensor>& t,
                                                 const at::Tensor& scores) {
  return t ? c10::optional<at::Tensor>(as_scores_dtype(*t, scores)) : c10::nullopt;
}

}  // namespace ctc
}  // namespace pyprune
