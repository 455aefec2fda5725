// CPU registrations of the Levenshtein kernel ops, parallel over pairs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <memory>

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

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_C, CPU, m) {
  m.impl("lev_edit_targets", &edit_targets_op);
  m.impl("lev_edit_distance", &edit_distance_op);
  m.impl("lev_edit_path", &edit_path_op);
}

}  // namespace lev
}  // namespace pyprune
