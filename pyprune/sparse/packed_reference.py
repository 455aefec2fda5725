"""Reference of the packed block-sparse linear kernel (``pyprune_C::bsr_linear``): the dense weight is
rebuilt from the packed blocks and multiplied as usual; any device, any floating dtype."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import BLOCK


def unpack_weight(blocks: Tensor, row_ptr: Tensor, col_index: Tensor, in_features: int) -> Tensor:
    """(out_features, in_features) dense weight of packed blocks (dead blocks zero)."""
    rows = row_ptr.numel() - 1
    block_rows = torch.repeat_interleave(torch.arange(rows, device=blocks.device), row_ptr.diff())
    dense = blocks.new_zeros(rows, in_features // BLOCK, BLOCK, BLOCK)     # (r, c, k, n)
    dense[block_rows, col_index] = blocks
    return dense.permute(0, 3, 1, 2).reshape(rows * BLOCK, in_features)    # (r, n, c, k)


def bsr_linear(x: Tensor, blocks: Tensor, row_ptr: Tensor, col_index: Tensor, bias: Optional[Tensor],
               activation: str = "none") -> Tensor:
    y = F.linear(x, unpack_weight(blocks, row_ptr, col_index, x.shape[1]), bias)
    return F.gelu(y) if activation == "gelu" else y
