// Native tests of the bit-parallel Levenshtein core against a full-matrix DP
// with libnat's rule, on tie-heavy random pairs spanning one to several
// machine words, plus padding in the middle of rows and empty rows.
#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "check.h"

#include "../levenshtein/levenshtein_core.h"

using namespace pyprune::lev;


constexpr int64_t kPad = 1;

// Full-matrix labels: slot counts (nx + 1) and delete flags (nx).
static void dp_labels(const std::vector<int64_t>& x, const std::vector<int64_t>& y,
                      std::vector<int>& counts, std::vector<int>& deleted, int64_t& distance) {
  const size_t nx = x.size(), ny = y.size();
  std::vector<std::vector<int64_t>> d(nx + 1, std::vector<int64_t>(ny + 1));
  for (size_t i = 0; i <= nx; ++i) d[i][0] = i;
  for (size_t j = 0; j <= ny; ++j) d[0][j] = j;
  for (size_t i = 1; i <= nx; ++i)
    for (size_t j = 1; j <= ny; ++j)
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (x[i - 1] == y[j - 1] ? 0 : 2)});
  distance = d[nx][ny];
  counts.assign(nx + 1, 0);
  deleted.assign(nx, 0);
  size_t i = nx, j = ny;
  while (i > 0 || j > 0) {
    if (j > 0 && d[i][j - 1] < d[i][j]) {
      ++counts[i];
      --j;
    } else if (i > 0 && d[i - 1][j] < d[i][j]) {
      deleted[i - 1] = 1;
      --i;
    } else {
      --i;
      --j;
    }
  }
}

// The CUDA kernel adds multi-word columns one word per lane and resolves the
// carries with lane_carries; emulate that here against a sequential add.
static void test_lane_carries(std::mt19937& rng) {
  std::mt19937_64 wide(7);
  for (int trial = 0; trial < 2000; ++trial) {
    const int words = 1 + trial % 70;
    std::vector<uint64_t> a(words), b(words), sequential(words), lanes(words);
    for (int w = 0; w < words; ++w) {
      a[w] = wide();
      b[w] = (rng() % 3 == 0) ? ~a[w] : wide() & a[w];  // runs of all-ones sums
      if (rng() % 4 == 0) a[w] = ~uint64_t(0);
    }
    unsigned long long carry = 0;
    for (int w = 0; w < words; ++w) {
      unsigned long long sum;
      const bool o1 = __builtin_uaddll_overflow(a[w], b[w], &sum);
      const bool o2 = __builtin_uaddll_overflow(sum, carry, &sum);
      sequential[w] = sum;
      carry = (o1 || o2) ? 1 : 0;
    }
    uint32_t group_carry = 0;
    for (int group = 0; group < words; group += 32) {
      uint32_t generate = 0, propagate = 0;
      for (int lane = 0; lane < 32 && group + lane < words; ++lane) {
        const uint64_t sum = a[group + lane] + b[group + lane];
        if (sum < a[group + lane]) generate |= 1u << lane;
        if (sum == ~uint64_t(0)) propagate |= 1u << lane;
      }
      const uint64_t carries = lane_carries(generate, propagate, group_carry);
      for (int lane = 0; lane < 32 && group + lane < words; ++lane)
        lanes[group + lane] = a[group + lane] + b[group + lane] + ((carries >> lane) & 1);
      group_carry = uint32_t((carries >> 32) & 1);
    }
    CHECK(lanes == sequential, "lane carries differ for %d words", words);
  }
}

int main() {
  std::mt19937 rng(42);
  test_lane_carries(rng);
  Workspace* ws = workspace_create();
  const int64_t lengths[] = {0, 1, 5, 63, 64, 65, 130, 200};
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t width = lengths[trial % 8] + 3;
    const int vocab = 2 + trial % 5;
    std::vector<int64_t> in(width, kPad), out(width, kPad);
    std::vector<int64_t> x, y;
    for (int64_t k = 0; k < width; ++k) {
      if (rng() % 4) in[k] = 2 + rng() % vocab;       // padding scattered through the row
      if (rng() % 5) out[k] = 2 + rng() % vocab;
      if (in[k] != kPad) x.push_back(in[k]);
      if (out[k] != kPad) y.push_back(out[k]);
    }
    std::vector<int> counts, deleted;
    int64_t expected_distance;
    dp_labels(x, y, counts, deleted, expected_distance);

    Tokens ti{in.data(), 1, width, width}, to{out.data(), 1, width, width};
    std::vector<int64_t> slots(width), flags(width), distance(1), ins(width - 1), del(width);
    edit_path(ti, to, kPad, slots.data(), flags.data(), ws, 0, 1);
    edit_distance(ti, to, kPad, 2, distance.data(), ws, 0, 1);
    CHECK(distance[0] == expected_distance, "trial %d: distance %ld vs %ld", trial, long(distance[0]), long(expected_distance));
    std::vector<int> got_counts(x.size() + 1, 0);
    for (size_t j = 0; j < y.size(); ++j)
      if (slots[j] >= 0) ++got_counts[slots[j]];
    CHECK(got_counts == counts, "trial %d: insertion slots differ (nx=%zu ny=%zu)", trial, x.size(), y.size());
    for (size_t i = 0; i < x.size(); ++i) CHECK(flags[i] == deleted[i], "trial %d: delete flag %zu", trial, i);

    Targets targets;
    targets.mask_ins_targets = ins.data();
    targets.word_del_targets = del.data();
    edit_targets(ti, to, kPad, 0, targets, ws, 0, 1);
    for (size_t k = 1; k + 1 < x.size() + 1 && k < x.size(); ++k)
      CHECK(ins[k - 1] == counts[k], "trial %d: mask_ins_targets[%zu]", trial, k - 1);
    for (size_t i = 0; i < x.size(); ++i) CHECK(del[i] == deleted[i], "trial %d: word_del_targets[%zu]", trial, i);
  }
  workspace_destroy(ws);
  return check_report();
}
