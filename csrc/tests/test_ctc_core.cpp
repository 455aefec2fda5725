// Native tests of the torch-free CTC core (run by ctest): fast exp/log
// accuracy, forward against brute-force path enumeration, gradients against
// finite differences, Viterbi against the best enumerated path, greedy decode,
// and NaN (not out-of-bounds reads) for invalid samples.
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "check.h"

#include "../common/fast_math.h"
#include "../ctc/ctc_core.h"

using namespace pyprune;
using namespace pyprune::ctc;


struct Problem {
  int64_t T, N, C;
  std::vector<double> log_probs;  // (T, N, C)
  std::vector<int64_t> targets, offsets, input_lengths, target_lengths;
  int64_t max_target_length;

  Batch batch() const {
    Batch b;
    b.max_time = T;
    b.batch_size = N;
    b.num_classes = C;
    b.stride_time = N * C;
    b.stride_batch = C;
    b.targets = targets.data();
    b.num_labels = static_cast<int64_t>(targets.size());
    b.target_offsets = offsets.data();
    b.input_lengths = input_lengths.data();
    b.target_lengths = target_lengths.data();
    b.max_target_length = max_target_length;
    b.blank = 0;
    return b;
  }
  double lp(int64_t t, int64_t n, int64_t c) const { return log_probs[(t * N + n) * C + c]; }
};

static Problem random_problem(std::mt19937& rng, int64_t T, int64_t N, int64_t C, int64_t S) {
  Problem p{T, N, C, std::vector<double>(T * N * C), {}, {}, {}, {}, S};
  std::normal_distribution<double> normal(0.0, 1.5);
  for (int64_t r = 0; r < T * N; ++r) {
    double* row = &p.log_probs[r * C];
    double norm = 0;
    for (int64_t c = 0; c < C; ++c) row[c] = normal(rng), norm += std::exp(row[c]);
    for (int64_t c = 0; c < C; ++c) row[c] -= std::log(norm);
  }
  for (int64_t n = 0; n < N; ++n) {
    p.offsets.push_back(n * S);
    p.target_lengths.push_back(rng() % (S + 1));
    p.input_lengths.push_back(1 + rng() % T);
    for (int64_t s = 0; s < S; ++s) p.targets.push_back(1 + rng() % (C - 1));
  }
  return p;
}

// Enumerate every path of sample n: log of the total probability of paths that
// collapse to the target, and the best single path's log-probability.
static void enumerate(const Problem& p, int64_t n, double& log_total, double& log_best) {
  const int64_t T = p.input_lengths[n];
  const int64_t* target = &p.targets[p.offsets[n]];
  const int64_t S = p.target_lengths[n];
  std::vector<int64_t> path(T, 0);
  double total = 0;
  log_best = -std::numeric_limits<double>::infinity();
  while (true) {
    std::vector<int64_t> collapsed;
    int64_t previous = -1;
    double score = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (path[t] != 0 && path[t] != previous) collapsed.push_back(path[t]);
      previous = path[t];
      score += p.lp(t, n, path[t]);
    }
    bool match = static_cast<int64_t>(collapsed.size()) == S;
    for (int64_t i = 0; match && i < S; ++i) match = collapsed[i] == target[i];
    if (match) total += std::exp(score), log_best = std::max(log_best, score);
    int64_t t = 0;
    while (t < T && ++path[t] == p.C) path[t++] = 0;
    if (t == T) break;
  }
  log_total = std::log(total);
}

static void test_fast_math() {
  double worst_exp = 0, worst_log = 0;
  for (double x = -87.0; x < 88.0; x += 0.0137) {
    const float f = static_cast<float>(x);
    worst_exp = std::max(worst_exp, std::fabs(fast_exp(f) / std::exp(double(f)) - 1.0));
  }
  for (double x = 1e-30; x < 1e30; x *= 1.0173) {
    const float f = static_cast<float>(x);
    const double exact = std::log(double(f));
    worst_log = std::max(worst_log, std::fabs(fast_log(f) - exact) / std::max(1.0, std::fabs(exact)));
  }
  CHECK(worst_exp < 4e-7, "fast_exp relative error %g", worst_exp);
  CHECK(worst_log < 4e-7, "fast_log error %g", worst_log);
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(fast_exp(-inf) == 0.0f, "exp(-inf)");
  CHECK(fast_exp(-100.0f) == 0.0f, "exp(-100)");
  CHECK(std::isinf(fast_exp(89.0f)), "exp(89) overflows");
  CHECK(std::isnan(fast_exp(std::nanf(""))), "exp(nan)");
  CHECK(fast_log(0.0f) == -inf, "log(0)");
  CHECK(std::isnan(fast_log(std::nanf(""))), "log(nan)");
  CHECK(logsumexp3<float>(-inf, -inf, -inf) == -inf, "logsumexp3 of -inf");
}

template <typename T>
static std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
static void test_forward_against_enumeration(std::mt19937& rng, double tolerance) {
  for (int trial = 0; trial < 20; ++trial) {
    Problem p = random_problem(rng, 6, 3, 3, 3);
    const Batch b = p.batch();
    const auto scores = cast<T>(p.log_probs);
    std::vector<T> nll(p.N), alpha(alpha_size(b), -INFINITY);
    forward_cpu<T>(b, scores.data(), nullptr, false, nll.data(), alpha.data(), 0, p.N);
    std::vector<int64_t> path(p.N * p.T);
    std::vector<T> best(p.N);
    std::vector<uint8_t> back(alpha_size(b));
    best_alignment_cpu<T>(b, scores.data(), path.data(), best.data(), back.data(), 0, p.N);
    for (int64_t n = 0; n < p.N; ++n) {
      double log_total, log_best;
      enumerate(p, n, log_total, log_best);
      if (std::isinf(log_total)) {
        CHECK(std::isinf(nll[n]) && nll[n] > 0, "impossible sample %ld: nll %g", long(n), double(nll[n]));
        CHECK(std::isinf(best[n]), "impossible sample %ld: viterbi %g", long(n), double(best[n]));
      } else {
        CHECK(std::fabs(-log_total - nll[n]) < tolerance * std::max(1.0, log_total),
              "sample %ld: nll %.9g expected %.9g", long(n), double(nll[n]), -log_total);
        CHECK(std::fabs(log_best - best[n]) < tolerance * std::max(1.0, -log_best),
              "sample %ld: viterbi %.9g expected %.9g", long(n), double(best[n]), log_best);
      }
    }
  }
}

static void test_gradient_against_finite_differences(std::mt19937& rng) {
  Problem p = random_problem(rng, 7, 2, 4, 3);
  p.input_lengths = {7, 5};
  p.target_lengths = {3, 2};
  const Batch b = p.batch();
  auto nll_of = [&](const std::vector<double>& scores) {
    std::vector<double> nll(p.N), alpha(alpha_size(b), -INFINITY);
    forward_cpu<double>(b, scores.data(), nullptr, false, nll.data(), alpha.data(), 0, p.N);
    return nll;
  };
  std::vector<double> nll(p.N), alpha(alpha_size(b), -INFINITY), grad(p.log_probs.size());
  std::vector<double> ones(p.N, 1.0);
  forward_cpu<double>(b, p.log_probs.data(), nullptr, false, nll.data(), alpha.data(), 0, p.N);
  backward_cpu<double>(b, p.log_probs.data(), nullptr, ones.data(), nullptr, nll.data(),
                       alpha.data(), false, grad.data(), p.N * p.C, p.C, 0, p.N);
  for (int64_t t = 0; t < p.T; ++t) {
    for (int64_t n = 0; n < p.N; ++n) {
      double occupancy_sum = 0;
      for (int64_t c = 0; c < p.C; ++c) {
        const int64_t i = (t * p.N + n) * p.C + c;
        if (t >= p.input_lengths[n]) {
          CHECK(grad[i] == 0.0, "gradient past the input length");
          continue;
        }
        // torch's convention: grad = exp(lp) - occupancy; d nll / d lp = -occupancy.
        const double occupancy = std::exp(p.log_probs[i]) - grad[i];
        occupancy_sum += occupancy;
        auto shifted = p.log_probs;
        shifted[i] += 1e-6;
        const double plus = nll_of(shifted)[n];
        shifted[i] -= 2e-6;
        const double minus = nll_of(shifted)[n];
        const double numeric = (plus - minus) / 2e-6;
        CHECK(std::fabs(numeric + occupancy) < 1e-6, "t %ld n %ld c %ld: %g vs %g", long(t),
              long(n), long(c), numeric, -occupancy);
      }
      if (t < p.input_lengths[n]) CHECK(std::fabs(occupancy_sum - 1.0) < 1e-9, "occupancy sum %g", occupancy_sum);
    }
  }
}

// A batch of one sample of T frames of C classes, scores laid out (T, C).
static Batch one_sample(int64_t T, int64_t C, const int64_t* input_lengths) {
  Batch b;
  b.max_time = T;
  b.batch_size = 1;
  b.num_classes = C;
  b.stride_time = C;
  b.stride_batch = C;
  b.input_lengths = input_lengths;
  return b;
}

static void test_greedy_decode() {
  // Frames' best classes: 1 1 0 1 2 2 0 -> decoded 1 1 2.
  const int64_t T = 7, C = 3;
  const int64_t best[T] = {1, 1, 0, 1, 2, 2, 0};
  std::vector<float> scores(T * C, -1.0f);
  for (int64_t t = 0; t < T; ++t) scores[t * C + best[t]] = 1.0f;
  std::vector<int64_t> input_lengths = {T}, tokens(T), lengths(1);
  Batch b = one_sample(T, C, input_lengths.data());
  greedy_decode_cpu<float>(b, scores.data(), tokens.data(), lengths.data(), 0, 1);
  CHECK(lengths[0] == 3 && tokens[0] == 1 && tokens[1] == 1 && tokens[2] == 2 && tokens[3] == 0,
        "decoded %ld tokens", long(lengths[0]));

  // The same frames in bfloat16 (bit patterns, compared as their float32 values); a tie goes to the
  // first maximal class.
  std::vector<uint16_t> bits(T * C);
  for (int64_t i = 0; i < T * C; ++i) bits[i] = float_to_bf16(scores[i]);
  bits[6 * C + 1] = bits[6 * C + 0];  // frame 6: classes 0 and 1 tie -> class 0 (blank) wins
  std::fill(tokens.begin(), tokens.end(), -7);
  greedy_decode_cpu<uint16_t>(b, bits.data(), tokens.data(), lengths.data(), 0, 1);
  CHECK(lengths[0] == 3 && tokens[0] == 1 && tokens[1] == 1 && tokens[2] == 2 && tokens[3] == 0,
        "bfloat16: decoded %ld tokens", long(lengths[0]));
  bits[3 * C + 2] = float_to_bf16(2.0f);  // frame 3 now picks class 2: 1 1 0 2 2 2 0 -> 1 2
  greedy_decode_cpu<uint16_t>(b, bits.data(), tokens.data(), lengths.data(), 0, 1);
  CHECK(lengths[0] == 2 && tokens[0] == 1 && tokens[1] == 2, "bfloat16: decoded %ld tokens",
        long(lengths[0]));
}

static void test_greedy_blank_penalty() {
  // 100 classes (several compare chunks), blank 0 at 1.0; the best other classes sit past the first chunk.
  const int64_t T = 3, C = 100;
  std::vector<float> scores(T * C, -1.0f);
  for (int64_t t = 0; t < T; ++t) scores[t * C] = 1.0f;
  scores[0 * C + 70] = 0.5f;
  scores[1 * C + 40] = scores[1 * C + 90] = 0.5f;  // a tie: the first (40) wins
  scores[2 * C + 33] = 2.0f;
  std::vector<int64_t> input_lengths = {T}, tokens(T), lengths(1);
  Batch b = one_sample(T, C, input_lengths.data());
  b.blank_penalty = 0.6;  // the blank at 0.4: every frame emits
  greedy_decode_cpu<float>(b, scores.data(), tokens.data(), lengths.data(), 0, 1);
  CHECK(lengths[0] == 3 && tokens[0] == 70 && tokens[1] == 40 && tokens[2] == 33,
        "penalty 0.6: decoded %ld tokens", long(lengths[0]));
  b.blank_penalty = 0.5;  // the blank ties at 0.5 and, the first class, wins
  greedy_decode_cpu<float>(b, scores.data(), tokens.data(), lengths.data(), 0, 1);
  CHECK(lengths[0] == 1 && tokens[0] == 33, "penalty 0.5: decoded %ld tokens", long(lengths[0]));

  // bfloat16 rounds as torch: 1/3 becomes 0.333984375, and 1 - that (0.666015625, halfway) rounds to even,
  // 0.6640625, below frame 0's class 70 at 0.66796875. In float32 the blank would tie class 70 and win.
  std::vector<uint16_t> bits(T * C);
  for (int64_t i = 0; i < T * C; ++i) bits[i] = float_to_bf16(scores[i]);
  bits[0 * C + 70] = float_to_bf16(0.66796875f);
  b.blank_penalty = 1.0 / 3.0;
  greedy_decode_cpu<uint16_t>(b, bits.data(), tokens.data(), lengths.data(), 0, 1);
  CHECK(lengths[0] == 2 && tokens[0] == 70 && tokens[1] == 33, "bfloat16 penalty 1/3: decoded %ld tokens",
        long(lengths[0]));
}

static void test_invalid_samples_give_nan(std::mt19937& rng) {
  Problem p = random_problem(rng, 5, 3, 4, 2);
  p.targets[0] = 7;              // label >= C
  p.input_lengths[1] = 9;        // > T
  p.target_lengths[2] = 3;       // > padded width
  const Batch b = p.batch();
  std::vector<double> nll(p.N), alpha(alpha_size(b), -INFINITY);
  forward_cpu<double>(b, p.log_probs.data(), nullptr, false, nll.data(), alpha.data(), 0, p.N);
  for (int64_t n = 0; n < p.N; ++n) CHECK(std::isnan(nll[n]), "sample %ld not flagged", long(n));
}

int main() {
  std::mt19937 rng(1234);
  test_fast_math();
  test_forward_against_enumeration<double>(rng, 1e-10);
  test_forward_against_enumeration<float>(rng, 2e-5);
  test_gradient_against_finite_differences(rng);
  test_greedy_decode();
  test_greedy_blank_penalty();
  test_invalid_samples_give_nan(rng);
  return check_report();
}
