"""Inference-only linear layers on the packed-blocks CPU kernel.

At decoding's token counts (1 to a few dozen rows) torch's dense GEMM is
far from the memory bound on a CPU; the packed-blocks kernel
(``pyprune.sparse.packed``) reads each 32x32 weight block once and keeps a
block row's outputs in registers, so it is faster even with every block live
(``pyprune bench block_sparse --inference``), and it skips blocks that are
all zero (a block-pruned layer's dead blocks). ``PackedLinear`` is an
``nn.Linear`` stand-in built on it; ``pack_linears`` swaps them into a model
meant for inference. The result is the same computation in a different
order of additions (float32 rounding; in bfloat16 the sums are float32 and
each output is rounded once), with no autograd.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import fail
from ..sparse.layout import BLOCK, nonzero_blocks
from ..sparse.linear import packed_usable
from ..sparse.packed import PackedBlocks, check_activation, pack_blocks, packed_block_linear
from .sparse import BlockSparseLinear


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


class PackedLinear(nn.Module):
    """``x W^T + b`` for inference from a weight's nonzero 32x32 blocks (zero-padded to whole blocks), then
    `activation` ("none" or "gelu": torch's exact GELU on every output, in the kernel's epilogue).

    Build it with ``PackedLinear(weight, bias)`` or ``PackedLinear.from_linear(linear)``; the packed
    blocks are buffers (they follow ``.to()``), not parameters: nothing here trains, and inputs that
    need a gradient are refused.
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor] = None, activation: str = "none") -> None:
        super().__init__()
        self.activation = check_activation(activation)
        if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            fail("weight", "a floating-point (out_features, in_features) tensor",
                 tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__)
        self.out_features, self.in_features = weight.shape
        if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (self.out_features,)):
            fail("bias", f"None or a ({self.out_features},) tensor",
                 tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__)
        N, K = _round_up(self.out_features), _round_up(self.in_features)
        with torch.no_grad():
            padded = F.pad(weight.detach(), (0, K - self.in_features, 0, N - self.out_features))
            packed = pack_blocks(padded, nonzero_blocks(padded))
            padded_bias = None if bias is None else F.pad(bias.detach().to(weight.dtype), (0, N - self.out_features))
        self.register_buffer("blocks", packed.blocks)
        self.register_buffer("row_ptr", packed.row_ptr)
        self.register_buffer("col_index", packed.col_index)
        self.register_buffer("bias", padded_bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "PackedLinear":
        """The same layer packed (`linear` is not modified; a ``BlockSparseLinear``'s dead blocks stay dead)."""
        if not isinstance(linear, nn.Linear):
            fail("linear", "an nn.Linear", type(linear).__name__)
        return cls(linear.weight, linear.bias)

    @property
    def live_blocks(self) -> int:
        return self.blocks.shape[0]

    def forward(self, input: Tensor) -> Tensor:
        buffers = self._buffers                            # (the attribute lookups cost as much as the checks)
        blocks = buffers["blocks"]
        if (type(input) is Tensor and input.dtype is blocks.dtype and input.dim() >= 1
                and input.shape[-1] == self.in_features and not (input.requires_grad and torch.is_grad_enabled())
                and packed_usable(input.device, input.dtype)):
            # What the op pyprune::packed_block_linear runs here, without its two trips through the
            # dispatcher and its checks, which at one token cost about as much as the kernel; the weight
            # side was checked when the layer was built.
            x = input if input.dim() == 2 else input.reshape(-1, self.in_features)
            if self.in_features % BLOCK:
                x = F.pad(x, (0, _round_up(self.in_features) - self.in_features))
            y = torch.ops.pyprune_C.bsr_linear(x, blocks, buffers["row_ptr"], buffers["col_index"], buffers["bias"],
                                               self.activation)
            if y.shape[1] != self.out_features:
                y = y[:, :self.out_features]
            return y if input.dim() == 2 else y.reshape(*input.shape[:-1], self.out_features)
        return self._checked(input)

    def _checked(self, input: Tensor) -> Tensor:
        """Through the registered op, with every check (other dtypes and devices: its reference)."""
        if not isinstance(input, Tensor) or input.dim() < 1 or input.shape[-1] != self.in_features:
            fail("input", f"a (..., {self.in_features}) tensor",
                 tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__)
        if input.requires_grad and torch.is_grad_enabled():
            fail("input", "a tensor that needs no gradient (PackedLinear is for inference; train the nn.Linear "
                 "it was built from)", "a tensor that requires grad")
        K = _round_up(self.in_features)
        if K != self.in_features:
            input = F.pad(input, (0, K - self.in_features))
        y = packed_block_linear(input, PackedBlocks(self.blocks, self.row_ptr, self.col_index, K), self.bias,
                                self.activation)
        return y if y.shape[-1] == self.out_features else y[..., :self.out_features]

    def extra_repr(self) -> str:
        total = _round_up(self.out_features) * _round_up(self.in_features) // (BLOCK * BLOCK)
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, live_blocks={self.live_blocks}/{total}"
                + ("" if self.activation == "none" else f", activation={self.activation}"))


def pack_linears(module: nn.Module) -> int:
    """Replace, in place, every ``nn.Linear`` and ``BlockSparseLinear`` inside `module` (those exact types:
    a subclass may compute otherwise, as ``nn.MultiheadAttention``'s projection does) whose weight the
    packed kernel runs (float32 or bfloat16 on the CPU, the ``cpp`` backend built and enabled) by a
    ``PackedLinear``; returns how many were replaced (0: none could be, `module` is unchanged). For a
    model used only for inference: the packed layers do not train."""
    if not isinstance(module, nn.Module):
        fail("module", "an nn.Module", type(module).__name__)
    count = 0
    for name, child in list(module.named_children()):
        if type(child) in (nn.Linear, BlockSparseLinear) and packed_usable(child.weight.device, child.weight.dtype):
            setattr(module, name, PackedLinear.from_linear(child))
            count += 1
        else:
            count += pack_linears(child)
    return count


def _is_gelu(module) -> bool:
    """Whether `module` computes torch's exact GELU (``nn.GELU()``, transformers' "gelu"): checked on values,
    so that the tanh approximation and other activations are never taken for it."""
    if not isinstance(module, nn.Module) or any(True for _ in module.parameters()):
        return False
    probe = torch.linspace(-8.0, 8.0, 161)
    try:
        with torch.no_grad():
            return torch.equal(module(probe), F.gelu(probe))
    except Exception:                                       # not an elementwise activation
        return False


def activation_slots(module: nn.Module):
    """(owner, attribute, layer) for every ``PackedLinear`` inside `module` whose output goes straight into
    ``getattr(owner, attribute)``: the next module of an ``nn.Sequential``, or a BERT-family intermediate
    block's ``intermediate_act_fn`` after its ``dense``."""
    for m in module.modules():
        if isinstance(m, nn.Sequential):
            pairs = [(m, str(i + 1), m[i]) for i in range(len(m) - 1)]
        elif hasattr(m, "dense") and hasattr(m, "intermediate_act_fn"):
            pairs = [(m, "intermediate_act_fn", m.dense)]
        else:
            continue
        yield from ((owner, name, linear) for owner, name, linear in pairs if type(linear) is PackedLinear)


def fuse_gelu(module: nn.Module) -> int:
    """Move every exact GELU that directly follows a ``PackedLinear`` into that layer's kernel epilogue, in
    place: in an ``nn.Sequential`` (linear, GELU, ...) and in a BERT-family intermediate block (``dense`` then
    ``intermediate_act_fn``); the GELU module becomes ``nn.Identity``. Returns how many were fused."""
    count = 0
    for owner, name, linear in list(activation_slots(module)):
        if linear.activation == "none" and _is_gelu(getattr(owner, name)):
            linear.activation = "gelu"
            setattr(owner, name, nn.Identity())
            count += 1
    return count
