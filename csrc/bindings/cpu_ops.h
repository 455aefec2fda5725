// The CPU implementations of pyprune_C's inference ops, callable from other ops of the extension
// without a trip through the dispatcher (bert_layer_cpu.cpp and decoder_step_cpu.cpp compose them).
#pragma once

#include <ATen/ATen.h>

namespace pyprune {
namespace bsr {
// pyprune_C::bsr_linear on the CPU (block_sparse_cpu.cpp).
at::Tensor linear_op(const at::Tensor& x_in, const at::Tensor& blocks, const at::Tensor& row_ptr,
                     const at::Tensor& col_index, const c10::optional<at::Tensor>& bias,
                     c10::string_view activation_name);
}  // namespace bsr

namespace attn {
// pyprune_C::masked_attention on the CPU (attention_cpu.cpp).
at::Tensor attention_op(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                        const c10::optional<at::Tensor>& key_valid, int64_t prefix, double scale);
}  // namespace attn
}  // namespace pyprune
