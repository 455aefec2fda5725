"""Block-masked attention: softmax(Q K^T * scale) V where a (query block, key
block) mask at 32x32 granularity says which blocks exist. Fully masked blocks
cost no work and no memory; query rows with no live block give zeros.

``pyprune::block_masked_attention`` runs the Triton kernels on CUDA (and on
CPU under TRITON_INTERPRET=1), the dense masked reference elsewhere.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from pyprune._validation import check_attention_inputs, fail

from .layout import BLOCK, _live_first
from ._routing import triton_or_reference

torch.library.define(
    "pyprune::block_masked_attention",
    "(Tensor q, Tensor k, Tensor v, Tensor block_mask, Tensor row_indices, Tensor row_counts, "
    "Tensor col_indices, Tensor col_counts, int heads_per_mask, float scale) -> (Tensor, Tensor)")
torch.library.define(
    "pyprune::block_masked_attention_backward",
    "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor block_mask, "
    "Tensor row_indices, Tensor row_counts, Tensor col_indices, Tensor col_counts, "
    "int heads_per_mask, float scale) -> (Tensor, Tensor, Tensor)")


def _element_mask(block_mask: Tensor, heads_per_mask: int) -> Tensor:
    """(mask heads, QB, KB) -> (BH, Lq, Lk) bool."""
    per_head = block_mask.repeat_interleave(heads_per_mask, dim=0)
    return per_head.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)


def _reference_probs(q, k, block_mask, heads_per_mask, scale):
    scores = torch.matmul(q.float(), k.float().transpose(1, 2)) * scale
    scores = scores.masked_fill(~_element_mask(block_mask, heads_per_mask), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.masked_fill(torch.isinf(lse), 0.0)[..., None])
    return probs, lse  # rows with no live block: probs 0 (exp(-inf)), lse -inf


def _forward_reference(q, k, v, block_mask, row_indices, row_counts, col_indices, col_counts,
                       heads_per_mask, scale):
    probs, lse = _reference_probs(q, k, block_mask, heads_per_mask, scale)
    return torch.matmul(probs, v.float()).to(q.dtype), lse


def _backward_reference(grad_out, q, k, v, out, lse, block_mask, row_indices, row_counts,
                        col_indices, col_counts, heads_per_mask, scale):
    probs, _ = _reference_probs(q, k, block_mask, heads_per_mask, scale)
    grad_out = grad_out.float()
    dv = torch.matmul(probs.transpose(1, 2), grad_out)
    dp = torch.matmul(grad_out, v.float().transpose(1, 2))
    delta = (grad_out * out.float()).sum(-1, keepdim=True)
    ds = probs * (dp - delta) * scale
    dq = torch.matmul(ds, k.float())
    dk = torch.matmul(ds.transpose(1, 2), q.float())
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _kernels_take(q: Tensor) -> bool:
    """The Triton tiles need a power-of-two head size in [16, 128]."""
    D = q.shape[-1]
    return 16 <= D <= 128 and D & (D - 1) == 0


def _forward_triton(q, k, v, block_mask, row_indices, row_counts, col_indices, col_counts,
                    heads_per_mask, scale):
    from pyprune.triton_kernels import block_masked_attention as kernels
    return kernels.forward(q, k, v, row_indices, row_counts, heads_per_mask, scale)


def _backward_triton(grad_out, q, k, v, out, lse, block_mask, row_indices, row_counts, col_indices,
                     col_counts, heads_per_mask, scale):
    from pyprune.triton_kernels import block_masked_attention as kernels
    return kernels.backward(grad_out, q, k, v, out, lse, row_indices, row_counts, col_indices,
                            col_counts, heads_per_mask, scale)


torch.library.impl("pyprune::block_masked_attention", "default")(_forward_reference)
torch.library.impl("pyprune::block_masked_attention_backward", "default")(_backward_reference)
for _device in ("cpu", "cuda"):
    torch.library.impl("pyprune::block_masked_attention", _device)(
        triton_or_reference(_forward_triton, _forward_reference, _kernels_take))
    # The backward's first argument is grad_out, shaped like q.
    torch.library.impl("pyprune::block_masked_attention_backward", _device)(
        triton_or_reference(_backward_triton, _backward_reference, _kernels_take))


@torch.library.register_fake("pyprune::block_masked_attention")
def _(q, k, v, *rest):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


@torch.library.register_fake("pyprune::block_masked_attention_backward")
def _(grad_out, q, k, v, *rest):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, block_mask, ri, rc, ci, cc, heads_per_mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, block_mask, ri, rc, ci, cc)
    ctx.static = (heads_per_mask, scale)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, *layout = ctx.saved_tensors
    dq, dk, dv = torch.ops.pyprune.block_masked_attention_backward(
        grad_out.contiguous(), q, k, v, out, lse, *layout, *ctx.static)
    return dq, dk, dv, None, None, None, None, None, None, None


torch.library.register_autograd("pyprune::block_masked_attention", _backward, setup_context=_setup)



def block_masked_attention(q: Tensor, k: Tensor, v: Tensor, block_mask: Tensor,
                           scale: Optional[float] = None) -> Tensor:
    """softmax(q k^T * scale) v over the live 32x32 blocks of block_mask.

    Args:
        q: (B, H, Lq, D); k, v: (B, H, Lk, D); Lq and Lk multiples of 32.
        block_mask: bool (Lq/32, Lk/32), or (B or 1, H or 1, Lq/32, Lk/32);
            True = the query block attends to the key block.
        scale: default 1/sqrt(D).
    Returns:
        (B, H, Lq, D); rows whose query block has no live key block are zero.
    """
    B, H, Lq, Lk, D = check_attention_inputs(q, k, v)
    if Lq % BLOCK or Lk % BLOCK:
        fail("q/k", f"sequence lengths that are multiples of {BLOCK} (pad them)", f"Lq={Lq}, Lk={Lk}")
    for name, t in (("k", k), ("v", v), ("block_mask", block_mask)):
        if t.device != q.device:
            fail(name, f"a tensor on {q.device} like q", t.device)
    QB, KB = Lq // BLOCK, Lk // BLOCK
    if block_mask.dtype != torch.bool:
        fail("block_mask", "a bool tensor", block_mask.dtype)
    mask = block_mask[None, None] if block_mask.dim() == 2 else block_mask
    if mask.dim() != 4 or mask.shape[2:] != (QB, KB) or mask.shape[0] not in (1, B) or mask.shape[1] not in (1, H):
        fail("block_mask", f"shape ({QB}, {KB}) or (B or 1, H or 1, {QB}, {KB})", tuple(block_mask.shape))
    if mask.shape[0] == 1 and mask.shape[1] == H and B > 1:
        mask = mask.expand(B, H, QB, KB)      # per-head masks: one per (batch, head)
    mask = mask.reshape(-1, QB, KB).contiguous()
    heads_per_mask = (B * H) // mask.shape[0]
    rows, row_counts = _live_first(mask.reshape(-1, KB))
    cols, col_counts = _live_first(mask.transpose(1, 2).reshape(-1, QB))
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out, _ = torch.ops.pyprune.block_masked_attention(
        q.reshape(B * H, Lq, D).contiguous(), k.reshape(B * H, Lk, D).contiguous(),
        v.reshape(B * H, Lk, D).contiguous(), mask, rows, row_counts, cols, col_counts,
        heads_per_mask, scale)
    return out.reshape(B, H, Lq, D)
