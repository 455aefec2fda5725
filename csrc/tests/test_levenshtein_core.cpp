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

// The apply kernels against a list model of each edit, on left-packed rows
// [bos] words [eos] padding with random flags and counts (negative ones too),
// with and without a max_length cut; and each framing problem reported.
static void test_apply(std::mt19937& rng) {
  constexpr int64_t kBos = 0, kEos = 2, kUnk = 3;
  for (int trial = 0; trial < 500; ++trial) {
    const int64_t words = rng() % 20, width = words + 2 + rng() % 3;
    std::vector<int64_t> row(width, kPad), flags(width), counts(width - 1);
    row[0] = kBos;
    for (int64_t k = 1; k <= words; ++k) row[k] = 4 + rng() % 9;
    row[words + 1] = kEos;
    for (auto& f : flags) f = rng() % 3 == 0;
    for (auto& c : counts) c = int64_t(rng() % 6) - 1;
    const Tokens in{row.data(), 1, width, width};

    std::vector<int64_t> kept, kept_at(width, width), out(width), target(width);
    for (int64_t k = 0; k < width; ++k) {
      const bool keep = (!flags[k] && row[k] != kPad) || row[k] == kBos || row[k] == kEos;
      if (keep) kept_at[k] = int64_t(kept.size()), kept.push_back(row[k]);
    }
    kept.resize(width, kPad);
    apply_del_words(in, flags.data(), kPad, kBos, kEos, out.data(), target.data(), 0, 1);
    CHECK(out == kept && target == kept_at, "trial %d: deletions", trial);

    const int64_t n = words + 2;
    for (const int64_t max_length : {int64_t(-1), width, width + int64_t(rng() % 10)}) {
      std::vector<int64_t> expected{row[0]}, moved(width, 0);
      for (int64_t k = 1; k < n; ++k) {
        const int64_t room = max_length < 0 ? 1 << 20 : max_length - n - (int64_t(expected.size()) - k);
        for (int64_t p = 0; p < std::min(std::max<int64_t>(counts[k - 1], 0), room); ++p) expected.push_back(kUnk);
        moved[k] = int64_t(expected.size());
        expected.push_back(row[k]);
      }
      const int64_t out_width = max_length < 0 ? ins_masks_width(in, counts.data(), kPad) : max_length;
      CHECK(max_length >= 0 || out_width == int64_t(expected.size()), "trial %d: width %ld", trial, long(out_width));
      if (out_width < int64_t(expected.size())) continue;
      expected.resize(out_width, kPad);
      for (int64_t k = n; k < width; ++k) moved[k] = out_width;
      std::vector<int64_t> got(out_width), got_target(width);
      apply_ins_masks(in, counts.data(), kPad, kUnk, max_length, out_width, got.data(), got_target.data(), 0, 1);
      CHECK(got == expected && got_target == moved, "trial %d: insertions (max_length %ld)", trial, long(max_length));
    }
  }
  // Framing: the first row of the first kind of problem, kinds in order.
  const int64_t rows[4][4] = {{0, 5, 2, kPad}, {0, 6, 7, kPad}, {kPad, 0, 2, kPad}, {kPad, kPad, kPad, kPad}};
  const Tokens all{&rows[0][0], 4, 4, 4}, first_three{&rows[0][0], 3, 4, 4}, first_two{&rows[0][0], 2, 4, 4};
  const Tokens first_one{&rows[0][0], 1, 4, 4};
  FramingProblem p = check_framing(all, kPad, 0, 2);
  CHECK(p.kind == FramingProblem::kEmptyRow && p.row == 3, "empty row: kind %d row %ld", p.kind, long(p.row));
  p = check_framing(first_three, kPad, 0, 2);
  CHECK(p.kind == FramingProblem::kTokenAfterPadding && p.row == 2, "after padding: kind %d", p.kind);
  p = check_framing(first_two, kPad, 0, 2);
  CHECK(p.kind == FramingProblem::kNoEos && p.row == 1 && p.token == 7, "no eos: kind %d", p.kind);
  p = check_framing(first_two, kPad, 9, 2);
  CHECK(p.kind == FramingProblem::kNoEos, "eos is checked before bos: kind %d", p.kind);
  p = check_framing(first_one, kPad, 9, 2);
  CHECK(p.kind == FramingProblem::kNoBos && p.row == 0 && p.token == 0, "no bos: kind %d", p.kind);
  p = check_framing(first_one, kPad, -1, 2);
  CHECK(p.kind == FramingProblem::kNone, "bos unchecked: kind %d", p.kind);
}

int main() {
  std::mt19937 rng(42);
  test_lane_carries(rng);
  test_apply(rng);
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
