// Parts shared by the fused decoding layers (bert_layer_cpu.cpp, decoder_step_cpu.cpp): a packed linear's
// four tensors as one callable, the join of cached and new keys, and the residual sum, each giving the
// same values as the Python ops they replace.
#pragma once

#include <ATen/ATen.h>

#include <c10/util/BFloat16.h>

#include <cstring>

#include "../sparse/block_sparse_core.h"
#include "cpu_ops.h"

namespace pyprune {
namespace layer {

// One packed linear layer (see pyprune_C::bsr_linear): its blocks, row_ptr, col_index and bias.
struct Packed {
  const at::Tensor &blocks, &row_ptr, &col_index, &bias;
  int64_t out_features() const { return (row_ptr.numel() - 1) * bsr::kBlock; }
  at::Tensor operator()(const at::Tensor& x, c10::string_view activation = "none") const {
    return bsr::linear_op(x, blocks, row_ptr, col_index, bias, activation);
  }
};

// at::cat({prefix, own}, 2) for (batch, heads, rows, head_dim) CPU tensors of one dtype (the callers check
// them) with contiguous features: a new contiguous tensor, filled by one copy per row.
inline at::Tensor join_keys(const at::Tensor& prefix, const at::Tensor& own) {
  if (prefix.stride(3) != 1 || own.stride(3) != 1) return at::cat({prefix, own}, 2);
  const int64_t B = own.size(0), H = own.size(1), P = prefix.size(2), T = own.size(2), D = own.size(3);
  at::Tensor out = at::empty({B, H, P + T, D}, own.options());
  const int64_t bytes = D * own.element_size();
  auto* dst = static_cast<char*>(out.data_ptr());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (const at::Tensor* part : {&prefix, &own}) {
        const auto* src = static_cast<const char*>(part->data_ptr()) +
                          (b * part->stride(0) + h * part->stride(1)) * part->element_size();
        for (int64_t r = 0; r < part->size(2); ++r, dst += bytes)
          std::memcpy(dst, src + r * part->stride(2) * part->element_size(), bytes);
      }
    }
  }
  return out;
}

// x += residual for a fresh contiguous (rows, hidden) x, the same values as at::add: float32 sums, or
// bfloat16 ones computed in float32 and rounded to the nearest bfloat16, ties to even.
inline void add_residual(at::Tensor& x, const at::Tensor& residual_in) {
  const at::Tensor residual = residual_in.contiguous();
  const int64_t n = x.numel();
  if (x.scalar_type() == at::kFloat) {
    float* y = x.data_ptr<float>();
    const float* r = residual.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) y[i] += r[i];
    return;
  }
  c10::BFloat16* y = x.data_ptr<c10::BFloat16>();
  const c10::BFloat16* r = residual.data_ptr<c10::BFloat16>();
  for (int64_t i = 0; i < n; ++i) y[i] = c10::BFloat16(static_cast<float>(y[i]) + static_cast<float>(r[i]));
}

// Checks that `k` and `v` are (batch, heads, rows, head_dim) CPU tensors of `dtype`, of one shape: `what`
// names them in the error, `op` the op.
inline void check_heads(const char* op, const char* what, const at::Tensor& k, const at::Tensor& v, int64_t batch,
                        int64_t heads, int64_t head_dim, at::ScalarType dtype) {
  TORCH_CHECK(k.dim() == 4 && k.size(0) == batch && k.size(1) == heads && k.size(3) == head_dim &&
                  v.sizes() == k.sizes(),
              op, ": ", what, " must be (batch, heads, keys, head_dim) = (", batch, ", ", heads, ", keys, ",
              head_dim, ") tensors of one shape, got ", k.sizes(), " and ", v.sizes());
  for (const at::Tensor* t : {&k, &v})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype, op, ": ", what,
                " must be CPU tensors of the rows' dtype (", dtype, "), got ", t->scalar_type(), " on ",
                t->device());
}

}  // namespace layer
}  // namespace pyprune
