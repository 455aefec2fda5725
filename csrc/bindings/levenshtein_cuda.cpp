// CUDA registrations of the Levenshtein label ops (built only where torch has
// CUDA): the warp-per-pair kernel, and the one-thread-per-pair anchor that the
// GPU benchmark compares it with.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../levenshtein/levenshtein_cuda.h"
#include "levenshtein_common.h"

namespace pyprune {
namespace lev {
namespace {

template <typename Scratch, typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> run(const at::Tensor& in_tokens,
                                                              const at::Tensor& out_tokens,
                                                              int64_t padding_idx, int64_t unk_idx,
                                                              Scratch scratch_bytes, Launch launch) {
  const c10::cuda::CUDAGuard guard(in_tokens.device());
  check_pair(in_tokens, out_tokens);
  const Tokens in = tokens_of(in_tokens, "in_tokens"), out = tokens_of(out_tokens, "out_tokens");
  const auto options = in_tokens.options();
  auto masks = at::empty({out.rows, out.width}, options.dtype(at::kBool));
  auto masked_tokens = at::empty({out.rows, out.width}, options);
  auto ins = at::empty({in.rows, std::max<int64_t>(in.width - 1, 0)}, options);
  auto del = at::empty({out.rows, out.width}, options);
  auto scratch = at::empty({std::max<int64_t>(scratch_bytes(in, out), 1)}, options.dtype(at::kByte));
  Targets targets;
  targets.masked_tgt_masks = masks.data_ptr<bool>();
  targets.masked_tgt_tokens = masked_tokens.data_ptr<int64_t>();
  targets.mask_ins_targets = ins.data_ptr<int64_t>();
  targets.word_del_targets = del.data_ptr<int64_t>();
  C10_CUDA_CHECK(launch(in, out, padding_idx, unk_idx, targets, scratch.data_ptr(),
                        c10::cuda::getCurrentCUDAStream()));
  return {masks, masked_tokens, ins, del};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> edit_targets_op(
    const at::Tensor& in_tokens, const at::Tensor& out_tokens, int64_t padding_idx, int64_t unk_idx) {
  return run(in_tokens, out_tokens, padding_idx, unk_idx, &cuda::edit_targets_scratch_bytes,
             &cuda::edit_targets);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> per_thread_op(
    const at::Tensor& in_tokens, const at::Tensor& out_tokens, int64_t padding_idx, int64_t unk_idx) {
  return run(in_tokens, out_tokens, padding_idx, unk_idx,
             &cuda::edit_targets_per_thread_scratch_bytes, &cuda::edit_targets_per_thread);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_C, CUDA, m) {
  m.impl("lev_edit_targets", &edit_targets_op);
  m.impl("lev_edit_targets_per_thread", &per_thread_op);
}

}  // namespace lev
}  // namespace pyprune
