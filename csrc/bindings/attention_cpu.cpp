// CPU registration of the decoding attention kernel (inference), parallel over (batch, head) pairs once a
// call has enough work to pay for a second thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "cpu_ops.h"

namespace pyprune {
namespace attn {
namespace {

// Below this many multiply-adds per chunk of pairs, one thread does the call.
constexpr int64_t kMinWork = 32768;

template <typename T>
AttentionOf<T> problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor* valid,
                       int64_t prefix, double scale, at::Tensor& out) {
  auto data = [](const at::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); };
  return AttentionOf<T>{data(q), q.stride(0), q.stride(1), q.stride(2),
                        data(k), k.stride(0), k.stride(1), k.stride(2),
                        data(v), v.stride(0), v.stride(1), v.stride(2),
                        valid ? reinterpret_cast<const uint8_t*>(valid->data_ptr<bool>()) : nullptr,
                        valid ? valid->stride(0) : 0,
                        q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), prefix, static_cast<float>(scale),
                        reinterpret_cast<T*>(out.data_ptr())};
}

}  // namespace

PreparedAttention::PreparedAttention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                     const c10::optional<at::Tensor>& key_valid, int64_t prefix, double scale) {
  const auto dtype = q_in.scalar_type();
  TORCH_CHECK(q_in.device().is_cpu() && (dtype == at::kFloat || dtype == at::kBFloat16) && q_in.dim() == 4,
              "pyprune_C.masked_attention: q must be a (batch, heads, queries, head_dim) float32 or bfloat16 "
              "CPU tensor");
  for (const at::Tensor* t : {&k_in, &v_in})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype && t->dim() == 4,
                "pyprune_C.masked_attention: k and v must be 4-D CPU tensors of q's dtype");
  const int64_t B = q_in.size(0), H = q_in.size(1), Q = q_in.size(2), D = q_in.size(3), K = k_in.size(2);
  TORCH_CHECK(k_in.size(0) == B && k_in.size(1) == H && k_in.size(3) == D && v_in.sizes() == k_in.sizes(),
              "pyprune_C.masked_attention: k and v must be (batch, heads, keys, head_dim) like q");
  TORCH_CHECK(prefix >= 0 && prefix <= K, "pyprune_C.masked_attention: prefix must be in [0, keys]");
  TORCH_CHECK(std::isfinite(scale), "pyprune_C.masked_attention: scale must be finite");
  if (key_valid) {
    TORCH_CHECK(key_valid->device().is_cpu() && key_valid->scalar_type() == at::kBool && key_valid->dim() == 2 &&
                    key_valid->size(0) == B && key_valid->size(1) == K,
                "pyprune_C.masked_attention: key_valid must be a (batch, keys) bool CPU tensor");
    valid_ = key_valid->contiguous();
  }
  // Features must be contiguous; any other strides are read in place.
  q_ = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  k_ = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  v_ = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  out_ = at::empty({B, Q, H * D}, q_.options());
  pairs_ = B * H;
  grain_ = std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, Q * (K + 1) * D));
  scratch_ = attn::scratch_floats(K, D);
  if (out_.numel() == 0) return;
  const at::Tensor* vp = key_valid ? &valid_ : nullptr;
  bf16_ = dtype == at::kBFloat16;
  if (bf16_)
    b16_ = problem<uint16_t>(q_, k_, v_, vp, prefix, scale, out_);
  else
    f32_ = problem<float>(q_, k_, v_, vp, prefix, scale, out_);
}

void PreparedAttention::run(int64_t first, int64_t last, float* scratch) const {
  if (out_.numel() == 0) return;
  if (bf16_)
    attention_heads_bf16(b16_, first, last, scratch);
  else
    attention_heads(f32_, first, last, scratch);
}

at::Tensor attention_op(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                        const c10::optional<at::Tensor>& key_valid, int64_t prefix, double scale) {
  const PreparedAttention call(q_in, k_in, v_in, key_valid, prefix, scale);
  at::parallel_for(0, call.pairs(), call.grain(), [&](int64_t first, int64_t last) {
    std::vector<float> scratch(call.scratch_floats());
    call.run(first, last, scratch.data());
  });
  return call.output();
}

TORCH_LIBRARY_IMPL(pyprune_C, CPU, m) { m.impl("masked_attention", &attention_op); }

}  // namespace attn
}  // namespace pyprune
