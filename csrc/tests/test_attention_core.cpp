// Native tests of the decoding attention core against a double-precision
// softmax over the visible keys: head sizes on and off the 16-lane width,
// key counts on and off it (and none), query rows in both layouts
// ((batch, heads, rows, dim) and (batch, rows, heads, dim)) with row strides
// wider than the features, random key-padding masks that leave some rows
// nothing to see, the prefix rule, a range of (batch, head) pairs alone,
// float32 and bfloat16 (whose outputs must be the exact result rounded once,
// up to float32 summation error), and NaN propagation.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"

#include "../attention/attention_core.h"
#include "../common/fast_math.h"

using namespace pyprune::attn;

static float value_of(float v) { return v; }
static float value_of(uint16_t h) { return pyprune::bf16_to_float(h); }
static void make(float v, float& out) { out = v; }
static void make(float v, uint16_t& out) { out = pyprune::float_to_bf16(v); }
static void run(const Attention& p, int64_t first, int64_t last, float* s) { attention_heads(p, first, last, s); }
static void run(const AttentionBf16& p, int64_t first, int64_t last, float* s) {
  attention_heads_bf16(p, first, last, s);
}

struct Case {
  int64_t batch, heads, queries, keys, dim, prefix;
  bool heads_outer;   // q/k/v as (batch, heads, rows, dim), else (batch, rows, heads, dim)
  int64_t row_pad;    // extra elements after each row's features
  double valid;       // probability that a key is valid (1: no mask at all)
};

// Strides (batch, head, row) of a (batch, heads, rows, dim) view over storage laid out as the case says.
static void strides(const Case& c, int64_t rows, int64_t out[3]) {
  if (c.heads_outer) {
    out[2] = c.dim + c.row_pad;
    out[1] = rows * out[2];
    out[0] = c.heads * out[1];
  } else {
    out[1] = c.dim + c.row_pad;
    out[2] = c.heads * out[1];
    out[0] = rows * out[2];
  }
}

template <typename T>
static void run_case(const Case& c, std::mt19937& gen) {
  std::uniform_real_distribution<float> value(-2.f, 2.f);
  std::bernoulli_distribution valid_key(c.valid);
  int64_t qs[3], ks[3];
  strides(c, c.queries, qs);
  strides(c, c.keys, ks);
  std::vector<T> q(std::max<int64_t>(1, c.batch * qs[0])), k(std::max<int64_t>(1, c.batch * ks[0])),
      v(std::max<int64_t>(1, c.batch * ks[0]));
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) make(value(gen), x);
  std::vector<uint8_t> valid(std::max<int64_t>(1, c.batch * c.keys), 1);
  if (c.valid < 1)
    for (auto& x : valid) x = valid_key(gen);
  const float scale = 1.f / std::sqrt(float(c.dim));
  const T sentinel = [] { T t; make(12345.f, t); return t; }();
  std::vector<T> out(std::max<int64_t>(1, c.batch * c.queries * c.heads * c.dim), sentinel);
  const AttentionOf<T> p{q.data(), qs[0], qs[1], qs[2], k.data(), ks[0], ks[1], ks[2], v.data(), ks[0], ks[1],
                         ks[2], c.valid < 1 ? valid.data() : nullptr, c.keys, c.batch, c.heads, c.queries,
                         c.keys, c.dim, c.prefix, scale, out.data()};
  std::vector<float> scratch(scratch_floats(c.keys, c.dim));
  // Pairs in two ranges, as two threads would split them.
  const int64_t pairs = c.batch * c.heads, split = pairs / 2;
  run(p, 0, split, scratch.data());
  run(p, split, pairs, scratch.data());
  const bool bf16 = sizeof(T) == 2;
  int bad = 0;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.queries; ++i) {
        const int64_t seen = i < c.prefix ? c.prefix : c.keys;
        std::vector<double> w(c.keys, 0.0);
        double m = -INFINITY;
        for (int64_t j = 0; j < seen; ++j) {
          if (!valid[b * c.keys + j] && c.valid < 1) continue;
          double dot = 0;
          for (int64_t d = 0; d < c.dim; ++d)
            dot += double(value_of(q[b * qs[0] + h * qs[1] + i * qs[2] + d])) *
                   double(value_of(k[b * ks[0] + h * ks[1] + j * ks[2] + d]));
          w[j] = dot * scale;
          m = std::max(m, w[j]);
        }
        double total = 0;
        for (int64_t j = 0; j < seen; ++j) {
          const bool on = c.valid >= 1 || valid[b * c.keys + j];
          w[j] = on ? std::exp(w[j] - m) : 0.0;
          total += w[j];
        }
        for (int64_t d = 0; d < c.dim; ++d) {
          double ref = 0;
          for (int64_t j = 0; j < seen; ++j) ref += w[j] * double(value_of(v[b * ks[0] + h * ks[1] + j * ks[2] + d]));
          ref = total > 0 ? ref / total : 0.0;
          const float got = value_of(out[((b * c.queries + i) * c.heads + h) * c.dim + d]);
          // float32: summation and exp error; bfloat16: half an ulp of the output on top.
          const double tol = 2e-5 + (bf16 ? std::fabs(ref) * (1.0 / 256) : 1e-5 * std::fabs(ref));
          if (!(std::fabs(got - ref) <= tol) && bad++ < 3)
            CHECK(false, "%s b=%lld h=%lld i=%lld d=%lld: got %g want %g", bf16 ? "bf16" : "f32", (long long)b,
                  (long long)h, (long long)i, (long long)d, got, ref);
        }
      }
  CHECK(bad == 0, "%d wrong outputs (batch=%lld heads=%lld queries=%lld keys=%lld dim=%lld prefix=%lld)", bad,
        (long long)c.batch, (long long)c.heads, (long long)c.queries, (long long)c.keys, (long long)c.dim,
        (long long)c.prefix);
}

// A NaN in one query row poisons that row only; a row with nothing visible gets zeros.
static void nan_and_empty() {
  const int64_t D = 16, K = 3;
  std::vector<float> q(2 * D, 0.5f), k(K * D, 0.25f), v(K * D, 1.f), out(2 * D, 7.f);
  q[3] = std::numeric_limits<float>::quiet_NaN();
  uint8_t valid[K] = {1, 1, 1};
  const Attention p{q.data(), 0, 0, D, k.data(), 0, 0, D, v.data(), 0, 0, D, valid, K, 1, 1, 2, K, D, 0, 0.25f,
                    out.data()};
  std::vector<float> scratch(scratch_floats(K, D));
  attention_heads(p, 0, 1, scratch.data());
  CHECK(std::isnan(out[0]) && std::isnan(out[D - 1]), "NaN query row gave %g", out[0]);
  CHECK(out[D] == 1.f && out[2 * D - 1] == 1.f, "clean row gave %g (want 1: the mean of equal v rows)", out[D]);
  uint8_t none[K] = {0, 0, 0};
  Attention empty = p;
  empty.key_valid = none;
  attention_heads(empty, 0, 1, scratch.data());
  CHECK(out[0] == 0.f && out[2 * D - 1] == 0.f, "row with no visible key gave %g", out[0]);
}

int main() {
  std::mt19937 gen(7);
  const Case cases[] = {
      {1, 12, 17, 38, 32, 0, true, 0, 0.9},    // DEER's edit pass (decode_target)
      {1, 12, 63, 63, 32, 21, false, 0, 0.9},  // DEER's CTC pass: source rows see the source only
      {2, 12, 1, 18, 32, 0, true, 0, 1.0},     // the AR's step, no mask
      {3, 4, 5, 40, 64, 7, false, 5, 0.5},     // wider rows, sparse mask (rows with nothing to see)
      {2, 3, 9, 16, 24, 16, true, 3, 0.8},     // head size off the lane width, prefix == keys
      {1, 2, 4, 1, 8, 0, false, 0, 1.0},       // one key
      {2, 2, 3, 0, 16, 0, true, 0, 1.0},       // no keys: zeros
      {2, 5, 33, 70, 48, 30, false, 1, 0.95},
  };
  for (const Case& c : cases) {
    run_case<float>(c, gen);
    run_case<uint16_t>(c, gen);
  }
  nan_and_empty();
  return check_report();
}
