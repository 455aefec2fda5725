// Native tests of the packed block-sparse linear core against a plain triple
// loop over the dense weight: random masks (with empty block rows and
// columns), token counts that run every tile size alone and split, a row
// stride wider than the features, with and without bias, and a range of
// block rows alone;
// float32 and bfloat16 (whose outputs must be the exact sum rounded once, up
// to float32 summation order), plus bfloat16 rounding ties and NaN; the GELU
// epilogue against the exact erf, and the GELU function itself on a dense grid.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"

// gelu_lanes takes and returns vectors inside this file only: the ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "../common/vec.h"
#include "../sparse/block_sparse_core.h"

using namespace pyprune::bsr;

static float widen(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// bfloat16 by truncation: any bfloat16 will do as test data.
static uint16_t narrow(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return uint16_t(u >> 16);
}

static float value_of(float v) { return v; }
static float value_of(uint16_t h) { return widen(h); }
static void make(float v, float& out) { out = v; }
static void make(float v, uint16_t& out) { out = narrow(v); }
static void run(const Problem& p, int64_t first, int64_t last) { linear_rows(p, first, last); }
static void run(const ProblemBf16& p, int64_t first, int64_t last) { linear_rows_bf16(p, first, last); }

struct Case {
  int64_t rows, block_rows, block_cols, ldx;
  double density;
  bool bias;
  Activation activation;
};

static double exact_gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

template <typename T>
static void run_case(const Case& c, std::mt19937& gen) {
  std::uniform_real_distribution<float> value(-1.f, 1.f);
  std::bernoulli_distribution live(c.density);
  const int64_t n = c.block_rows * kBlock, k = c.block_cols * kBlock;
  std::vector<T> w(n * k, T{}), x(c.rows * c.ldx), bias(n);
  for (auto& v : x) make(value(gen), v);
  for (auto& v : bias) make(value(gen), v);
  std::vector<int64_t> row_ptr{0}, col_index;
  std::vector<T> blocks;
  for (int64_t r = 0; r < c.block_rows; ++r) {
    for (int64_t b = 0; b < c.block_cols; ++b) {
      if (!live(gen)) continue;
      col_index.push_back(b);
      for (int64_t kk = 0; kk < kBlock; ++kk)
        for (int64_t nn = 0; nn < kBlock; ++nn) {
          T v;
          make(value(gen), v);
          w[(r * kBlock + nn) * k + b * kBlock + kk] = v;
          blocks.push_back(v);
        }
    }
    row_ptr.push_back(static_cast<int64_t>(col_index.size()));
  }
  T poison;
  make(12345.f, poison);
  std::vector<T> y(c.rows * n, poison), part(c.rows * n, poison);
  const ProblemOf<T> p{x.data(), c.rows, c.ldx, blocks.data(), row_ptr.data(), col_index.data(), c.block_rows,
                       c.bias ? bias.data() : nullptr, y.data(), n, c.activation};
  run(p, 0, c.block_rows);
  // Block rows in two ranges, as two threads would split them.
  ProblemOf<T> q = p;
  q.y = part.data();
  run(q, 0, c.block_rows / 2);
  run(q, c.block_rows / 2, c.block_rows);
  // float32: summation order only. bfloat16: one rounding on top (half an ulp: at most 2^-8 relative).
  const double rounding = sizeof(T) == 2 ? std::ldexp(1.0, -8) : 0.0;
  double worst = 0;
  for (int64_t m = 0; m < c.rows; ++m)
    for (int64_t o = 0; o < n; ++o) {
      double exact = c.bias ? value_of(bias[o]) : 0.0;
      for (int64_t i = 0; i < k; ++i) exact += double(value_of(x[m * c.ldx + i])) * value_of(w[o * k + i]);
      // GELU's slope is below 1.13: the sum's error passes through it barely grown.
      if (c.activation == Activation::kGelu) exact = exact_gelu(exact);
      const double error = std::fabs(value_of(y[m * n + o]) - exact) - rounding * std::fabs(exact);
      worst = std::fmax(worst, error);
      CHECK(std::memcmp(&y[m * n + o], &part[m * n + o], sizeof(T)) == 0,
            "split ranges differ at row %lld output %lld", (long long)m, (long long)o);
    }
  CHECK(worst <= 1.2e-5 * k, "%s%s rows %lld, %lldx%lld blocks, density %.2f: max error %g beyond rounding",
        sizeof(T) == 2 ? "bfloat16" : "float32", c.activation == Activation::kGelu ? " gelu" : "",
        (long long)c.rows, (long long)c.block_rows, (long long)c.block_cols, c.density, worst);
}

// y = x * w + bias through one live block, x one-hot: ties must round to even, NaN must stay NaN.
static void bf16_rounding() {
  struct Tie { uint16_t w, bias, expected; };
  const Tie ties[] = {
      {0x3f80, 0x3b80, 0x3f80},   // 1 + 2^-8: halfway between 1 and 1 + 2^-7, to even (1)
      {0x3f81, 0x3b80, 0x3f82},   // (1 + 2^-7) + 2^-8: halfway, to even (1 + 2^-6)
      {0xbf81, 0xbb80, 0xbf82},   // the same, negative
      {0x7fc0, 0x0000, 0x7fc0},   // NaN
  };
  for (int rows : {1, 9}) {
    std::vector<uint16_t> blocks(kBlock * kBlock, 0), bias(kBlock, 0), x(rows * kBlock, 0), y(rows * kBlock, 0);
    for (int i = 0; i < 4; ++i) {
      blocks[0 * kBlock + i] = ties[i].w;    // k = 0, output i
      bias[i] = ties[i].bias;
    }
    for (int m = 0; m < rows; ++m) x[m * kBlock] = 0x3f80;   // feature 0 = 1
    const int64_t row_ptr[] = {0, 1}, col_index[] = {0};
    const ProblemBf16 p{x.data(),  rows,     kBlock, blocks.data(), row_ptr, col_index, 1, bias.data(),
                        y.data(), kBlock, Activation::kNone};
    linear_rows_bf16(p, 0, 1);
    for (int m = 0; m < rows; ++m)
      for (int i = 0; i < 4; ++i) {
        const uint16_t got = y[m * kBlock + i];
        if (i == 3)
          CHECK(std::isnan(widen(got)), "NaN weight gave %#06x", got);
        else
          CHECK(got == ties[i].expected, "tie %d: got %#06x, expected %#06x", i, got, ties[i].expected);
      }
  }
}

// pyprune::gelu_lanes against the exact erf on a dense grid (absolute error within 2e-7 max(1, |x|)), and its
// special values: +inf, -inf (NaN, as torch), NaN, and the precision of tiny negative outputs.
static float gelu1(float x) {
  float lanes[16];
  const pyprune::Vec16 v = pyprune::gelu_lanes(pyprune::splat<pyprune::Vec16>(x));
  std::memcpy(lanes, &v, sizeof lanes);
  return lanes[7];
}

static void gelu_function() {
  double worst = 0;
  for (int i = -200000; i <= 200000; i += 16) {
    float xs[16], ys[16];
    for (int j = 0; j < 16; ++j) xs[j] = (i + j) * 1e-4f;
    const pyprune::Vec16 y = pyprune::gelu_lanes(pyprune::load<pyprune::Vec16>(xs));
    std::memcpy(ys, &y, sizeof ys);
    for (int j = 0; j < 16; ++j)
      worst = std::fmax(worst, std::fabs(ys[j] - exact_gelu(xs[j])) / std::fmax(1.0, std::fabs(xs[j])));
  }
  CHECK(worst <= 2e-7, "gelu: max error %g (scaled by max(1, |x|))", worst);
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(gelu1(inf) == inf, "gelu(inf) = %g", gelu1(inf));
  CHECK(std::isnan(gelu1(-inf)), "gelu(-inf) = %g, expected NaN", gelu1(-inf));
  CHECK(std::isnan(gelu1(std::nanf(""))), "gelu(NaN) is not NaN");
  CHECK(gelu1(-100.0f) == 0.0f, "gelu(-100) = %g", gelu1(-100.0f));
  // Relative error at x = -5 (output -1.4e-6) near 2e-3; computing 1 + erf(z) by cancellation would give
  // about 25%.
  CHECK(gelu1(-5.0f) < 0 && std::fabs(gelu1(-5.0f) / exact_gelu(-5.0) - 1) < 5e-3, "gelu(-5) = %g, exact %g",
        gelu1(-5.0f), exact_gelu(-5.0));
}

int main() {
  std::mt19937 gen(7);
  // Every tile size of every variant (up to 12 rows on AVX-512) alone, and split into near-equal tiles
  // (13 = 7 + 6, 23 = 12 + 11, 25 = 9 + 8 + 8, 40 = 4 x 10).
  for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 23, 24, 25, 40})
    for (double density : {0.0, 0.3, 0.7, 1.0})
      for (bool bias : {false, true})
        for (Activation activation : {Activation::kNone, Activation::kGelu}) {
          const Case c{rows, 3, 4, 4 * kBlock + (rows % 2) * 7, density, bias, activation};
          run_case<float>(c, gen);
          run_case<uint16_t>(c, gen);
        }
  bf16_rounding();
  gelu_function();
  return check_report();
}
