// CPU registration of the decoding attention kernel (inference), parallel over (batch, head) pairs once a
// call has enough work to pay for a second thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../attention/attention_core.h"
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

at::Tensor attention_op(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
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
  at::Tensor valid;
  if (key_valid) {
    TORCH_CHECK(key_valid->device().is_cpu() && key_valid->scalar_type() == at::kBool && key_valid->dim() == 2 &&
                    key_valid->size(0) == B && key_valid->size(1) == K,
                "pyprune_C.masked_attention: key_valid must be a (batch, keys) bool CPU tensor");
    valid = key_valid->contiguous();
  }
  // Features must be contiguous; any other strides are read in place.
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const at::Tensor v = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  at::Tensor out = at::empty({B, Q, H * D}, q.options());
  if (out.numel() == 0) return out;
  const at::Tensor* vp = key_valid ? &valid : nullptr;
  const int64_t grain = std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, Q * (K + 1) * D));
  const int64_t floats = scratch_floats(K, D);
  auto run = [&](auto p, auto heads) {
    at::parallel_for(0, B * H, grain, [&](int64_t first, int64_t last) {
      std::vector<float> scratch(floats);
      heads(p, first, last, scratch.data());
    });
  };
  if (dtype == at::kFloat)
    run(problem<float>(q, k, v, vp, prefix, scale, out), attention_heads);
  else
    run(problem<uint16_t>(q, k, v, vp, prefix, scale, out), attention_heads_bf16);
  return out;
}

TORCH_LIBRARY_IMPL(pyprune_C, CPU, m) { m.impl("masked_attention", &attention_op); }

}  // namespace attn
}  // namespace pyprune
