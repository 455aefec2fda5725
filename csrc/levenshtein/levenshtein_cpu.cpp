// CPU kernels for Levenshtein edit labels and distances. See
// levenshtein_core.h for the contracts and the labelling rule.
#include "levenshtein_core.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "../common/fast_math.h"
#include "../common/isa_dispatch.h"

namespace pyprune {
namespace lev {

class Workspace {
 public:
  std::vector<int64_t> x, y;         // the pair without padding
  std::vector<uint64_t> history;     // V_0 .. V_ny, `words` words each
  std::vector<int64_t> keys;         // open-addressing table: token -> mask row
  std::vector<int32_t> rows;         // -1 for an empty slot
  std::vector<uint64_t> masks;       // one row of `words` words per distinct x token
  std::vector<int32_t> counts;       // insertions per slot, nx + 1
  std::vector<uint8_t> deleted;      // per x token
  std::vector<int64_t> dp;           // DP row for sub_cost < 2
  int64_t words = 0;
};

Workspace* workspace_create() { return new Workspace(); }
void workspace_destroy(Workspace* ws) { delete ws; }

namespace {

PYPRUNE_INLINE int64_t popcount(uint64_t v) { return __builtin_popcountll(v); }

PYPRUNE_INLINE void compact_row(const Tokens& t, int64_t b, int64_t padding_idx, std::vector<int64_t>& into) {
  into.resize(t.width);
  const int64_t* row = t.data + b * t.stride;
  int64_t n = 0;
  for (int64_t k = 0; k < t.width; ++k) {
    into[n] = row[k];
    n += row[k] != padding_idx;
  }
  into.resize(n);
}

PYPRUNE_INLINE uint64_t hash_token(int64_t token, int shift) {
  return (static_cast<uint64_t>(token) * 0x9E3779B97F4A7C15ull) >> shift;
}

// Build the match masks of x: for each distinct token, the bit set of its
// positions in x. Returns log2 of the table capacity.
PYPRUNE_INLINE int build_masks(Workspace& ws) {
  const int64_t nx = static_cast<int64_t>(ws.x.size());
  int bits = 4;
  while ((int64_t(1) << bits) < 2 * nx) ++bits;
  const int64_t capacity = int64_t(1) << bits;
  ws.keys.resize(capacity);
  ws.rows.assign(capacity, -1);
  ws.masks.assign(static_cast<size_t>(nx) * ws.words, 0);  // at most nx distinct tokens
  const int shift = 64 - bits;
  int32_t distinct = 0;
  for (int64_t i = 0; i < nx; ++i) {
    const int64_t token = ws.x[i];
    uint64_t slot = hash_token(token, shift);
    while (ws.rows[slot] >= 0 && ws.keys[slot] != token) slot = (slot + 1) & (capacity - 1);
    if (ws.rows[slot] < 0) {
      ws.keys[slot] = token;
      ws.rows[slot] = distinct++;
    }
    ws.masks[static_cast<size_t>(ws.rows[slot]) * ws.words + (i >> 6)] |= uint64_t(1) << (i & 63);
  }
  return bits;
}

PYPRUNE_INLINE const uint64_t* find_mask(const Workspace& ws, int64_t token, int bits) {
  const int64_t capacity = int64_t(1) << bits;
  uint64_t slot = hash_token(token, 64 - bits);
  while (ws.rows[slot] >= 0) {
    if (ws.keys[slot] == token) return &ws.masks[static_cast<size_t>(ws.rows[slot]) * ws.words];
    slot = (slot + 1) & (capacity - 1);
  }
  return nullptr;
}

// Bit-parallel LCS: V_j bit i is 1 iff LCS(i+1, j) == LCS(i, j). Stores
// V_0..V_ny in ws.history.
PYPRUNE_INLINE void lcs_columns(Workspace& ws) {
  const int64_t nx = static_cast<int64_t>(ws.x.size()), ny = static_cast<int64_t>(ws.y.size());
  const int64_t W = ws.words = (nx + 63) / 64;
  const int bits = build_masks(ws);
  ws.history.resize(static_cast<size_t>((ny + 1) * W));
  uint64_t* v = ws.history.data();
  std::fill(v, v + W, ~uint64_t(0));
  for (int64_t j = 0; j < ny; ++j) {
    const uint64_t* prev = v + j * W;
    uint64_t* next = v + (j + 1) * W;
    const uint64_t* match = find_mask(ws, ws.y[j], bits);
    if (match == nullptr) {
      std::copy(prev, prev + W, next);
      continue;
    }
    unsigned long long carry = 0;
    for (int64_t w = 0; w < W; ++w) {
      const uint64_t u = prev[w] & match[w];
      unsigned long long sum;
      const bool overflow_a = __builtin_uaddll_overflow(prev[w], u, &sum);
      const bool overflow_b = __builtin_uaddll_overflow(sum, carry, &sum);
      carry = (overflow_a || overflow_b) ? 1 : 0;
      next[w] = sum | (prev[w] & ~match[w]);
    }
  }
}

// LCS(i, j) from the stored columns: the zero bits among the first i.
PYPRUNE_INLINE int64_t lcs_prefix(const Workspace& ws, int64_t i, int64_t j) {
  const uint64_t* v = ws.history.data() + j * ws.words;
  if (i == 0) return 0;  // also the only prefix of an empty x (no words at all)
  if (i < 64) return i - popcount(v[0] & ((uint64_t(1) << i) - 1));  // the common short row
  int64_t ones = 0;
  const int64_t full = i >> 6;
  for (int64_t w = 0; w < full; ++w) ones += popcount(v[w]);
  if (i & 63) ones += popcount(v[full] & ((uint64_t(1) << (i & 63)) - 1));
  return i - ones;
}

// Walk the labelling path back from (nx, ny). Calls on_insert(slot, j),
// on_delete(i), on_keep(i) in reverse order.
template <typename Insert, typename Delete, typename Keep>
PYPRUNE_INLINE void backtrack(const Workspace& ws, Insert on_insert, Delete on_delete, Keep on_keep) {
  int64_t i = static_cast<int64_t>(ws.x.size()), j = static_cast<int64_t>(ws.y.size());
  int64_t lcs = lcs_prefix(ws, i, j);
  while (i > 0 || j > 0) {
    // d[i][j-1] < d[i][j]  <=>  LCS(i, j-1) == LCS(i, j)
    if (j > 0 && lcs_prefix(ws, i, j - 1) == lcs) {
      on_insert(i, j - 1);
      --j;
      continue;
    }
    // d[i-1][j] < d[i][j]  <=>  bit i-1 of V_j is set
    if (i > 0 && ((ws.history[j * ws.words + ((i - 1) >> 6)] >> ((i - 1) & 63)) & 1)) {
      on_delete(i - 1);
      --i;
      continue;
    }
    on_keep(i - 1);
    --i;
    --j;
    --lcs;
  }
}

PYPRUNE_INLINE void label_pair(Workspace& ws) {
  const int64_t nx = static_cast<int64_t>(ws.x.size());
  ws.counts.assign(nx + 1, 0);
  ws.deleted.assign(nx, 0);
  lcs_columns(ws);
  backtrack(
      ws, [&](int64_t slot, int64_t) { ++ws.counts[slot]; },
      [&](int64_t i) { ws.deleted[i] = 1; }, [&](int64_t) {});
}

PYPRUNE_INLINE void edit_targets_impl(const Tokens& in, const Tokens& out, int64_t padding_idx,
                                      int64_t unk_idx, const Targets& targets, Workspace* ws,
                                      int64_t begin, int64_t end) {
  const int64_t in_gaps = std::max<int64_t>(in.width - 1, 0);
  for (int64_t b = begin; b < end; ++b) {
    compact_row(in, b, padding_idx, ws->x);
    compact_row(out, b, padding_idx, ws->y);
    label_pair(*ws);
    const int64_t nx = static_cast<int64_t>(ws->x.size());
    if (targets.mask_ins_targets != nullptr) {
      int64_t* row = targets.mask_ins_targets + b * in_gaps;
      std::fill(row, row + in_gaps, 0);
      for (int64_t k = 1; k < nx && k - 1 < in_gaps; ++k) row[k - 1] = ws->counts[k];
    }
    if (targets.masked_tgt_masks != nullptr || targets.masked_tgt_tokens != nullptr) {
      // Laid over the reference: 0 for draft token k-1, then a 1 for each
      // token inserted after it, for the gaps k = 1 .. nx-1.
      bool* mask_row = targets.masked_tgt_masks == nullptr ? nullptr : targets.masked_tgt_masks + b * out.width;
      int64_t* token_row = targets.masked_tgt_tokens == nullptr ? nullptr : targets.masked_tgt_tokens + b * out.width;
      if (mask_row != nullptr) std::fill(mask_row, mask_row + out.width, false);
      if (token_row != nullptr) std::copy(out.data + b * out.stride, out.data + b * out.stride + out.width, token_row);
      int64_t position = 0;
      for (int64_t k = 1; k < nx && position < out.width; ++k) {
        ++position;
        const int64_t stop = std::min<int64_t>(position + ws->counts[k], out.width);
        for (; position < stop; ++position) {
          if (mask_row != nullptr) mask_row[position] = true;
          if (token_row != nullptr) token_row[position] = unk_idx;
        }
      }
    }
    if (targets.word_del_targets != nullptr) {
      int64_t* row = targets.word_del_targets + b * out.width;
      std::fill(row, row + out.width, 0);
      for (int64_t k = 0; k < nx && k < out.width; ++k) row[k] = ws->deleted[k];
    }
  }
}

PYPRUNE_INLINE void edit_distance_impl(const Tokens& x, const Tokens& y, int64_t padding_idx,
                                       int64_t sub_cost, int64_t* distance, Workspace* ws,
                                       int64_t begin, int64_t end) {
  for (int64_t b = begin; b < end; ++b) {
    compact_row(x, b, padding_idx, ws->x);
    compact_row(y, b, padding_idx, ws->y);
    const int64_t nx = static_cast<int64_t>(ws->x.size()), ny = static_cast<int64_t>(ws->y.size());
    if (sub_cost >= 2) {
      lcs_columns(*ws);
      distance[b] = nx + ny - 2 * lcs_prefix(*ws, nx, ny);
      continue;
    }
    // Substitution cheaper than delete + insert: one DP row over x.
    std::vector<int64_t>& row = ws->dp;
    row.resize(nx + 1);
    for (int64_t i = 0; i <= nx; ++i) row[i] = i;
    for (int64_t j = 1; j <= ny; ++j) {
      int64_t diagonal = row[0];
      row[0] = j;
      for (int64_t i = 1; i <= nx; ++i) {
        const int64_t above = row[i];
        const int64_t substitute = diagonal + (ws->x[i - 1] == ws->y[j - 1] ? 0 : sub_cost);
        row[i] = std::min(std::min(above, row[i - 1]) + 1, substitute);
        diagonal = above;
      }
    }
    distance[b] = row[nx];
  }
}

PYPRUNE_INLINE void edit_path_impl(const Tokens& in, const Tokens& out, int64_t padding_idx,
                                   int64_t* insert_slot, int64_t* deleted, Workspace* ws,
                                   int64_t begin, int64_t end) {
  for (int64_t b = begin; b < end; ++b) {
    compact_row(in, b, padding_idx, ws->x);
    compact_row(out, b, padding_idx, ws->y);
    int64_t* slots = insert_slot + b * out.width;
    int64_t* flags = deleted + b * in.width;
    std::fill(slots, slots + out.width, -1);
    std::fill(flags, flags + in.width, 0);
    lcs_columns(*ws);
    backtrack(
        *ws, [&](int64_t slot, int64_t j) { slots[j] = slot; },
        [&](int64_t i) { flags[i] = 1; }, [&](int64_t) {});
  }
}

}  // namespace

PYPRUNE_ISA_VARIANTS(edit_targets_dispatch,
                     (const Tokens& in, const Tokens& out, int64_t pad, int64_t unk,
                      const Targets& targets, Workspace* ws, int64_t begin, int64_t end),
                     (in, out, pad, unk, targets, ws, begin, end), edit_targets_impl)
PYPRUNE_ISA_VARIANTS(edit_distance_dispatch,
                     (const Tokens& x, const Tokens& y, int64_t pad, int64_t sub_cost,
                      int64_t* distance, Workspace* ws, int64_t begin, int64_t end),
                     (x, y, pad, sub_cost, distance, ws, begin, end), edit_distance_impl)
PYPRUNE_ISA_VARIANTS(edit_path_dispatch,
                     (const Tokens& in, const Tokens& out, int64_t pad, int64_t* slots,
                      int64_t* deleted, Workspace* ws, int64_t begin, int64_t end),
                     (in, out, pad, slots, deleted, ws, begin, end), edit_path_impl)

void edit_targets(const Tokens& in, const Tokens& out, int64_t padding_idx, int64_t unk_idx,
                  const Targets& targets, Workspace* ws, int64_t begin, int64_t end) {
  edit_targets_dispatch(in, out, padding_idx, unk_idx, targets, ws, begin, end);
}

void edit_distance(const Tokens& x, const Tokens& y, int64_t padding_idx, int64_t sub_cost,
                   int64_t* distance, Workspace* ws, int64_t begin, int64_t end) {
  edit_distance_dispatch(x, y, padding_idx, sub_cost, distance, ws, begin, end);
}

void edit_path(const Tokens& in, const Tokens& out, int64_t padding_idx, int64_t* insert_slot,
               int64_t* deleted, Workspace* ws, int64_t begin, int64_t end) {
  edit_path_dispatch(in, out, padding_idx, insert_slot, deleted, ws, begin, end);
}


// ---------------------------------------------------------------- applying edits

namespace {

constexpr int64_t kUnbounded = std::numeric_limits<int64_t>::max();

// Tokens of a left-packed row before its padding.
PYPRUNE_INLINE int64_t row_length(const int64_t* row, int64_t width, int64_t padding_idx) {
  int64_t n = 0;
  while (n < width && row[n] != padding_idx) ++n;
  return n;
}

// Placeholders before each token of a row (slot k: before token k + 1), cut at `room`.
template <typename Take>
PYPRUNE_INLINE int64_t for_insertions(const int64_t* counts, int64_t n, int64_t room, Take take) {
  int64_t used = 0;
  for (int64_t k = 0; k + 1 < n; ++k) {
    const int64_t c = std::min(std::max<int64_t>(counts[k], 0), room - used);
    take(k, c);
    used += c;
  }
  return used;
}

}  // namespace

FramingProblem check_framing(const Tokens& in, int64_t padding_idx, int64_t bos_idx, int64_t eos_idx) {
  FramingProblem first[5];
  const auto note = [&](FramingProblem::Kind kind, int64_t b, int64_t token) {
    if (first[kind].row < 0) first[kind] = FramingProblem{kind, b, token};
  };
  for (int64_t b = 0; b < in.rows; ++b) {
    const int64_t* row = in.data + b * in.stride;
    const int64_t n = row_length(row, in.width, padding_idx);
    if (n == 0) {
      bool any = false;
      for (int64_t k = 0; k < in.width && !any; ++k) any = row[k] != padding_idx;
      note(any ? FramingProblem::kTokenAfterPadding : FramingProblem::kEmptyRow, b, 0);
      continue;
    }
    for (int64_t k = n; k < in.width; ++k) {
      if (row[k] != padding_idx) {
        note(FramingProblem::kTokenAfterPadding, b, row[k]);
        break;
      }
    }
    if (row[n - 1] != eos_idx) note(FramingProblem::kNoEos, b, row[n - 1]);
    if (bos_idx >= 0 && row[0] != bos_idx) note(FramingProblem::kNoBos, b, row[0]);
  }
  for (int kind = FramingProblem::kEmptyRow; kind <= FramingProblem::kNoBos; ++kind) {
    if (first[kind].row >= 0) return first[kind];
  }
  return FramingProblem{};
}

void apply_del_words(const Tokens& in, const int64_t* del, int64_t padding_idx, int64_t bos_idx,
                     int64_t eos_idx, int64_t* out, int64_t* target, int64_t begin, int64_t end) {
  const int64_t L = in.width;
  for (int64_t b = begin; b < end; ++b) {
    const int64_t* row = in.data + b * in.stride;
    const int64_t* flags = del + b * L;
    int64_t* o = out + b * L;
    int64_t* t = target + b * L;
    int64_t j = 0;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t token = row[k];
      const bool keep = (flags[k] == 0 && token != padding_idx) || token == bos_idx || token == eos_idx;
      t[k] = keep ? j : L;
      if (keep) o[j++] = token;
    }
    std::fill(o + j, o + L, padding_idx);
  }
}

int64_t ins_masks_width(const Tokens& in, const int64_t* counts, int64_t padding_idx) {
  const int64_t gaps = std::max<int64_t>(in.width - 1, 0);
  int64_t width = in.rows ? 0 : in.width;
  for (int64_t b = 0; b < in.rows; ++b) {
    const int64_t n = row_length(in.data + b * in.stride, in.width, padding_idx);
    const int64_t inserted = for_insertions(counts + b * gaps, n, kUnbounded, [](int64_t, int64_t) {});
    width = std::max(width, inserted > kUnbounded - n ? kUnbounded : n + inserted);
  }
  return width;
}

void apply_ins_masks(const Tokens& in, const int64_t* counts, int64_t padding_idx, int64_t unk_idx,
                     int64_t max_length, int64_t width, int64_t* out, int64_t* target, int64_t begin,
                     int64_t end) {
  const int64_t L = in.width, gaps = std::max<int64_t>(L - 1, 0);
  for (int64_t b = begin; b < end; ++b) {
    const int64_t* row = in.data + b * in.stride;
    const int64_t n = row_length(row, L, padding_idx);
    const int64_t room = max_length < 0 ? kUnbounded : std::max<int64_t>(max_length - n, 0);
    int64_t* o = out + b * width;
    int64_t* t = target + b * L;
    int64_t j = 0;
    if (n > 0) {
      o[j] = row[0];
      t[0] = j++;
    }
    for_insertions(counts + b * gaps, n, room, [&](int64_t k, int64_t c) {
      for (int64_t p = 0; p < c; ++p) o[j++] = unk_idx;
      o[j] = row[k + 1];
      t[k + 1] = j++;
    });
    std::fill(o + j, o + width, padding_idx);
    std::fill(t + n, t + L, width);
  }
}

}  // namespace lev
}  // namespace pyprune
