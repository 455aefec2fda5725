// Levenshtein edit labels and edit distance: the torch-free interface.
//
// A pair is one row of `in` (the draft x) and one row of `out` (the reference
// y); padding tokens are dropped wherever they stand. The edit path is the one
// fairseq's libnat labels (insert = delete = 1, substitute = 2): walking back
// from (|x|, |y|), insert if d[i][j-1] < d[i][j], else delete if
// d[i-1][j] < d[i][j], else keep. With substitution costing 2,
// d[i][j] = i + j - 2 LCS(i, j), so the tests become LCS comparisons, and the
// LCS table is computed bit-parallel (Allison-Dix / Hyyro): 64 cells of a
// column per machine word, O(|y| * ceil(|x| / 64)) per pair.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PYPRUNE_LEV_HOST_DEVICE __host__ __device__
#else
#define PYPRUNE_LEV_HOST_DEVICE
#endif

namespace pyprune {
namespace lev {

// Carries of a multi-word addition done one word per lane (32 lanes): bit k of
// `generate` says word k overflows by itself, bit k of `propagate` that it is
// all ones (so an incoming carry passes through). Returns bit k = the carry
// into word k (bit 0 = carry_in) and bit 32 = the carry out of the group.
// It is the carry pattern of the 32-bit addition (g | p) + g + carry_in.
PYPRUNE_LEV_HOST_DEVICE inline uint64_t lane_carries(uint32_t generate, uint32_t propagate,
                                                     uint32_t carry_in) {
  const uint64_t either = uint64_t(generate | propagate);
  return (either + uint64_t(generate) + carry_in) ^ either ^ uint64_t(generate);
}

// Row-major token matrix; row b starts at data + b * stride.
struct Tokens {
  const int64_t* data = nullptr;
  int64_t rows = 0;
  int64_t width = 0;
  int64_t stride = 0;
};

// Outputs of the labelling kernel (any may be null to skip it). Widths:
// in_width = in.width, out_width = out.width.
struct Targets {
  bool* masked_tgt_masks = nullptr;     // [B, out_width]
  int64_t* masked_tgt_tokens = nullptr;  // [B, out_width]
  int64_t* mask_ins_targets = nullptr;   // [B, in_width - 1]
  int64_t* word_del_targets = nullptr;   // [B, out_width]
};

// Per-thread scratch reused across pairs (no allocation in the pair loop once
// it has grown to the longest pair).
class Workspace;
Workspace* workspace_create();
void workspace_destroy(Workspace* ws);

// Labels of pairs [begin, end): fairseq's _get_ins_targets and
// _get_del_targets. masked_tgt_masks marks, laid over the reference, the
// tokens inserted between consecutive draft tokens; masked_tgt_tokens is the
// reference with those tokens replaced by unk; mask_ins_targets[k] is the
// number of tokens to insert between draft tokens k and k+1; word_del_targets
// flags the draft tokens to delete. Lists longer than their row are cut.
void edit_targets(const Tokens& in, const Tokens& out, int64_t padding_idx, int64_t unk_idx,
                  const Targets& targets, Workspace* ws, int64_t begin, int64_t end);

// Edit distance of pairs [begin, end) with insert = delete = 1 and substitute
// = sub_cost (>= 2: the LCS distance, bit-parallel; otherwise a DP row).
void edit_distance(const Tokens& x, const Tokens& y, int64_t padding_idx, int64_t sub_cost,
                   int64_t* distance, Workspace* ws, int64_t begin, int64_t end);

// The path itself, for libnat's suggested_ed2_path, for pairs [begin, end):
// insert_slot[b, j] = k when reference token j is inserted before draft token
// k (k = |x|: after the last), -1 when it is kept; deleted[b, i] flags draft
// token i. Indices count non-padding tokens; the rest of each row is -1 / 0.
void edit_path(const Tokens& in, const Tokens& out, int64_t padding_idx, int64_t* insert_slot,
               int64_t* deleted, Workspace* ws, int64_t begin, int64_t end);

// ---------------------------------------------------------------- applying edits
// The apply kernels take left-packed rows: [bos] tokens [eos], then padding.

// The first thing wrong with a batch's framing, in the order the checks run
// over all rows: an all-padding row, a token after padding, a row whose last
// token is not eos, a row whose first token is not bos (bos_idx < 0: not
// checked). `row` is the first row with that problem, `token` the offending
// token (for the last two).
struct FramingProblem {
  enum Kind : int32_t { kNone = 0, kEmptyRow, kTokenAfterPadding, kNoEos, kNoBos };
  Kind kind = kNone;
  int64_t row = -1;
  int64_t token = 0;
};
FramingProblem check_framing(const Tokens& in, int64_t padding_idx, int64_t bos_idx, int64_t eos_idx);

// Rows [begin, end) with the flagged tokens deleted and the rest left-packed
// (width in.width): a token stays when its flag is 0 and it is not padding, or
// when it is bos or eos. `del` holds one flag per token, rows contiguous;
// out (rows, in.width) gets the tokens then padding, target (rows, in.width)
// each input token's output column or in.width where it was dropped.
void apply_del_words(const Tokens& in, const int64_t* del, int64_t padding_idx, int64_t bos_idx,
                     int64_t eos_idx, int64_t* out, int64_t* target, int64_t begin, int64_t end);

// The placeholders inserted before token k >= 1 of a row: counts[k - 1]
// (negative counts insert none), cut so the row holds at most `max_length`
// tokens (max_length < 0: no cut) by dropping insertions from the end.
// `counts` holds in.width - 1 per row, rows contiguous.
int64_t ins_masks_width(const Tokens& in, const int64_t* counts, int64_t padding_idx);  // longest result

// Rows [begin, end) with the placeholders (unk_idx) inserted: out (rows,
// width) gets the result then padding, target (rows, in.width) each input
// token's output column or `width` for padding. `width` must hold every
// result (ins_masks_width, or max_length when one is given).
void apply_ins_masks(const Tokens& in, const int64_t* counts, int64_t padding_idx, int64_t unk_idx,
                     int64_t max_length, int64_t width, int64_t* out, int64_t* target, int64_t begin,
                     int64_t end);

}  // namespace lev
}  // namespace pyprune
