// pyprune_C::bert_layer on the CPU: one BERT-family encoder layer for decoding, on packed weights, in one
// call. The same computation as pyprune.deer.model._layer on packed layers (q/k/v projections, the
// decoding attention kernel, output projection, residual + LayerNorm, FFN with the GELU in its first
// layer's epilogue, residual + LayerNorm), op by op in the same order on the same kernels, so the
// results are the same bits; what it removes is the Python between the ops (at an edit pass's ~17 rows a
// bfloat16 layer took 332 us against 242 us of its kernels, a throwaway timing; whole decoding:
// scripts/deer_fused_layer_ab.py), and then most of what ATen adds around them at those sizes:
// - every call is checked and every output allocated first (bsr::PreparedLinear, attn::PreparedAttention),
//   then the layer runs as seven stages in one parallel region with barriers between them, where a
//   region per op cost its start and end each time;
// - the cached keys' join and the residual sums are plain loops, not at::cat and at::add (~10 and ~5 us
//   a call at those sizes, torch's profiler, a throwaway run, for a copy and an add of a few thousand
//   elements); the LayerNorms stay at::layer_norm, on each thread's share of the rows.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/util/BFloat16.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_ops.h"

namespace pyprune {
namespace layer {
namespace {

constexpr int64_t kLinears = 6;  // query, key, value, attention output, FFN in, FFN out
constexpr int64_t kWeights = 4 * kLinears + 4;

// One packed linear's four weight tensors.
struct Packed {
  const at::Tensor &blocks, &row_ptr, &col_index, &bias;
  int64_t out_features() const { return (row_ptr.numel() - 1) * 32; }
  bsr::PreparedLinear prepare(const at::Tensor& x, c10::string_view activation = "none") const {
    return bsr::PreparedLinear(x, blocks, row_ptr, col_index, bias, activation);
  }
};

// [n * first / workers, n * last / workers): the share of n units of work of workers [first, last).
std::pair<int64_t, int64_t> share(int64_t n, int64_t first, int64_t last, int64_t workers) {
  return {n * first / workers, n * last / workers};
}

// Stage barriers for `workers` virtual workers in one parallel region. A participant stands for one or
// more workers (at::parallel_for hands a thread a range of them, or one thread all); stage s is done
// when workers x (s + 1) have arrived, counted once, so nothing is reset between stages. A participant
// that fails marks it, and the others stop waiting instead of waiting for it forever.
class Stages {
 public:
  explicit Stages(int64_t workers) : workers_(workers) {}
  // After this participant's share of `stage`: waits for everyone's; false when a participant failed.
  bool done(int64_t stage, int64_t weight) {
    arrived_.fetch_add(weight, std::memory_order_acq_rel);
    const int64_t target = workers_ * (stage + 1);
    // Spin briefly (the others are usually microseconds away), then yield: with more threads than cores
    // the one being waited for may need this core.
    for (int64_t spins = 0; arrived_.load(std::memory_order_acquire) < target; ++spins) {
      if (failed_.load(std::memory_order_relaxed)) return false;
#if defined(__x86_64__)
      if (spins < kSpins) {
        _mm_pause();
        continue;
      }
#endif
      std::this_thread::yield();
    }
    return !failed_.load(std::memory_order_relaxed);
  }
  void fail() { failed_.store(true, std::memory_order_relaxed); }

 private:
  static constexpr int64_t kSpins = 4096;  // pauses before yielding (a pause is tens to ~150 cycles, by core)
  const int64_t workers_;
  std::atomic<int64_t> arrived_{0};
  std::atomic<bool> failed_{false};
};

// Copies the rows of (batch, head) pair `pair` of the (batch, heads, rows, head_dim) `part`, whose
// features are contiguous, to `dst`, one copy per row; returns the end of what it wrote.
char* copy_rows(const at::Tensor& part, int64_t pair, char* dst) {
  const int64_t heads = part.size(1), b = pair / heads, h = pair % heads, size = part.element_size();
  const int64_t bytes = part.size(3) * size;
  const char* src = static_cast<const char*>(part.data_ptr()) + (b * part.stride(0) + h * part.stride(1)) * size;
  for (int64_t r = 0; r < part.size(2); ++r, dst += bytes) std::memcpy(dst, src + r * part.stride(2) * size, bytes);
  return dst;
}

// y[i] += r[i] for n elements: float32 sums, or bfloat16 ones computed in float32 and rounded to the
// nearest bfloat16, ties to even: the values at::add gives.
void add_rows(at::ScalarType dtype, void* y, const void* r, int64_t n) {
  if (dtype == at::kFloat) {
    float* out = static_cast<float*>(y);
    const float* in = static_cast<const float*>(r);
    for (int64_t i = 0; i < n; ++i) out[i] += in[i];
    return;
  }
  auto* out = static_cast<c10::BFloat16*>(y);
  const auto* in = static_cast<const c10::BFloat16*>(r);
  for (int64_t i = 0; i < n; ++i) out[i] = c10::BFloat16(static_cast<float>(out[i]) + static_cast<float>(in[i]));
}

// Rows [first, last) of `out` = LayerNorm(x + residual) of the same rows (x is overwritten with the
// sum): the sum as add_rows, the norm by at::layer_norm itself, so the same values as the Python layer
// (a LayerNorm's rows are independent, so a share of the rows gives what the whole does).
void residual_norm_rows(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                        const at::Tensor& bias, double eps, const at::Tensor& out, int64_t first, int64_t last) {
  if (last <= first) return;
  const int64_t H = x.size(1), size = x.element_size();
  add_rows(x.scalar_type(), static_cast<char*>(x.data_ptr()) + first * H * size,
           static_cast<const char*>(residual.data_ptr()) + first * H * size, (last - first) * H);
  const at::Tensor normed = at::layer_norm(x.narrow(0, first, last - first), {H}, weight, bias, eps).contiguous();
  std::memcpy(static_cast<char*>(out.data_ptr()) + first * H * size, normed.data_ptr(), (last - first) * H * size);
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
  for (int64_t i = 4 * kLinears; i < kWeights; ++i)
    TORCH_CHECK(weights[i].device().is_cpu() && weights[i].scalar_type() == kv_in.scalar_type() &&
                    weights[i].dim() == 1 && weights[i].size(0) == H,
                "pyprune_C.bert_layer: the LayerNorms' weights and biases must be (hidden,) CPU tensors of the "
                "rows' dtype");
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
  const int64_t P = prefix_k ? prefix_k->size(2) : 0;

  // Every call checked and every output allocated before the parallel region (nothing in it has an
  // argument left to reject); its stages then fill them in order.
  auto as_heads = [&](const at::Tensor& x, int64_t rows) { return x.view({B, rows, heads, D}).transpose(1, 2); };
  const at::Tensor kv_rows = kv_in.reshape({B * Tk, H}), q_rows = q_in.reshape({B * Tq, H}).contiguous();
  const bsr::PreparedLinear key = linear[1].prepare(kv_rows), value = linear[2].prepare(kv_rows),
                            query = linear[0].prepare(q_rows);
  const at::Tensor k = as_heads(key.output(), Tk), v = as_heads(value.output(), Tk);
  // With cached keys and values: theirs then the layer's own, (batch, heads, keys, head_dim), joined per
  // pair in the attention stage (what at::cat gave).
  std::array<at::Tensor, 2> own = {k, v}, prefix, joined = {k, v};
  if (prefix_k) {
    prefix = {prefix_k->stride(3) == 1 ? *prefix_k : prefix_k->contiguous(),
              prefix_v->stride(3) == 1 ? *prefix_v : prefix_v->contiguous()};
    for (auto& t : joined) t = at::empty({B, heads, P + Tk, D}, kv_in.options());
  }
  const attn::PreparedAttention attention(as_heads(query.output(), Tq), joined[0], joined[1], key_valid,
                                          source_rows, 1.0 / std::sqrt(double(D)));
  const bsr::PreparedLinear output = linear[3].prepare(attention.output().view({B * Tq, inner}));
  const at::Tensor a = at::empty({B * Tq, H}, q_rows.options()), out = at::empty({B * Tq, H}, q_rows.options());
  const bsr::PreparedLinear ffn_in = linear[4].prepare(a, "gelu");
  const bsr::PreparedLinear ffn_out = linear[5].prepare(ffn_in.output());

  // The stages, each split among `workers` virtual workers (a participant runs the share of workers
  // [first, last)); each needs the previous one's outputs.
  const int64_t workers = std::max<int64_t>(1, at::get_num_threads());
  const int64_t rows = B * Tq, qkv = key.block_rows() + value.block_rows() + query.block_rows();
  constexpr int kStages = 7;
  auto run_stage = [&](int stage, int64_t first, int64_t last) {
    switch (stage) {
      case 0: {  // q, k and v: their block rows as one range
        auto [lo, hi] = share(qkv, first, last, workers);
        for (const bsr::PreparedLinear* call : {&key, &value, &query}) {
          const int64_t n = call->block_rows();
          if (lo < n && hi > 0) call->run(std::max<int64_t>(lo, 0), std::min(hi, n));
          lo -= n;
          hi -= n;
        }
        return;
      }
      case 1: {  // attention per (batch, head) pair, after joining its cached and own keys and values
        const auto [lo, hi] = share(attention.pairs(), first, last, workers);
        if (hi <= lo) return;
        if (prefix_k) {
          for (int i = 0; i < 2; ++i) {
            char* base = static_cast<char*>(joined[i].data_ptr());
            const int64_t pair_bytes = (P + Tk) * D * joined[i].element_size();
            for (int64_t pair = lo; pair < hi; ++pair)
              copy_rows(own[i], pair, copy_rows(prefix[i], pair, base + pair * pair_bytes));
          }
        }
        std::vector<float> scratch(attention.scratch_floats());
        attention.run(lo, hi, scratch.data());
        return;
      }
      case 2: {
        const auto [lo, hi] = share(output.block_rows(), first, last, workers);
        return output.run(lo, hi);
      }
      case 3: {
        const auto [lo, hi] = share(rows, first, last, workers);
        return residual_norm_rows(output.output(), q_rows, weights[24], weights[25], eps, a, lo, hi);
      }
      case 4: {
        const auto [lo, hi] = share(ffn_in.block_rows(), first, last, workers);
        return ffn_in.run(lo, hi);
      }
      case 5: {
        const auto [lo, hi] = share(ffn_out.block_rows(), first, last, workers);
        return ffn_out.run(lo, hi);
      }
      default: {
        const auto [lo, hi] = share(rows, first, last, workers);
        return residual_norm_rows(ffn_out.output(), a, weights[26], weights[27], eps, out, lo, hi);
      }
    }
  };
  const at::ThreadLocalState state;  // the caller's (inference mode, dispatch keys), for every thread
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
#if AT_PARALLEL_OPENMP
  // One parallel region, its stages separated by barriers, in place of a region per op: at an edit
  // pass's 17 rows a bfloat16 layer 1-11% faster, ~6% on average (a throwaway timing of the raw op, four
  // processes each way alternating with the previous build; at 53 rows no difference beyond noise, and
  // none that whole decoding resolves). Only where OpenMP runs the region's threads
  // together (a thread pool might run a second chunk after the first returned, which would wait at a
  // barrier forever) and each has a core: oversubscribed, a waiting thread takes the core of the one it
  // waits for, and a region per stage is faster.
  const bool together = workers <= cores;
#else
  const bool together = false;
#endif
  if (together) {
    Stages barrier(workers);
    at::parallel_for(0, workers, 1, [&](int64_t first, int64_t last) {
      at::ThreadLocalStateGuard guard(state);
      try {
        for (int stage = 0; stage < kStages; ++stage) {
          run_stage(stage, first, last);
          if (stage + 1 < kStages && !barrier.done(stage, last - first)) return;
        }
      } catch (...) {
        barrier.fail();
        throw;
      }
    });
  } else {
    for (int stage = 0; stage < kStages; ++stage) {
      at::parallel_for(0, workers, 1, [&](int64_t first, int64_t last) {
        at::ThreadLocalStateGuard guard(state);
        run_stage(stage, first, last);
      });
    }
  }
  return {out.view({B, Tq, H}), k, v};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_C, CPU, m) { m.impl("bert_layer", &bert_layer); }

}  // namespace layer
}  // namespace pyprune
