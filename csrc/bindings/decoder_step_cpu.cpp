// pyprune_C::decoder_step on the CPU: one greedy decoding step of the AR baseline's pre-LayerNorm
// Transformer decoder (pyprune.deer.baseline._Block, every layer) on packed weights, in one call: per
// layer, LayerNorm, self-attention over the cached keys and values plus the new token's, residual,
// LayerNorm, cross-attention over the encoded source, residual, LayerNorm, FFN with the GELU in its first
// layer's epilogue, residual. The same ops in the same order as the Python block on packed linears and
// the decoding attention kernel, so the same results; what it removes is the Python and the dispatch
// between them, which were half the baseline's decoding time at batch 1 (scripts/deer_profile.py
// --autoregressive). It is what pyprune_C::bert_layers is to DEER's encoder passes: the baseline's steps
// and DEER's passes both run as one call each.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "layer_parts.h"

namespace pyprune {
namespace layer {
namespace {

constexpr const char* kOp = "pyprune_C.decoder_step";
// A layer's weights: 8 packed linears (self-attention query, key, value, output; cross-attention query,
// output; FFN in, with the GELU; FFN out), four tensors each, then 3 LayerNorms' weight and bias (before
// the self-attention, the cross-attention, the FFN).
constexpr int64_t kLinears = 8;
constexpr int64_t kWeights = 4 * kLinears + 6;

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> decoder_step(
    const at::Tensor& x_in, at::TensorList self_k, at::TensorList self_v, at::TensorList cross_k,
    at::TensorList cross_v, const c10::optional<at::Tensor>& cross_valid, at::TensorList weights,
    at::IntArrayRef heads, at::ArrayRef<double> eps) {
  const int64_t count = static_cast<int64_t>(weights.size()) / kWeights;
  TORCH_CHECK(count > 0 && static_cast<int64_t>(weights.size()) == count * kWeights, kOp, ": weights must hold ",
              kWeights, " tensors a layer (blocks, row_ptr, col_index, bias of 8 packed linears, then 3 "
              "LayerNorms' weight and bias), got ", weights.size());
  TORCH_CHECK(static_cast<int64_t>(heads.size()) == count && static_cast<int64_t>(eps.size()) == count, kOp,
              ": heads and eps must hold one value a layer (", count, "), got ", heads.size(), " and ",
              eps.size());
  TORCH_CHECK(self_k.size() == self_v.size() && (self_k.empty() || static_cast<int64_t>(self_k.size()) == count),
              kOp, ": self_k and self_v must hold one tensor a layer (", count, "), or none before the first "
              "step, got ", self_k.size(), " and ", self_v.size());
  TORCH_CHECK(static_cast<int64_t>(cross_k.size()) == count && static_cast<int64_t>(cross_v.size()) == count, kOp,
              ": cross_k and cross_v must hold one tensor a layer (", count, "), got ", cross_k.size(), " and ",
              cross_v.size());
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK(x_in.device().is_cpu() && (dtype == at::kFloat || dtype == at::kBFloat16) && x_in.dim() == 3 &&
                  x_in.size(1) == 1,
              kOp, ": x must be a (batch, 1, hidden) float32 or bfloat16 CPU tensor (one new token a row), got ",
              x_in.scalar_type(), " ", x_in.sizes(), " on ", x_in.device());
  const int64_t B = x_in.size(0), H = x_in.size(2);
  at::Tensor x = x_in.reshape({B, H});
  std::vector<at::Tensor> keys, values;
  for (int64_t i = 0; i < count; ++i) {
    const at::TensorList w = weights.slice(i * kWeights, kWeights);
    std::vector<Packed> linear;
    for (int64_t j = 0; j < kLinears; ++j)
      linear.push_back(Packed{w[4 * j], w[4 * j + 1], w[4 * j + 2], w[4 * j + 3]});
    const int64_t inner = linear[0].out_features();
    TORCH_CHECK(heads[i] > 0 && inner % heads[i] == 0 && linear[1].out_features() == inner &&
                    linear[2].out_features() == inner && linear[4].out_features() == inner,
                kOp, ": the queries, keys and values of layer ", i, " must have one width, a multiple of its heads");
    TORCH_CHECK(linear[3].out_features() == H && linear[5].out_features() == H && linear[7].out_features() == H,
                kOp, ": the attention outputs and FFN out of layer ", i, " must give hidden (", H, ") features");
    TORCH_CHECK(std::isfinite(eps[i]) && eps[i] >= 0, kOp, ": eps must be finite and non-negative");
    const int64_t D = inner / heads[i];
    check_heads(kOp, "cross_k and cross_v", cross_k[i], cross_v[i], B, heads[i], D, dtype);
    if (!self_k.empty()) check_heads(kOp, "self_k and self_v", self_k[i], self_v[i], B, heads[i], D, dtype);
    // Python's q.shape[-1] ** -0.5, the same double.
    const double scale = std::pow(static_cast<double>(D), -0.5);
    auto as_heads = [&](const at::Tensor& t) { return t.view({B, 1, heads[i], D}).transpose(1, 2); };

    const at::Tensor h = at::layer_norm(x, {H}, w[32], w[33], eps[i]);
    const at::Tensor k = as_heads(linear[1](h)), v = as_heads(linear[2](h));
    keys.push_back(self_k.empty() ? k : join_keys(self_k[i], k));
    values.push_back(self_k.empty() ? v : join_keys(self_v[i], v));
    const at::Tensor context = attn::attention_op(as_heads(linear[0](h)), keys.back(), values.back(),
                                                  c10::nullopt, 0, scale);
    at::Tensor attended = linear[3](context.view({B, inner}));
    add_residual(attended, x);
    const at::Tensor q = as_heads(linear[4](at::layer_norm(attended, {H}, w[34], w[35], eps[i])));
    const at::Tensor crossed_context = attn::attention_op(q, cross_k[i], cross_v[i], cross_valid, 0, scale);
    at::Tensor crossed = linear[5](crossed_context.view({B, inner}));
    add_residual(crossed, attended);
    x = linear[7](linear[6](at::layer_norm(crossed, {H}, w[36], w[37], eps[i]), "gelu"));
    add_residual(x, crossed);
  }
  return {x.view({B, 1, H}), keys, values};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_C, CPU, m) { m.impl("decoder_step", &decoder_step); }

}  // namespace layer
}  // namespace pyprune
