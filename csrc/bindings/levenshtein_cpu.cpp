// CPU registrations of the Levenshtein kernel ops, parallel over pairs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <optional>

#include "levenshtein_common.h"

namespace pyprune {
namespace lev {
namespace {

struct WorkspaceDeleter {
  void operator()(Workspace* ws) const { workspace_destroy(ws); }
};
using WorkspacePtr = std::unique_ptr<Workspace, WorkspaceDeleter>;

// Runs fn(workspace, begin, end) over the rows in parallel, one workspace per chunk.
template <typename Fn>
void for_pairs(int64_t rows, Fn fn) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    WorkspacePtr ws(workspace_create());
    fn(ws.get(), begin, end);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> edit_targets_op(
    const at::Tensor& in_tokens, const at::Tensor& out_tokens, int64_t padding_idx, int64_t unk_idx) {
  const Tokens in = tokens_of(in_tokens, "in_tokens"), out = tokens_of(out_tokens, "out_tokens");
  check_pair(in_tokens, out_tokens);
  const auto options = in_tokens.options();
  auto masks = at::empty({out.rows, out.width}, options.dtype(at::kBool));
  auto masked_tokens = at::empty({out.rows, out.width}, options);
  auto ins = at::empty({in.rows, std::max<int64_t>(in.width - 1, 0)}, options);
  auto del = at::empty({out.rows, out.width}, options);
  Targets targets;
  targets.masked_tgt_masks = masks.data_ptr<bool>();
  targets.masked_tgt_tokens = masked_tokens.data_ptr<int64_t>();
  targets.mask_ins_targets = ins.data_ptr<int64_t>();
  targets.word_del_targets = del.data_ptr<int64_t>();
  for_pairs(in.rows, [&](Workspace* ws, int64_t begin, int64_t end) {
    edit_targets(in, out, padding_idx, unk_idx, targets, ws, begin, end);
  });
  return {masks, masked_tokens, ins, del};
}

at::Tensor edit_distance_op(const at::Tensor& x, const at::Tensor& y, int64_t padding_idx,
                            int64_t sub_cost) {
  const Tokens xs = tokens_of(x, "x"), ys = tokens_of(y, "y");
  check_pair(x, y);
  TORCH_CHECK(sub_cost >= 0, "pyprune_C: sub_cost must be >= 0");
  auto distance = at::empty({xs.rows}, x.options());
  for_pairs(xs.rows, [&](Workspace* ws, int64_t begin, int64_t end) {
    edit_distance(xs, ys, padding_idx, sub_cost, distance.data_ptr<int64_t>(), ws, begin, end);
  });
  return distance;
}

std::tuple<at::Tensor, at::Tensor> edit_path_op(const at::Tensor& in_tokens,
                                                const at::Tensor& out_tokens, int64_t padding_idx) {
  const Tokens in = tokens_of(in_tokens, "in_tokens"), out = tokens_of(out_tokens, "out_tokens");
  check_pair(in_tokens, out_tokens);
  auto slots = at::empty({out.rows, out.width}, out_tokens.options());
  auto deleted = at::empty({in.rows, in.width}, in_tokens.options());
  for_pairs(in.rows, [&](Workspace* ws, int64_t begin, int64_t end) {
    edit_path(in, out, padding_idx, slots.data_ptr<int64_t>(), deleted.data_ptr<int64_t>(), ws,
              begin, end);
  });
  return {slots, deleted};
}

// Framing errors read like the Python checks': "<argument>: expected ..., got ...".
void check_rows(const Tokens& in, int64_t padding_idx, int64_t bos_idx, int64_t eos_idx) {
  const FramingProblem p = check_framing(in, padding_idx, bos_idx, eos_idx);
  TORCH_CHECK_VALUE(p.kind != FramingProblem::kEmptyRow,
                    "in_tokens: expected rows holding at least eos, got an all-padding row ", p.row);
  TORCH_CHECK_VALUE(p.kind != FramingProblem::kTokenAfterPadding,
                    "in_tokens: expected left-packed rows (padding only at the end), got row ", p.row,
                    " with a token after its padding");
  TORCH_CHECK_VALUE(p.kind != FramingProblem::kNoEos, "in_tokens: expected rows ending in eos (", eos_idx,
                    ") before their padding, got row ", p.row, " ends in ", p.token);
  TORCH_CHECK_VALUE(p.kind != FramingProblem::kNoBos, "in_tokens: expected rows starting with bos (", bos_idx,
                    "), got row ", p.row, " starts with ", p.token);
}

void check_edits(const at::Tensor& edits, const at::Tensor& in_tokens, int64_t width, const char* name) {
  TORCH_CHECK(edits.scalar_type() == at::kLong && edits.is_contiguous() && edits.dim() == 2 &&
                  edits.size(0) == in_tokens.size(0) && edits.size(1) == width &&
                  edits.device() == in_tokens.device(),
              "pyprune_C: ", name, " must be a contiguous int64 (", in_tokens.size(0), ", ", width,
              ") tensor on the device of in_tokens");
}

std::tuple<at::Tensor, at::Tensor> apply_del_words_op(const at::Tensor& in_tokens, const at::Tensor& word_del_pred,
                                                      int64_t padding_idx, int64_t bos_idx, int64_t eos_idx) {
  const Tokens in = tokens_of(in_tokens, "in_tokens");
  check_edits(word_del_pred, in_tokens, in.width, "word_del_pred");
  check_rows(in, padding_idx, bos_idx, eos_idx);
  auto out = at::empty({in.rows, in.width}, in_tokens.options());
  auto target = at::empty({in.rows, in.width}, in_tokens.options());
  at::parallel_for(0, in.rows, 64, [&](int64_t begin, int64_t end) {
    apply_del_words(in, word_del_pred.data_ptr<int64_t>(), padding_idx, bos_idx, eos_idx,
                    out.data_ptr<int64_t>(), target.data_ptr<int64_t>(), begin, end);
  });
  return {out, target};
}

std::tuple<at::Tensor, at::Tensor> apply_ins_masks_op(const at::Tensor& in_tokens, const at::Tensor& mask_ins_pred,
                                                      int64_t padding_idx, int64_t unk_idx, int64_t eos_idx,
                                                      std::optional<int64_t> max_length) {
  const Tokens in = tokens_of(in_tokens, "in_tokens");
  check_edits(mask_ins_pred, in_tokens, std::max<int64_t>(in.width - 1, 0), "mask_ins_pred");
  TORCH_CHECK(!max_length || *max_length >= in.width, "pyprune_C: max_length must be >= in_tokens.size(1)");
  check_rows(in, padding_idx, -1, eos_idx);
  const int64_t* counts = mask_ins_pred.data_ptr<int64_t>();
  const int64_t width = max_length ? *max_length : ins_masks_width(in, counts, padding_idx);
  TORCH_CHECK_VALUE(width <= (int64_t(1) << 40) / std::max<int64_t>(in.rows, 1),
                    "mask_ins_pred: expected counts whose results fit in memory, got a row of ", width,
                    " tokens");
  auto out = at::empty({in.rows, width}, in_tokens.options());
  auto target = at::empty({in.rows, in.width}, in_tokens.options());
  at::parallel_for(0, in.rows, 64, [&](int64_t begin, int64_t end) {
    apply_ins_masks(in, counts, padding_idx, unk_idx, max_length.value_or(-1), width, out.data_ptr<int64_t>(),
                    target.data_ptr<int64_t>(), begin, end);
  });
  return {out, target};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_C, CPU, m) {
  m.impl("lev_edit_targets", &edit_targets_op);
  m.impl("lev_edit_distance", &edit_distance_op);
  m.impl("lev_edit_path", &edit_path_op);
  m.impl("lev_apply_del_words", &apply_del_words_op);
  m.impl("lev_apply_ins_masks", &apply_ins_masks_op);
}

}  // namespace lev
}  // namespace pyprune
