"""Packed block-sparse weights: a layer's live 32x32 blocks only, for inference on the CPU.

``pack_blocks(weight, block_mask)`` keeps each live block once, transposed,
in block-row order (block compressed rows: ``row_ptr``, ``col_index``);
``packed_block_linear(x, packed, bias)`` computes ``x W^T + bias`` from them
with the C++ kernel (``csrc/sparse``), which never reads a dead block and,
unlike the compacted dense path, gathers and scatters nothing per call. At
decoding's few dozen tokens a layer's cost is reading its weight, so this is
where block pruning pays on a CPU. No autograd: ``BlockSparseLinear`` uses
it only when nothing needs a gradient. The reference
(``packed_reference.bsr_linear``) runs on other devices and dtypes, or with
the ``cpp`` backend disabled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .._validation import fail
from ..ops._registry import define
from . import packed_reference
from .layout import BLOCK

KERNEL_DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class PackedBlocks:
    """A (out_features, in_features) weight as its live blocks: ``blocks`` (live, 32, 32) with
    ``blocks[b, k, n] = W[32 r + n, 32 c + k]`` for block b in block row r, block column
    ``col_index[b]``; block row r owns blocks ``row_ptr[r]`` to ``row_ptr[r + 1] - 1``."""
    blocks: Tensor
    row_ptr: Tensor
    col_index: Tensor
    in_features: int

    @property
    def out_features(self) -> int:
        return (self.row_ptr.numel() - 1) * BLOCK


def pack_blocks(weight: Tensor, block_mask: Tensor) -> PackedBlocks:
    """The live blocks of `weight` (N, K) under `block_mask` (N/32, K/32) bool, packed."""
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[0] % BLOCK or weight.shape[1] % BLOCK:
        fail("weight", "a (out_features, in_features) tensor, both multiples of 32",
             tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__)
    shape = (weight.shape[0] // BLOCK, weight.shape[1] // BLOCK)
    if not isinstance(block_mask, Tensor) or block_mask.dtype != torch.bool or tuple(block_mask.shape) != shape:
        fail("block_mask", f"a bool tensor of shape {shape}",
             f"{block_mask.dtype} {tuple(block_mask.shape)}" if isinstance(block_mask, Tensor) else block_mask)
    with torch.no_grad():
        mask = block_mask.to(weight.device)
        tiles = weight.detach().reshape(shape[0], BLOCK, shape[1], BLOCK).permute(0, 2, 3, 1)   # (r, c, k, n)
        blocks = tiles[mask].contiguous()
        row_ptr = torch.cat([mask.new_zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)])
        col_index = mask.nonzero()[:, 1].contiguous()
    return PackedBlocks(blocks, row_ptr, col_index, weight.shape[1])


# What the kernel can apply to its outputs: "gelu" is torch's exact GELU (approximate="none"), computed in
# float32 with an erf within 1.5e-7 (gelu_lanes in csrc/common/vec.h) before the one rounding.
ACTIVATIONS = ("none", "gelu")


def _kernel_accepts(x: Tensor, blocks: Tensor, row_ptr: Tensor, col_index: Tensor, bias: Optional[Tensor],
                    activation: str = "none") -> bool:  # (the dispatcher drops defaults)
    return x.dtype in KERNEL_DTYPES and blocks.dtype == x.dtype and (bias is None or bias.dtype == x.dtype)


define("packed_block_linear",
       "(Tensor x, Tensor blocks, Tensor row_ptr, Tensor col_index, Tensor? bias, str activation=\"none\") -> Tensor",
       lambda k, x, blocks, row_ptr, col_index, bias, activation="none": k.bsr_linear(
           x, blocks, row_ptr, col_index, bias, activation),
       packed_reference, kernel_accepts=_kernel_accepts)


@torch.library.register_fake("pyprune::packed_block_linear")
def _(x, blocks, row_ptr, col_index, bias, activation="none"):
    return x.new_empty(x.shape[0], (row_ptr.shape[0] - 1) * BLOCK)


def check_activation(activation) -> str:
    if activation not in ACTIVATIONS:
        fail("activation", f"one of {ACTIVATIONS}", repr(activation))
    return activation


def packed_block_linear(x: Tensor, packed: PackedBlocks, bias: Optional[Tensor] = None,
                        activation: str = "none") -> Tensor:
    """``x W^T + bias`` for `x` (..., in_features) with W given as ``pack_blocks`` output, then `activation`
    (``ACTIVATIONS``: "gelu" applies torch's exact GELU to every output); no autograd."""
    check_activation(activation)
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != packed.in_features:
        fail("x", f"a (..., {packed.in_features}) tensor", tuple(x.shape) if isinstance(x, Tensor) else x)
    if not x.is_floating_point() or x.dtype != packed.blocks.dtype:
        fail("x", f"a {packed.blocks.dtype} tensor (the packed weight's dtype)", x.dtype)
    if bias is not None and (bias.shape != (packed.out_features,) or bias.dtype != x.dtype):
        fail("bias", f"a {x.dtype} tensor of shape ({packed.out_features},)", f"{bias.dtype} {tuple(bias.shape)}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, packed.blocks, bias)):
        fail("x", "tensors that need no gradient (packed_block_linear is for inference; use "
             "block_sparse_linear to train)", "a tensor that requires grad")
    y = torch.ops.pyprune.packed_block_linear(x.reshape(-1, packed.in_features), packed.blocks,
                                              packed.row_ptr, packed.col_index, bias, activation)
    return y.reshape(*x.shape[:-1], packed.out_features)
