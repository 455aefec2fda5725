"""Straightforward Python references of the Levenshtein kernels.

Signatures and outputs match ``torch.ops.pyprune_C.lev_*``. Each pair is
labelled with the full distance matrix and libnat's rule (insert = delete = 1,
substitute = 2; walking back from the end: insert if d[i][j-1] < d[i][j], else
delete if d[i-1][j] < d[i][j], else keep). Runs on any device by moving the
tokens to the host.

The apply references edit whole batches with prefix sums and scatters on the
tokens' own device; on CUDA, where no apply kernel exists, they are what runs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pyprune._validation import fail


def _rows(tokens: Tensor, padding_idx: int) -> list[list[int]]:
    return [[t for t in row if t != padding_idx] for row in tokens.tolist()]


def distance_matrix(x: list[int], y: list[int], sub_cost: int = 2) -> list[list[int]]:
    d = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(len(x) + 1):
        d[i][0] = i
    for j in range(len(y) + 1):
        d[0][j] = j
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            substitute = d[i - 1][j - 1] + (0 if x[i - 1] == y[j - 1] else sub_cost)
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, substitute)
    return d


def edit_path(x: list[int], y: list[int]) -> tuple[list[list[int]], list[int]]:
    """libnat's path: (tokens inserted before x[k] for k = 0..|x|, delete flag per x token)."""
    d = distance_matrix(x, y)
    slots: list[list[int]] = [[] for _ in range(len(x) + 1)]
    deleted = [0] * len(x)
    i, j = len(x), len(y)
    while i > 0 or j > 0:
        if j > 0 and d[i][j - 1] < d[i][j]:
            slots[i].insert(0, y[j - 1])
            j -= 1
        elif i > 0 and d[i - 1][j] < d[i][j]:
            deleted[i - 1] = 1
            i -= 1
        else:
            i, j = i - 1, j - 1
    return slots, deleted


def lev_edit_targets(in_tokens: Tensor, out_tokens: Tensor, padding_idx: int,
                     unk_idx: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    in_width, out_width = in_tokens.shape[1], out_tokens.shape[1]
    masks, ins, dels = [], [], []
    for x, y in zip(_rows(in_tokens, padding_idx), _rows(out_tokens, padding_idx)):
        slots, deleted = edit_path(x, y)
        counts = [len(slot) for slot in slots[1:-1]]  # the gaps between draft tokens
        mask: list[int] = []
        for count in counts:
            mask += [0] + [1] * count
        masks.append((mask + [0] * out_width)[:out_width])
        ins.append((counts + [0] * in_width)[: max(in_width - 1, 0)])
        dels.append((deleted + [0] * out_width)[:out_width])
    batch = in_tokens.shape[0]
    mask_tensor = torch.tensor(masks, dtype=torch.bool).reshape(batch, out_width).to(out_tokens.device)
    return (mask_tensor,
            out_tokens.masked_fill(mask_tensor, unk_idx),
            torch.tensor(ins, dtype=torch.long).reshape(batch, max(in_width - 1, 0)).to(in_tokens.device),
            torch.tensor(dels, dtype=torch.long).reshape(batch, out_width).to(out_tokens.device))


def lev_edit_distance(x: Tensor, y: Tensor, padding_idx: int, sub_cost: int) -> Tensor:
    distances = [distance_matrix(a, b, sub_cost)[-1][-1]
                 for a, b in zip(_rows(x, padding_idx), _rows(y, padding_idx))]
    return torch.tensor(distances, dtype=torch.long, device=x.device)


def lev_edit_path(in_tokens: Tensor, out_tokens: Tensor, padding_idx: int) -> tuple[Tensor, Tensor]:
    slots_out = torch.full(out_tokens.shape, -1, dtype=torch.long)
    deleted_out = torch.zeros(in_tokens.shape, dtype=torch.long)
    for b, (x, y) in enumerate(zip(_rows(in_tokens, padding_idx), _rows(out_tokens, padding_idx))):
        slots, deleted = edit_path(x, y)
        deleted_out[b, : len(deleted)] = torch.tensor(deleted, dtype=torch.long)
        # Reference tokens not inserted are kept; inserted ones appear in y order.
        position = 0
        for k in range(len(x) + 1):
            position += len(slots[k])
            for offset in range(len(slots[k])):
                slots_out[b, position - len(slots[k]) + offset] = k
            if k < len(x) and not deleted[k]:
                position += 1  # x[k] is matched to the next reference token
    return slots_out.to(out_tokens.device), deleted_out.to(in_tokens.device)


def check_framing(tokens: Tensor, padding_idx: int, bos_idx: Optional[int], eos_idx: int) -> None:
    """Rows must hold a token, be left-packed, end with eos before their padding and start with bos (when
    given); each check runs over all rows before the next (as the kernels' ``check_framing``), and the
    first failing row is named. On the host only: on another device nothing is checked (no
    synchronisation)."""
    if tokens.device.type != "cpu" or torch.compiler.is_compiling() or tokens.shape[0] == 0:
        return
    present = tokens.ne(padding_idx)
    lengths = present.sum(1)
    if bool((lengths == 0).any()):
        fail("in_tokens", "rows holding at least eos", f"an all-padding row {int((lengths == 0).nonzero()[0])}")
    after_padding = (present[:, 1:] & ~present[:, :-1]).any(1)
    if bool(after_padding.any()):
        fail("in_tokens", "left-packed rows (padding only at the end)",
             f"row {int(after_padding.nonzero()[0])} with a token after its padding")
    last = tokens.gather(1, (lengths - 1)[:, None]).squeeze(1)
    if bool((last != eos_idx).any()):
        row = int((last != eos_idx).nonzero()[0])
        fail("in_tokens", f"rows ending in eos ({eos_idx}) before their padding", f"row {row} ends in {int(last[row])}")
    if bos_idx is not None and bos_idx >= 0 and bool((tokens[:, 0] != bos_idx).any()):
        row = int((tokens[:, 0] != bos_idx).nonzero()[0])
        fail("in_tokens", f"rows starting with bos ({bos_idx})", f"row {row} starts with {int(tokens[row, 0])}")


def lev_apply_del_words(in_tokens: Tensor, word_del_pred: Tensor, padding_idx: int, bos_idx: int,
                        eos_idx: int) -> tuple[Tensor, Tensor]:
    check_framing(in_tokens, padding_idx, bos_idx, eos_idx)
    B, L = in_tokens.shape
    keep = word_del_pred.eq(0) & in_tokens.ne(padding_idx)
    keep = keep | in_tokens.eq(bos_idx) | in_tokens.eq(eos_idx)
    # Destination of each kept token: its rank among the kept tokens of its row.
    target = torch.where(keep, keep.long().cumsum(1) - 1, L)          # L: a spill column
    out_tokens = in_tokens.new_full((B, L + 1), padding_idx).scatter_(1, target, in_tokens)[:, :L]
    return out_tokens.contiguous(), target


def lev_apply_ins_masks(in_tokens: Tensor, mask_ins_pred: Tensor, padding_idx: int, unk_idx: int, eos_idx: int,
                        max_length: Optional[int]) -> tuple[Tensor, Tensor]:
    check_framing(in_tokens, padding_idx, None, eos_idx)
    B, L = in_tokens.shape
    present = in_tokens.ne(padding_idx)
    counts = mask_ins_pred.clamp(min=0).masked_fill(~present[:, 1:], 0)
    in_lengths = present.sum(1)
    if max_length is not None:
        # Drop insertions from the end of the row until it fits.
        room = (max_length - in_lengths).clamp(min=0)
        before = counts.cumsum(1) - counts
        counts = torch.minimum(counts, (room[:, None] - before).clamp(min=0))
    width = max_length if max_length is not None else int((in_lengths + counts.sum(1)).max()) if B else L
    # Token k (k >= 1) moves right by the placeholders inserted before it.
    shift = torch.cat([counts.new_zeros(B, 1), counts.cumsum(1)], dim=1)
    target = torch.arange(L, device=in_tokens.device)[None] + shift
    target = torch.where(present, target, width)                        # spill column
    positions = torch.arange(width, device=in_tokens.device)[None]
    out_lengths = in_lengths + counts.sum(1)
    base = torch.where(positions < out_lengths[:, None], unk_idx, padding_idx).to(in_tokens.dtype)
    out_tokens = torch.cat([base, base.new_zeros(B, 1)], 1).scatter_(1, target, in_tokens)[:, :width]
    return out_tokens.contiguous(), target
