"""BlockSparseLinear: a drop-in nn.Linear whose weight is pruned in 32x32 blocks."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyprune._memo import derived
from pyprune.sparse import BLOCK, PathChoice, block_sparse_linear, choose_path, expand_mask, layout_for
from pyprune.sparse.layout import nonzero_blocks
from pyprune.sparse.linear import compact_dense, compact_weight
from pyprune.sparse.packed import PackedBlocks, pack_blocks, packed_block_linear


class BlockSparseLinear(nn.Linear):
    """nn.Linear with a 32x32 block mask on its weight.

    Same constructor arguments, forward signature and state_dict keys as
    nn.Linear: dead blocks are stored as zeros in ``weight``, and loading a
    state dict recovers the mask from them (a block that is entirely zero is
    dead), so checkpoints load both ways. The mask itself is the
    non-persistent buffer ``block_mask`` (out_features/32, in_features/32).

    The computation path (masked dense, compacted dense, the block-sparse
    kernel or, for inference on the CPU, the packed-blocks kernel) is chosen
    per input size by a cost model; ``explain(tokens)``
    shows the choice and its estimates, ``force_path`` pins one.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None, block_mask: Optional[Tensor] = None) -> None:
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if value % BLOCK:
                raise ValueError(f"{name}: expected a multiple of {BLOCK}, got {value} "
                                 f"(pad the layer to a multiple of {BLOCK} first)")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        shape = (out_features // BLOCK, in_features // BLOCK)
        if block_mask is None:
            block_mask = torch.ones(shape, dtype=torch.bool, device=self.weight.device)
        self.register_buffer("block_mask", torch.empty(shape, dtype=torch.bool, device=self.weight.device),
                             persistent=False)
        self.force_path: Optional[str] = None
        self.set_block_mask(block_mask)

    def set_block_mask(self, block_mask: Tensor) -> None:
        """Install a new mask and zero the weight's dead blocks."""
        expected = (self.out_features // BLOCK, self.in_features // BLOCK)
        if block_mask.dtype != torch.bool or tuple(block_mask.shape) != expected:
            raise ValueError(f"block_mask: expected a bool tensor of shape {expected}, "
                             f"got {block_mask.dtype} {tuple(block_mask.shape)}")
        with torch.no_grad():
            self.block_mask.copy_(block_mask)
            self.weight.mul_(expand_mask(self.block_mask).to(self.weight.dtype))

    @classmethod
    def from_dense(cls, linear: nn.Linear, block_mask: Tensor) -> "BlockSparseLinear":
        """A copy of `linear` with `block_mask` applied (linear is not modified)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype,
                    block_mask=torch.ones_like(block_mask, dtype=torch.bool))
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.set_block_mask(block_mask.to(layer.weight.device))
        return layer

    def to_dense(self) -> nn.Linear:
        """An nn.Linear with the masked weight."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight * expand_mask(self.block_mask).to(self.weight.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    @staticmethod
    def _grad(*tensors: Optional[Tensor]) -> bool:
        """Whether a call now would record autograd for any of `tensors`."""
        return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)

    def explain(self, tokens: int, weight_grad: Optional[bool] = None, inference: Optional[bool] = None) -> PathChoice:
        """The path the cost model picks for `tokens` rows of input, and why (`weight_grad`: whether the
        weight needs a gradient; `inference`: whether nothing does; by default, whether they would in a
        call now with an input that needs none)."""
        weight_grad = self._grad(self.weight) if weight_grad is None else weight_grad
        if inference is None:
            inference = not weight_grad and not self._grad(self.bias)
        return choose_path(layout_for(self.block_mask), tokens, self.weight.device, weight_ready=not weight_grad,
                           inference=inference, dtype=self.weight.dtype)

    def forward(self, input: Tensor) -> Tensor:
        layout = layout_for(self.block_mask)
        weight_grad = self._grad(self.weight)
        path = self.force_path or choose_path(
            layout, input.numel() // max(self.in_features, 1), self.weight.device, weight_ready=not weight_grad,
            inference=not self._grad(input, self.weight, self.bias), dtype=input.dtype).path
        if path == "packed_blocks":
            return packed_block_linear(input, self._packed(), self.bias)
        if self.force_path is None and not weight_grad:
            # Dead blocks are stored as zeros: without a weight gradient to keep out of them there is
            # nothing to mask (masking would copy the whole weight on every call), and the compacted
            # weight is gathered once and kept until the weight or the mask changes (one extra copy of
            # the live weight).
            if path == "masked_dense":
                return F.linear(input, self.weight, self.bias)
            if path == "compact_dense":
                with torch.no_grad():
                    sub_weight = derived(self, "_compact_cache", (self.weight, self.block_mask),
                                         lambda: compact_weight(self.weight, layout))
                y = compact_dense(input.reshape(-1, self.in_features), self.weight, self.bias, layout, sub_weight)
                return y.reshape(*input.shape[:-1], self.out_features)
        return block_sparse_linear(input, self.weight, self.bias, self.block_mask, path)

    def _packed(self) -> PackedBlocks:
        """The live blocks packed for the CPU kernel, kept until the weight or the mask changes (one extra
        copy of the live weight)."""
        return derived(self, "_packed_cache", (self.weight, self.block_mask),
                       lambda: pack_blocks(self.weight, self.block_mask))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "weight" in state_dict:
            with torch.no_grad():
                self.block_mask.copy_(nonzero_blocks(self.weight))

    def extra_repr(self) -> str:
        live = int(self.block_mask.sum())
        return f"{super().extra_repr()}, live_blocks={live}/{self.block_mask.numel()}"
