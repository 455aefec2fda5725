// pyprune_C::bert_layer on the CPU: one BERT-family encoder layer for decoding, on packed weights, in one
// call. The same computation as pyprune.deer.model._layer on packed layers (q/k/v projections, the
// decoding attention kernel, output projection, residual + LayerNorm, FFN with the GELU in its first
// layer's epilogue, residual + LayerNorm), op by op in the same order, so the results are the same;
// what it removes is the Python between the ops, and the generic at::cat and at::add around them (the
// cached keys' join and the residual sums are plain loops here): scripts/bert_layer_timing.py times one
// layer against the same layer as Python ops, scripts/deer_fused_layer_ab.py whole decoding.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "../sparse/block_sparse_core.h"
#include "cpu_ops.h"

namespace pyprune {
namespace layer {
namespace {

constexpr int64_t kLinears = 6;  // query, key, value, attention output, FFN in, FFN out
constexpr int64_t kWeights = 4 * kLinears + 4;

struct Packed {
  const at::Tensor &blocks, &row_ptr, &col_index, &bias;
  int64_t out_features() const { return (row_ptr.numel() - 1) * bsr::kBlock; }
  at::Tensor operator()(const at::Tensor& x, c10::string_view activation = "none") const {
    return bsr::linear_op(x, blocks, row_ptr, col_index, bias, activation);
  }
};

// at::cat({prefix, own}, 2) for (batch, heads, rows, head_dim) CPU tensors of one dtype (bert_layer checks
// them) with contiguous features: a new contiguous tensor, filled by one copy per row.
at::Tensor join_keys(const at::Tensor& prefix, const at::Tensor& own) {
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
void add_residual(at::Tensor& x, const at::Tensor& residual_in) {
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
  if (prefix_k) {
    TORCH_CHECK(prefix_k->dim() == 4 && prefix_k->size(0) == B && prefix_k->size(1) == heads &&
                    prefix_k->size(3) == D && prefix_v->sizes() == prefix_k->sizes(),
                "pyprune_C.bert_layer: prefix_k and prefix_v must be (batch, heads, keys, head_dim)");
    for (const at::Tensor* t : {&*prefix_k, &*prefix_v})
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == kv_in.scalar_type(),
                  "pyprune_C.bert_layer: prefix_k and prefix_v must be CPU tensors of kv_in's dtype (",
                  kv_in.scalar_type(), "), got ", t->scalar_type(), " on ", t->device());
  }

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

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_C, CPU, m) { m.impl("bert_layer", &bert_layer); }

}  // namespace layer
}  // namespace pyprune
