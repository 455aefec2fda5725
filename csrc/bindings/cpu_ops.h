// The CPU implementations of pyprune_C's inference ops, callable from other ops of the extension
// without a trip through the dispatcher (bert_layer_cpu.cpp composes them). Each op is also a checked,
// prepared call whose work can be run in ranges by whoever schedules it: bert_layer runs a whole layer's
// calls in one parallel region.
#pragma once

#include <ATen/ATen.h>

#include "../attention/attention_core.h"
#include "../sparse/block_sparse_core.h"

namespace pyprune {
namespace bsr {

// One call of the packed kernel, checked as pyprune_C::bsr_linear checks it, its output allocated (or
// `out`: a (rows, out_features) tensor of x's dtype with unit column stride, written in place).
class PreparedLinear {
 public:
  PreparedLinear(const at::Tensor& x, const at::Tensor& blocks, const at::Tensor& row_ptr,
                 const at::Tensor& col_index, const c10::optional<at::Tensor>& bias, c10::string_view activation,
                 const c10::optional<at::Tensor>& out = c10::nullopt);
  int64_t block_rows() const { return rows_ > 0 ? block_rows_ : 0; }  // the units of work
  void run(int64_t first, int64_t last) const;                         // block rows [first, last)
  const at::Tensor& output() const { return y_; }

 private:
  at::Tensor x_, y_;
  int64_t rows_ = 0, block_rows_ = 0;
  bool bf16_ = false;
  Problem f32_{};
  ProblemBf16 b16_{};
};

// pyprune_C::bsr_linear on the CPU (block_sparse_cpu.cpp): a PreparedLinear run in parallel.
at::Tensor linear_op(const at::Tensor& x_in, const at::Tensor& blocks, const at::Tensor& row_ptr,
                     const at::Tensor& col_index, const c10::optional<at::Tensor>& bias,
                     c10::string_view activation_name);
}  // namespace bsr

namespace attn {

// One call of the decoding attention kernel, checked as pyprune_C::masked_attention checks it, its
// (batch, queries, heads * head_dim) output allocated. The inputs are read when run() is, not before.
class PreparedAttention {
 public:
  PreparedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const c10::optional<at::Tensor>& key_valid, int64_t prefix, double scale);
  int64_t pairs() const { return out_.numel() > 0 ? pairs_ : 0; }  // (batch, head) pairs: the units of work
  int64_t scratch_floats() const { return scratch_; }              // per concurrent caller of run()
  int64_t grain() const { return grain_; }                         // pairs per thread worth a second one
  void run(int64_t first, int64_t last, float* scratch) const;     // pairs [first, last)
  const at::Tensor& output() const { return out_; }

 private:
  at::Tensor q_, k_, v_, valid_, out_;
  int64_t pairs_ = 0, scratch_ = 0, grain_ = 1;
  bool bf16_ = false;
  Attention f32_{};
  AttentionBf16 b16_{};
};

// pyprune_C::masked_attention on the CPU (attention_cpu.cpp): a PreparedAttention run in parallel.
at::Tensor attention_op(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                        const c10::optional<at::Tensor>& key_valid, int64_t prefix, double scale);
}  // namespace attn
}  // namespace pyprune
