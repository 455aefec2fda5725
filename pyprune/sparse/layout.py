"""Block layouts: the index lists block-sparse kernels iterate over.

A block mask is a bool tensor (rows / 32, cols / 32) over a weight of shape
(rows, cols); True marks a live 32x32 block. From it, on the mask's device
and without a host synchronisation:

- row_indices[r, :row_counts[r]]: the live block columns of block row r, in
  increasing order (the rest of the row is padding);
- col_indices[c, :col_counts[c]]: the live block rows of block column c.

Layouts are cached per mask tensor and rebuilt when the mask is modified
(tracked through the tensor's version counter).
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK = 32


@dataclass(frozen=True)
class BlockLayout:
    mask: Tensor          # (R, C) bool, a private copy
    row_indices: Tensor   # (R, C) int32
    row_counts: Tensor    # (R,) int32
    col_indices: Tensor   # (C, R) int32
    col_counts: Tensor    # (C,) int32

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape[0] * BLOCK, self.mask.shape[1] * BLOCK

    @functools.cached_property
    def live_features(self) -> tuple[Tensor, Tensor]:
        """Element indices of the output rows and input columns that hold at
        least one live block (for the compacted dense path)."""
        rows = self.mask.any(1).repeat_interleave(BLOCK).nonzero().squeeze(1)
        cols = self.mask.any(0).repeat_interleave(BLOCK).nonzero().squeeze(1)
        return rows, cols

    @functools.cached_property
    def block_counts(self) -> tuple[int, int, int]:
        """(live blocks, block rows with a live block, block columns with one);
        read back to the host once per layout."""
        return int(self.mask.sum()), int(self.mask.any(1).sum()), int(self.mask.any(0).sum())

    @functools.cached_property
    def path_choices(self) -> dict:
        """Memo of choose_path results for this layout."""
        return {}

    @functools.cached_property
    def compact_mask(self) -> "Tensor | None":
        """The mask restricted to live block rows and columns, or None when
        every block there is live."""
        sub = self.mask[self.mask.any(1)][:, self.mask.any(0)]
        return None if bool(sub.all()) else sub

    def density(self) -> float:
        """Fraction of live blocks (reads the mask back to the host)."""
        return float(self.mask.float().mean()) if self.mask.numel() else 0.0


def _live_first(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the indices of True entries first (in order), and their count."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    return order.to(torch.int32).contiguous(), mask.sum(dim=1, dtype=torch.int32)


def build_layout(mask: Tensor) -> BlockLayout:
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"block_mask: expected a 2-D bool tensor, got dtype {mask.dtype} and shape {tuple(mask.shape)}")
    mask = mask.detach().clone()
    row_indices, row_counts = _live_first(mask)
    col_indices, col_counts = _live_first(mask.t())
    return BlockLayout(mask, row_indices, row_counts, col_indices, col_counts)


# id(mask) -> (weak reference to the mask, its version when built, layout).
# Keyed by id because tensors compare elementwise; the weak reference both
# confirms the id still names the same tensor and drops the entry with it.
_cache: dict[int, tuple[weakref.ref, int, BlockLayout]] = {}


def layout_for(mask: Tensor) -> BlockLayout:
    """The cached layout of `mask`, rebuilt if the mask changed since."""
    key = id(mask)
    entry = _cache.get(key)
    if entry is not None and entry[0]() is mask and entry[1] == mask._version:
        return entry[2]
    layout = build_layout(mask)
    _cache[key] = (weakref.ref(mask, lambda _, key=key: _cache.pop(key, None)), mask._version, layout)
    return layout


def nonzero_blocks(weight: Tensor) -> Tensor:
    """(N/32, K/32) bool: which 32x32 blocks of `weight` (N, K), both multiples of 32, hold a nonzero."""
    N, K = weight.shape
    return weight.reshape(N // BLOCK, BLOCK, K // BLOCK, BLOCK).ne(0).any(dim=3).any(dim=1)


def expand_mask(mask: Tensor) -> Tensor:
    """(R, C) block mask -> (R*32, C*32) element mask."""
    return mask.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
