// CPU registration of the packed block-sparse linear kernel (inference),
// parallel over block rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../sparse/block_sparse_core.h"
#include "cpu_ops.h"

namespace pyprune {
namespace bsr {
namespace {

void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.dim() == 1 && t.is_contiguous(),
              "pyprune_C.bsr_linear: ", name, " must be a contiguous 1-D int64 CPU tensor");
}

}  // namespace

at::Tensor linear_op(const at::Tensor& x_in, const at::Tensor& blocks, const at::Tensor& row_ptr,
                     const at::Tensor& col_index, const c10::optional<at::Tensor>& bias,
                     c10::string_view activation_name) {
  TORCH_CHECK(x_in.device().is_cpu() && (x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16) &&
                  x_in.dim() == 2,
              "pyprune_C.bsr_linear: x must be a 2-D float32 or bfloat16 CPU tensor");
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK(x_in.size(1) % kBlock == 0, "pyprune_C.bsr_linear: x's features must be a multiple of 32");
  TORCH_CHECK(blocks.device().is_cpu() && blocks.scalar_type() == dtype && blocks.dim() == 3 &&
                  blocks.size(1) == kBlock && blocks.size(2) == kBlock && blocks.is_contiguous(),
              "pyprune_C.bsr_linear: blocks must be a contiguous (live, 32, 32) CPU tensor of x's dtype");
  check_index(row_ptr, "row_ptr");
  check_index(col_index, "col_index");
  const int64_t block_rows = row_ptr.numel() - 1, live = blocks.size(0), block_cols = x_in.size(1) / kBlock;
  TORCH_CHECK(block_rows >= 0 && col_index.numel() == live,
              "pyprune_C.bsr_linear: row_ptr must hold block_rows + 1 offsets and col_index one per block");
  // The offsets and block columns steer every read: checked, so that bad ones fail here instead of
  // reading outside x or blocks.
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  const int64_t* ci = col_index.data_ptr<int64_t>();
  TORCH_CHECK(rp[0] == 0 && rp[block_rows] == live, "pyprune_C.bsr_linear: row_ptr must run from 0 to live");
  for (int64_t r = 0; r < block_rows; ++r)
    TORCH_CHECK(rp[r] <= rp[r + 1], "pyprune_C.bsr_linear: row_ptr must be non-decreasing");
  for (int64_t b = 0; b < live; ++b)
    TORCH_CHECK(ci[b] >= 0 && ci[b] < block_cols, "pyprune_C.bsr_linear: col_index out of range");
  const int64_t out_features = block_rows * kBlock;
  if (bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == dtype && bias->dim() == 1 &&
                    bias->numel() == out_features && bias->is_contiguous(),
                "pyprune_C.bsr_linear: bias must be a contiguous CPU tensor of out_features in x's dtype");
  }
  TORCH_CHECK(activation_name == "none" || activation_name == "gelu",
              "pyprune_C.bsr_linear: activation must be 'none' or 'gelu'");
  const Activation activation = activation_name == "gelu" ? Activation::kGelu : Activation::kNone;
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  at::Tensor y = at::empty({x.size(0), out_features}, x.options());
  if (x.size(0) == 0 || out_features == 0) return y;
  if (dtype == at::kFloat) {
    const Problem p{x.data_ptr<float>(), x.size(0), x.stride(0), blocks.data_ptr<float>(), rp, ci, block_rows,
                    bias ? bias->data_ptr<float>() : nullptr, y.data_ptr<float>(), y.stride(0), activation};
    at::parallel_for(0, block_rows, 1, [&](int64_t first, int64_t last) { linear_rows(p, first, last); });
    return y;
  }
  // bfloat16 as its bit patterns.
  auto bits = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); };
  const ProblemBf16 p{bits(x), x.size(0), x.stride(0), bits(blocks), rp, ci, block_rows,
                      bias ? bits(*bias) : nullptr, reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()),
                      y.stride(0), activation};
  at::parallel_for(0, block_rows, 1, [&](int64_t first, int64_t last) { linear_rows_bf16(p, first, last); });
  return y;
}

TORCH_LIBRARY_IMPL(pyprune_C, CPU, m) { m.impl("bsr_linear", &linear_op); }

}  // namespace bsr
}  // namespace pyprune
