"""Levenshtein edit ops for the Levenshtein editor (DEER's refinement stage).

Label ops reproduce fairseq's libnat labels exactly (same argument names,
shapes and outputs as fairseq's ``levenshtein_utils._get_ins_targets`` and
``_get_del_targets``) on batches, with a bit-parallel C++ kernel; apply ops
edit whole batches in one pass of a C++ kernel on the CPU (prefix sums and
scatters, ``levenshtein_reference``, elsewhere). Nothing is modified in place.

Label ops ignore padding wherever it stands in a row; apply ops take
left-packed rows ([bos] tokens [eos], then padding).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from pyprune._validation import fail

from . import levenshtein_reference
from ._registry import define

# --------------------------------------------------------------------------
# validation



def _check_tokens(name: str, tokens: Tensor, batch: Optional[int] = None) -> Tensor:
    if not isinstance(tokens, Tensor):
        fail(name, "a tensor", type(tokens).__name__)
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        fail(name, "an integer tensor of token ids", f"dtype {tokens.dtype}")
    if tokens.dim() != 2:
        fail(name, "shape (B, length)", f"shape {tuple(tokens.shape)}")
    if batch is not None and tokens.shape[0] != batch:
        fail(name, f"batch size {batch}", f"shape {tuple(tokens.shape)}")
    if tokens.device.type == "cpu" and not torch.compiler.is_compiling() and tokens.numel():
        low = int(tokens.min())
        if low < 0:
            fail(name, "non-negative token ids", f"min {low}")
    tokens = tokens.to(torch.long)
    return tokens if tokens.stride(-1) == 1 or tokens.numel() == 0 else tokens.contiguous()


def _check_index(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(name, "an int token id", type(value).__name__)
    if value < 0:
        fail(name, "a non-negative token id", value)
    return value


def _check_same_device(*named: tuple[str, Optional[Tensor]]) -> None:
    devices = {(name, t.device) for name, t in named if t is not None}
    if len({device for _, device in devices}) > 1:
        fail(named[1][0], f"a tensor on {named[0][1].device} like {named[0][0]}",
              ", ".join(f"{name} on {device}" for name, device in sorted(devices, key=str)))


# --------------------------------------------------------------------------
# ops


define("lev_edit_targets",
       "(Tensor in_tokens, Tensor out_tokens, int padding_idx, int unk_idx) -> (Tensor, Tensor, Tensor, Tensor)",
       lambda k, *args: k.lev_edit_targets(*args), levenshtein_reference)
define("lev_edit_distance", "(Tensor x, Tensor y, int padding_idx, int sub_cost) -> Tensor",
       lambda k, *args: k.lev_edit_distance(*args), levenshtein_reference)
define("lev_edit_path", "(Tensor in_tokens, Tensor out_tokens, int padding_idx) -> (Tensor, Tensor)",
       lambda k, *args: k.lev_edit_path(*args), levenshtein_reference)
define("lev_apply_del_words",
       "(Tensor in_tokens, Tensor word_del_pred, int padding_idx, int bos_idx, int eos_idx) -> (Tensor, Tensor)",
       lambda k, *args: k.lev_apply_del_words(*args), levenshtein_reference)
define("lev_apply_ins_masks",
       "(Tensor in_tokens, Tensor mask_ins_pred, int padding_idx, int unk_idx, int eos_idx, int? max_length) "
       "-> (Tensor, Tensor)",
       lambda k, *args: k.lev_apply_ins_masks(*args), levenshtein_reference)


@torch.library.register_fake("pyprune::lev_edit_targets")
def _(in_tokens, out_tokens, padding_idx, unk_idx):
    B, S = in_tokens.shape
    T = out_tokens.shape[1]
    return (out_tokens.new_empty(B, T, dtype=torch.bool), out_tokens.new_empty(B, T),
            in_tokens.new_empty(B, max(S - 1, 0)), out_tokens.new_empty(B, T))


@torch.library.register_fake("pyprune::lev_edit_distance")
def _(x, y, padding_idx, sub_cost):
    return x.new_empty(x.shape[0])


@torch.library.register_fake("pyprune::lev_edit_path")
def _(in_tokens, out_tokens, padding_idx):
    return out_tokens.new_empty(out_tokens.shape), in_tokens.new_empty(in_tokens.shape)


@torch.library.register_fake("pyprune::lev_apply_del_words")
def _(in_tokens, word_del_pred, padding_idx, bos_idx, eos_idx):
    return in_tokens.new_empty(in_tokens.shape), in_tokens.new_empty(in_tokens.shape)


@torch.library.register_fake("pyprune::lev_apply_ins_masks")
def _(in_tokens, mask_ins_pred, padding_idx, unk_idx, eos_idx, max_length):
    width = max_length if max_length is not None else torch.library.get_ctx().new_dynamic_size()
    return in_tokens.new_empty(in_tokens.shape[0], width), in_tokens.new_empty(in_tokens.shape)


def _check_pair(in_tokens: Tensor, out_tokens: Tensor, padding_idx: int) -> tuple[Tensor, Tensor]:
    in_tokens = _check_tokens("in_tokens", in_tokens)
    out_tokens = _check_tokens("out_tokens", out_tokens, in_tokens.shape[0])
    _check_same_device(("in_tokens", in_tokens), ("out_tokens", out_tokens))
    _check_index("padding_idx", padding_idx)
    return in_tokens, out_tokens


def get_edit_targets(in_tokens: Tensor, out_tokens: Tensor, padding_idx: int,
                     unk_idx: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Insertion and deletion labels from one edit path per pair.

    Args:
        in_tokens: (B, S) drafts; out_tokens: (B, T) references; int64 (other
            integer dtypes are converted); padding anywhere is ignored.
    Returns:
        masked_tgt_masks (B, T) bool, masked_tgt_tokens (B, T) int64,
        mask_ins_targets (B, S-1) int64, word_del_targets (B, T) int64: the
        outputs of :func:`get_ins_targets` and :func:`get_del_targets`.
    """
    in_tokens, out_tokens = _check_pair(in_tokens, out_tokens, padding_idx)
    _check_index("unk_idx", unk_idx)
    return torch.ops.pyprune.lev_edit_targets(in_tokens, out_tokens, padding_idx, unk_idx)


def get_ins_targets(in_tokens: Tensor, out_tokens: Tensor, padding_idx: int,
                    unk_idx: int) -> tuple[Tensor, Tensor, Tensor]:
    """fairseq's ``_get_ins_targets``: (masked_tgt_masks bool (B, T),
    masked_tgt_tokens (B, T), mask_ins_targets (B, S-1)).

    mask_ins_targets[b, k] counts the reference tokens to insert between draft
    tokens k and k+1; masked_tgt_masks marks those tokens in the reference and
    masked_tgt_tokens replaces them with unk_idx. Labels equal libnat's.
    """
    masks, tokens, ins, _ = get_edit_targets(in_tokens, out_tokens, padding_idx, unk_idx)
    return masks, tokens, ins


def get_del_targets(in_tokens: Tensor, out_tokens: Tensor, padding_idx: int) -> Tensor:
    """fairseq's ``_get_del_targets``: (B, T) int64, 1 for each draft token to
    delete (positions count the non-padding draft tokens; width T like fairseq)."""
    in_tokens, out_tokens = _check_pair(in_tokens, out_tokens, padding_idx)
    return torch.ops.pyprune.lev_edit_targets(in_tokens, out_tokens, padding_idx, padding_idx)[3]


def edit_distance(x: Tensor, y: Tensor, padding_idx: int, sub_cost: int = 2) -> Tensor:
    """(B,) int64 edit distances with insert = delete = 1 and substitute =
    sub_cost: 2 gives the LCS distance the labels use, 1 classic Levenshtein."""
    x = _check_tokens("x", x)
    y = _check_tokens("y", y, x.shape[0])
    _check_same_device(("x", x), ("y", y))
    _check_index("padding_idx", padding_idx)
    if isinstance(sub_cost, bool) or not isinstance(sub_cost, int) or sub_cost < 0:
        fail("sub_cost", "a non-negative int", sub_cost)
    return torch.ops.pyprune.lev_edit_distance(x, y, padding_idx, sub_cost)


def suggested_ed2_path(xs: Sequence[Sequence[int]], ys: Sequence[Sequence[int]],
                       terminal_symbol: int) -> list[list[list[int]]]:
    """libnat's ``suggested_ed2_path`` on lists of token lists.

    For each pair, |x| + 2 lists: list k (0..|x|) holds the tokens inserted
    before x[k] ([terminal_symbol] when none), the last one a delete flag per x
    token. As in libnat, an empty x gives [y, []].
    """
    if len(xs) != len(ys):
        fail("ys", f"{len(xs)} sequences like xs", f"{len(ys)}")
    every = [t for seq in list(xs) + list(ys) for t in seq]
    if any(isinstance(t, bool) or not isinstance(t, int) for t in every):
        fail("xs/ys", "lists of ints", "another element type")
    pad = min(every + [0]) - 1  # a value no sequence contains
    width_x = max([len(x) for x in xs] + [1])
    width_y = max([len(y) for y in ys] + [1])
    x_tensor = torch.full((len(xs), width_x), pad, dtype=torch.long)
    y_tensor = torch.full((len(ys), width_y), pad, dtype=torch.long)
    for b, (x, y) in enumerate(zip(xs, ys)):
        x_tensor[b, : len(x)] = torch.tensor(list(x), dtype=torch.long)
        y_tensor[b, : len(y)] = torch.tensor(list(y), dtype=torch.long)
    slots, deleted = torch.ops.pyprune.lev_edit_path(x_tensor - pad, y_tensor - pad, 0)
    result = []
    for b, (x, y) in enumerate(zip(xs, ys)):
        if len(x) == 0:
            result.append([list(y), []])
            continue
        lists: list[list[int]] = [[] for _ in range(len(x) + 1)]
        for j, slot in enumerate(slots[b, : len(y)].tolist()):
            if slot >= 0:
                lists[slot].append(y[j])
        lists = [slot if slot else [terminal_symbol] for slot in lists]
        lists.append(deleted[b, : len(x)].tolist())
        result.append(lists)
    return result


# --------------------------------------------------------------------------
# applying predicted edits


def _edits(name: str, pred: Tensor) -> Tensor:
    """Predicted edits (flags or counts, any integer or bool dtype) as the int64 the kernels read."""
    if pred.dtype.is_floating_point or pred.dtype.is_complex:
        fail(name, "an integer or bool tensor", f"dtype {pred.dtype}")
    return pred.to(torch.long).contiguous()


def apply_del_words(in_tokens: Tensor, in_scores: Optional[Tensor], in_attn: Optional[Tensor],
                    word_del_pred: Tensor, padding_idx: int, bos_idx: int,
                    eos_idx: int) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Delete the flagged tokens and left-pack each row (width unchanged).

    Rows are left-packed: bos, tokens, eos, then padding (anything else fails
    naming in_tokens). bos and eos are never deleted, padding always is.
    Scores and attention rows move with their tokens; vacated slots get
    padding_idx, 0 and 0.
    Shapes: in_tokens, word_del_pred (B, L); in_scores (B, L); in_attn (B, L, *).
    """
    in_tokens = _check_tokens("in_tokens", in_tokens)
    B, L = in_tokens.shape
    if word_del_pred.shape != (B, L):
        fail("word_del_pred", f"shape {(B, L)} like in_tokens", f"shape {tuple(word_del_pred.shape)}")
    for name, value in (("in_scores", in_scores), ("in_attn", in_attn)):
        if value is not None and tuple(value.shape[:2]) != (B, L):
            fail(name, f"leading shape {(B, L)} like in_tokens", f"shape {tuple(value.shape)}")
    _check_same_device(("in_tokens", in_tokens), ("word_del_pred", word_del_pred),
                       ("in_scores", in_scores), ("in_attn", in_attn))
    for name, value in (("padding_idx", padding_idx), ("bos_idx", bos_idx), ("eos_idx", eos_idx)):
        _check_index(name, value)
    flags = _edits("word_del_pred", word_del_pred)
    out_tokens, target = torch.ops.pyprune.lev_apply_del_words(in_tokens, flags, padding_idx, bos_idx, eos_idx)
    out_scores = out_attn = None
    if in_scores is not None:
        out_scores = in_scores.new_zeros(B, L + 1).scatter_(1, target, in_scores)[:, :L]
    if in_attn is not None:
        index = target.view(B, L, *([1] * (in_attn.dim() - 2))).expand_as(in_attn)
        spill = in_attn.new_zeros(B, L + 1, *in_attn.shape[2:])
        out_attn = spill.scatter_(1, index, in_attn)[:, :L]
    return out_tokens, out_scores, out_attn


def apply_ins_masks(in_tokens: Tensor, in_scores: Optional[Tensor], mask_ins_pred: Tensor,
                    padding_idx: int, unk_idx: int, eos_idx: int,
                    max_length: Optional[int] = None) -> tuple[Tensor, Optional[Tensor]]:
    """Insert mask_ins_pred[b, k] unk placeholders between tokens k and k+1.

    Rows are left-packed with bos first and eos last, then padding (as
    fairseq's decoder keeps them). Output width: the longest result, which on
    a GPU reads the lengths back to the host; pass max_length to fix the width
    and avoid that synchronisation (a row that would be longer drops
    insertions from its end so every input token is kept). Placeholders
    score 0.
    """
    in_tokens = _check_tokens("in_tokens", in_tokens)
    B, L = in_tokens.shape
    if mask_ins_pred.shape != (B, max(L - 1, 0)):
        fail("mask_ins_pred", f"shape {(B, max(L - 1, 0))} (one count per gap)",
              f"shape {tuple(mask_ins_pred.shape)}")
    if in_scores is not None and in_scores.shape != (B, L):
        fail("in_scores", f"shape {(B, L)} like in_tokens", f"shape {tuple(in_scores.shape)}")
    _check_same_device(("in_tokens", in_tokens), ("mask_ins_pred", mask_ins_pred),
                       ("in_scores", in_scores))
    for name, value in (("padding_idx", padding_idx), ("unk_idx", unk_idx), ("eos_idx", eos_idx)):
        _check_index(name, value)
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or max_length < L):
        fail("max_length", f"None or an int >= in_tokens.size(1) = {L}", max_length)
    counts = _edits("mask_ins_pred", mask_ins_pred)
    out_tokens, target = torch.ops.pyprune.lev_apply_ins_masks(in_tokens, counts, padding_idx, unk_idx, eos_idx,
                                                               max_length)
    out_scores = None
    if in_scores is not None:
        width = out_tokens.shape[1]
        out_scores = in_scores.new_zeros(B, width + 1).scatter_(1, target, in_scores)[:, :width]
    return out_tokens, out_scores


def apply_ins_words(in_tokens: Tensor, in_scores: Optional[Tensor], word_ins_pred: Tensor,
                    word_ins_scores: Optional[Tensor], unk_idx: int) -> tuple[Tensor, Optional[Tensor]]:
    """Fill every unk placeholder with the predicted word (and its score)."""
    in_tokens = _check_tokens("in_tokens", in_tokens)
    if word_ins_pred.shape != in_tokens.shape:
        fail("word_ins_pred", f"shape {tuple(in_tokens.shape)} like in_tokens",
              f"shape {tuple(word_ins_pred.shape)}")
    _check_index("unk_idx", unk_idx)
    holes = in_tokens.eq(unk_idx)
    out_tokens = torch.where(holes, word_ins_pred.to(in_tokens.dtype), in_tokens)
    out_scores = None
    if in_scores is not None:
        if word_ins_scores is None or word_ins_scores.shape != in_tokens.shape:
            fail("word_ins_scores", f"shape {tuple(in_tokens.shape)} when in_scores is given",
                  None if word_ins_scores is None else tuple(word_ins_scores.shape))
        out_scores = torch.where(holes, word_ins_scores.to(in_scores.dtype), in_scores)
    return out_tokens, out_scores
