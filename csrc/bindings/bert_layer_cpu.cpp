// pyprune_C::bert_layer on the CPU: one BERT-family encoder layer for decoding, on packed weights, in one
// call. The same computation as pyprune.deer.model._layer on packed layers (q/k/v projections, the
// decoding attention kernel, output projection, residual + LayerNorm, FFN with the GELU in its first
// layer's epilogue, residual + LayerNorm), op by op in the same order, so the results are the same;
// what it removes is the Python between the ops, and the generic at::cat and at::add around them (the
// cached keys' join and the residual sums are plain loops here): scripts/bert_layer_timing.py times one
// layer against the same layer as Python ops, scripts/deer_fused_layer_ab.py whole decoding.
// pyprune_C::bert_layers runs a whole pass over the layers in one call (the Python per layer, the dispatch
// of its 28 weights and the key slices gone too): DEER's passes use it where every layer fuses
// (scripts/deer_layer_loop_ab.py times it against layer by layer).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "layer_parts.h"

namespace pyprune {
namespace layer {
namespace {

constexpr int64_t kLinears = 6;  // query, key, value, attention output, FFN in, FFN out
constexpr int64_t kWeights = 4 * kLinears + 4;

std::tuple<at::Tensor, at::Tensor, at::Tensor> bert_layer(
    const at::Tensor& kv_in, const at::Tensor& q_in, const c10::optional<at::Tensor>& prefix_k,
    const c10::optional<at::Tensor>& prefix_v, const c10::optional<at::Tensor>& key_valid, int64_t source_rows,
    at::TensorList weights, int64_t heads, double eps) {
  TORCH_CHECK(kv_in.dim() == 3 && q_in.dim() == 3 && kv_in.size(0) == q_in.size(0) &&
                  kv_in.size(2) == q_in.size(2) && kv_in.scalar_type() == q_in.scalar_type(),
              "pyprune_C.bert_layer: kv_in and q_in must be (batch, rows, hidden) tensors of one batch, hidden "
              "size and dtype");
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == kWeights, "pyprune_C.bert_layer: weights must hold ",
              kWeights, " tensors (blocks, row_ptr, col_index, bias of 6 packed linears, then 2 LayerNorms' "
              "weight and bias), got ", weights.size());
  std::vector<Packed> linear;
  for (int64_t i = 0; i < kLinears; ++i)
    linear.push_back(Packed{weights[4 * i], weights[4 * i + 1], weights[4 * i + 2], weights[4 * i + 3]});
  const int64_t B = q_in.size(0), Tq = q_in.size(1), Tk = kv_in.size(1), H = q_in.size(2);
  const int64_t inner = linear[0].out_features();
  TORCH_CHECK(heads > 0 && inner % heads == 0 && linear[1].out_features() == inner &&
                  linear[2].out_features() == inner,
              "pyprune_C.bert_layer: query, key and value must have one width, a multiple of heads");
  TORCH_CHECK(linear[3].out_features() == H && linear[5].out_features() == H,
              "pyprune_C.bert_layer: the attention output and FFN out layers must give hidden (", H, ") features");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "pyprune_C.bert_layer: eps must be finite and non-negative");
  const int64_t D = inner / heads;
  TORCH_CHECK(prefix_k.has_value() == prefix_v.has_value(),
              "pyprune_C.bert_layer: prefix_k and prefix_v come together");
  if (prefix_k)
    check_heads("pyprune_C.bert_layer", "prefix_k and prefix_v", *prefix_k, *prefix_v, B, heads, D,
                kv_in.scalar_type());

  auto as_heads = [&](const at::Tensor& x, int64_t rows) { return x.view({B, rows, heads, D}).transpose(1, 2); };
  const at::Tensor kv_rows = kv_in.reshape({B * Tk, H});
  const at::Tensor k = as_heads(linear[1](kv_rows), Tk), v = as_heads(linear[2](kv_rows), Tk);
  const at::Tensor keys = prefix_k ? join_keys(*prefix_k, k) : k;
  const at::Tensor values = prefix_k ? join_keys(*prefix_v, v) : v;
  const at::Tensor q_rows = q_in.reshape({B * Tq, H});
  const at::Tensor q = as_heads(linear[0](q_rows), Tq);
  const at::Tensor context = attn::attention_op(q, keys, values, key_valid, source_rows, 1.0 / std::sqrt(double(D)));
  at::Tensor attended = linear[3](context.view({B * Tq, inner}));
  add_residual(attended, q_rows);
  const at::Tensor a = at::layer_norm(attended, {H}, weights[24], weights[25], eps);
  at::Tensor ffn = linear[5](linear[4](a, "gelu"));
  add_residual(ffn, a);
  const at::Tensor out = at::layer_norm(ffn, {H}, weights[26], weights[27], eps);
  return {out.view({B, Tq, H}), k, v};
}

// A whole pass over the layers whose weights `weights` holds (kWeights a layer; `heads` and `eps` one a
// layer) in one call: each layer's output rows are the next one's input, with `prefix_k[i]`, `prefix_v[i]`
// (none, or one pair a layer) as layer i's cached keys and values. The first `source_rows` rows are source
// rows (see masked_attention). The last layer computes only the rows from `last_queries` on (the rows
// before it feed nothing but the keys and values it computes anyway). Returns (those rows' states, then
// each layer's keys and values cut to the first `keep_keys` rows: none where it is 0).
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> bert_layers(
    const at::Tensor& h_in, at::TensorList prefix_k, at::TensorList prefix_v,
    const c10::optional<at::Tensor>& key_valid, int64_t source_rows, int64_t last_queries, int64_t keep_keys,
    at::TensorList weights, at::IntArrayRef heads, at::ArrayRef<double> eps) {
  const int64_t count = static_cast<int64_t>(weights.size()) / kWeights;
  TORCH_CHECK(count > 0 && static_cast<int64_t>(weights.size()) == count * kWeights,
              "pyprune_C.bert_layers: weights must hold ", kWeights, " tensors a layer (see bert_layer), got ",
              weights.size());
  TORCH_CHECK(static_cast<int64_t>(heads.size()) == count && static_cast<int64_t>(eps.size()) == count,
              "pyprune_C.bert_layers: heads and eps must hold one value a layer (", count, "), got ", heads.size(),
              " and ", eps.size());
  TORCH_CHECK(prefix_k.size() == prefix_v.size() &&
                  (prefix_k.empty() || static_cast<int64_t>(prefix_k.size()) == count),
              "pyprune_C.bert_layers: prefix_k and prefix_v must hold one tensor a layer (", count,
              ") or none, got ", prefix_k.size(), " and ", prefix_v.size());
  TORCH_CHECK(h_in.dim() == 3, "pyprune_C.bert_layers: h must be a (batch, rows, hidden) tensor, got ",
              h_in.dim(), " dimensions");
  const int64_t rows = h_in.size(1);
  TORCH_CHECK(last_queries >= 0 && last_queries < rows, "pyprune_C.bert_layers: last_queries must be in [0, ",
              rows, ") (the rows of h), got ", last_queries);
  TORCH_CHECK(keep_keys >= 0 && keep_keys <= rows, "pyprune_C.bert_layers: keep_keys must be in [0, ", rows,
              "] (the rows of h), got ", keep_keys);
  at::Tensor h = h_in;
  std::vector<at::Tensor> keys, values;
  for (int64_t i = 0; i < count; ++i) {
    const bool last = i + 1 == count;
    const at::Tensor q = last ? h.slice(1, last_queries) : h;
    const int64_t source = last ? std::max<int64_t>(source_rows - last_queries, 0) : source_rows;
    c10::optional<at::Tensor> pk, pv;
    if (!prefix_k.empty()) {
      pk = prefix_k[i];
      pv = prefix_v[i];
    }
    auto out =
        bert_layer(h, q, pk, pv, key_valid, source, weights.slice(i * kWeights, kWeights), heads[i], eps[i]);
    if (keep_keys > 0) {
      keys.push_back(std::get<1>(out).slice(2, 0, keep_keys));
      values.push_back(std::get<2>(out).slice(2, 0, keep_keys));
    }
    h = std::get<0>(out);
  }
  return {h, keys, values};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_C, CPU, m) {
  m.impl("bert_layer", &bert_layer);
  m.impl("bert_layers", &bert_layers);
}

}  // namespace layer
}  // namespace pyprune
