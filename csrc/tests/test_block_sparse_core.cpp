// Native tests of the packed block-sparse linear core against a plain triple
// loop over the dense weight: random masks (with empty block rows and
// columns), token counts that leave every tile remainder, a row stride wider
// than the features, with and without bias, and a range of block rows alone.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "check.h"

#include "../sparse/block_sparse_core.h"

using namespace pyprune::bsr;

struct Case {
  int64_t rows, block_rows, block_cols, ldx;
  double density;
  bool bias;
};

static void run_case(const Case& c, std::mt19937& gen) {
  std::uniform_real_distribution<float> value(-1.f, 1.f);
  std::bernoulli_distribution live(c.density);
  const int64_t n = c.block_rows * kBlock, k = c.block_cols * kBlock;
  std::vector<float> w(n * k, 0.f), x(c.rows * c.ldx), bias(n);
  for (auto& v : x) v = value(gen);
  for (auto& v : bias) v = value(gen);
  std::vector<int64_t> row_ptr{0}, col_index;
  std::vector<float> blocks;
  for (int64_t r = 0; r < c.block_rows; ++r) {
    for (int64_t b = 0; b < c.block_cols; ++b) {
      if (!live(gen)) continue;
      col_index.push_back(b);
      for (int64_t kk = 0; kk < kBlock; ++kk)
        for (int64_t nn = 0; nn < kBlock; ++nn) {
          const float v = value(gen);
          w[(r * kBlock + nn) * k + b * kBlock + kk] = v;
          blocks.push_back(v);
        }
    }
    row_ptr.push_back(static_cast<int64_t>(col_index.size()));
  }
  const float poison = 12345.f;
  std::vector<float> y(c.rows * n, poison), part(c.rows * n, poison);
  const Problem p{x.data(), c.rows, c.ldx, blocks.data(), row_ptr.data(), col_index.data(), c.block_rows,
                  c.bias ? bias.data() : nullptr, y.data(), n};
  linear_rows(p, 0, c.block_rows);
  // Block rows in two ranges, as two threads would split them.
  Problem q = p;
  q.y = part.data();
  linear_rows(q, 0, c.block_rows / 2);
  linear_rows(q, c.block_rows / 2, c.block_rows);
  double worst = 0;
  for (int64_t m = 0; m < c.rows; ++m)
    for (int64_t o = 0; o < n; ++o) {
      double exact = c.bias ? bias[o] : 0.0;
      for (int64_t i = 0; i < k; ++i) exact += double(x[m * c.ldx + i]) * w[o * k + i];
      worst = std::fmax(worst, std::fabs(y[m * n + o] - exact));
      CHECK(y[m * n + o] == part[m * n + o], "split ranges differ at row %lld output %lld", (long long)m,
            (long long)o);
    }
  CHECK(worst <= 1e-4 * k, "rows %lld, %lldx%lld blocks, density %.2f: max error %g", (long long)c.rows,
        (long long)c.block_rows, (long long)c.block_cols, c.density, worst);
}

int main() {
  std::mt19937 gen(7);
  for (int64_t rows : {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 40})
    for (double density : {0.0, 0.3, 0.7, 1.0})
      for (bool bias : {false, true}) run_case({rows, 3, 4, 4 * kBlock + (rows % 2) * 7, density, bias}, gen);
  return check_report();
}
