"""Block-sparse linear layers: Y = X W^T + b with W masked in 32x32 blocks.

Three ways to compute the same thing, chosen per layer by a cost model:

- ``masked_dense``: F.linear with the masked weight (what pruning libraries
  do; never slower than dense, never faster either);
- ``compact_dense``: drop the block rows and columns with no live block, one
  smaller dense matmul, scatter the outputs back;
- ``block_sparse``: the Triton kernels (pyprune.triton_kernels), which read
  live blocks only. On CUDA when Triton is enabled; on CPU only under
  TRITON_INTERPRET=1 (for testing);
- ``packed_blocks``: inference on the CPU (nothing needs a gradient): the
  C++ kernel on the live blocks packed once (``pyprune.sparse.packed``).

``pyprune::block_sparse_linear`` is the op (any path gives the same values);
its gradient is ``pyprune::block_sparse_linear_backward``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends
from ._routing import triton_or_reference, triton_usable
from .layout import BLOCK, BlockLayout, expand_mask, layout_for
from .packed import KERNEL_DTYPES as PACKED_DTYPES

# Throughput of the block-sparse kernel relative to a dense GEMM of the same
# flops, per device type. Conservative until measured on a GPU (see
# bench/RESULTS.md); the CPU has no block-sparse kernel outside the
# interpreter.
KERNEL_EFFICIENCY = {"cuda": 0.5, "cpu": 0.0}
# Cost of gathering or scattering one element, in multiply-adds: the compacted
# path gathers X's live columns, scatters Y's live rows and, in training,
# scatters the weight gradient back; measured on CPU (bench/RESULTS.md), where
# below this the compacted path lost to masked dense at density 0.5.
GATHER_COST = 64.0
# The packed CPU kernel's speed relative to torch's dense GEMM of the same
# flops: with every block live it is 1.1-2.8x faster at 1-480 tokens
# (`pyprune bench block_sparse --inference`, bench/RESULTS.md); the low end.
PACKED_SPEED = 1.1
# What one more op call costs on the CPU, in multiply-adds: an estimate of
# torch's per-op overhead at decoding sizes (about 10 us at ~100 GMAC/s), not
# fitted. With it, at a few dozen tokens the compacted path's gather and
# scatter no longer win over the matmul they save.
CPU_CALL_COST = 1e6


# ---------------------------------------------------------------- the ops

def _masked_weight(weight: Tensor, mask: Tensor) -> Tensor:
    return weight * expand_mask(mask).to(weight.dtype)


torch.library.define(
    "pyprune::block_sparse_linear",
    "(Tensor x, Tensor weight, Tensor? bias, Tensor block_mask, Tensor row_indices, "
    "Tensor row_counts, Tensor col_indices, Tensor col_counts) -> Tensor")
torch.library.define(
    "pyprune::block_sparse_linear_backward",
    "(Tensor grad_y, Tensor x, Tensor weight, Tensor block_mask, Tensor row_indices, "
    "Tensor row_counts, Tensor col_indices, Tensor col_counts, bool need_x, bool need_w) "
    "-> (Tensor, Tensor)")


def _forward_reference(x, weight, bias, mask, row_indices, row_counts, col_indices, col_counts):
    return F.linear(x, _masked_weight(weight, mask), bias)


def _backward_reference(grad_y, x, weight, mask, row_indices, row_counts, col_indices, col_counts,
                        need_x, need_w):
    element_mask = expand_mask(mask).to(weight.dtype)
    dx = grad_y @ (weight * element_mask) if need_x else x.new_zeros(0)
    dw = (grad_y.t() @ x) * element_mask if need_w else weight.new_zeros(0)
    return dx, dw


def _forward_triton(x, weight, bias, mask, row_indices, row_counts, col_indices, col_counts):
    from pyprune.triton_kernels import block_sparse_linear as kernels
    return kernels.forward(x, weight, bias, row_indices, row_counts)


def _backward_triton(grad_y, x, weight, mask, row_indices, row_counts, col_indices, col_counts,
                     need_x, need_w):
    from pyprune.triton_kernels import block_sparse_linear as kernels
    dx = kernels.grad_input(grad_y, weight, col_indices, col_counts) if need_x else x.new_zeros(0)
    dw = kernels.grad_weight(grad_y, x, row_indices, row_counts) if need_w else weight.new_zeros(0)
    return dx, dw


torch.library.impl("pyprune::block_sparse_linear", "default")(_forward_reference)
torch.library.impl("pyprune::block_sparse_linear_backward", "default")(_backward_reference)
for _device in ("cpu", "cuda"):
    torch.library.impl("pyprune::block_sparse_linear", _device)(
        triton_or_reference(_forward_triton, _forward_reference))
    torch.library.impl("pyprune::block_sparse_linear_backward", _device)(
        triton_or_reference(_backward_triton, _backward_reference))


@torch.library.register_fake("pyprune::block_sparse_linear")
def _(x, weight, bias, *layout):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.register_fake("pyprune::block_sparse_linear_backward")
def _(grad_y, x, weight, mask, ri, rc, ci, cc, need_x, need_w):
    return (x.new_empty(x.shape) if need_x else x.new_empty(0),
            weight.new_empty(weight.shape) if need_w else weight.new_empty(0))


def _setup(ctx, inputs, output):
    x, weight, bias, *layout = inputs
    ctx.save_for_backward(x, weight, *layout)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_y):
    x, weight, *layout = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dw = torch.ops.pyprune.block_sparse_linear_backward(grad_y.contiguous(), x, weight, *layout,
                                                           need_x, need_w)
    db = grad_y.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return (dx if need_x else None, dw if need_w else None, db, None, None, None, None, None)


torch.library.register_autograd("pyprune::block_sparse_linear", _backward, setup_context=_setup)


# ---------------------------------------------------------------- path choice

@dataclass
class PathChoice:
    """Why a path was chosen: estimated costs in dense-GEMM multiply-add units."""
    path: str
    costs: dict[str, float] = field(default_factory=dict)
    live_blocks: int = 0
    total_blocks: int = 0


def packed_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the packed C++ kernel runs for this device and dtype (the ``cpp`` backend enabled)."""
    return (device.type == "cpu" and dtype in PACKED_DTYPES and backends.enabled("cpp")
            and backends.has_kernel("bsr_linear", "CPU"))


def choose_path(layout: BlockLayout, tokens: int, device: torch.device, weight_ready: bool = False,
                inference: bool = False, dtype: torch.dtype = torch.float32) -> PathChoice:
    """Cost model: flops at each path's efficiency plus gather/scatter traffic.

    masked_dense costs M*N*K (+ masking the weight); compact_dense costs
    M*N'*K' on the live rows/columns plus gathering X's live columns,
    scattering Y's live rows (each only where some are dead) and gathering the
    live weight; block_sparse costs the live blocks' flops at the kernel's
    measured efficiency (KERNEL_EFFICIENCY); packed_blocks the live blocks'
    flops at PACKED_SPEED. On the CPU each op beyond the matmul adds
    CPU_CALL_COST.

    `weight_ready`: the caller already holds the weight masked (dead blocks
    stored as zeros) and its compacted copy (``BlockSparseLinear`` without a
    weight gradient), so neither the masking nor the weight gather is paid.
    At a few dozen tokens (batch-1 decoding) the weight gather alone costs
    more than the matmul it saves. `inference`: nothing needs a gradient and
    the caller holds the packed blocks, which allows packed_blocks (CPU,
    float32 or bfloat16, with the ``cpp`` backend)."""
    packed = inference and weight_ready and packed_usable(device, dtype)
    key = (tokens, device.type, triton_usable(device), weight_ready, packed)
    if key in layout.path_choices:
        return layout.path_choices[key]
    R, C = layout.mask.shape
    N, K = R * BLOCK, C * BLOCK
    live, live_rows, live_cols = layout.block_counts
    live_rows *= BLOCK
    live_cols *= BLOCK
    M = max(tokens, 1)
    call = CPU_CALL_COST if device.type == "cpu" else 0.0
    if live_rows and live_cols:
        traffic = M * ((live_cols < K) * live_cols + (live_rows < N) * live_rows)
        if not weight_ready:
            traffic += live_rows * live_cols
        compact = M * live_rows * live_cols + GATHER_COST * traffic
        compact += call * ((live_cols < K) + 2 * (live_rows < N))    # gather x; scatter y (a fill and an add)
    else:
        compact = GATHER_COST * M * N
    costs = {"masked_dense": M * N * K + (0 if weight_ready else N * K), "compact_dense": compact}
    efficiency = KERNEL_EFFICIENCY.get(device.type, 0.0)
    if triton_usable(device) and (efficiency > 0 or device.type == "cpu"):
        costs["block_sparse"] = M * live * BLOCK * BLOCK / max(efficiency, 1e-3)
    if packed:
        costs["packed_blocks"] = M * live * BLOCK * BLOCK / PACKED_SPEED
    path = min(costs, key=costs.get)
    choice = layout.path_choices[key] = PathChoice(path, costs, live, R * C)
    return choice


def compact_weight(weight: Tensor, layout: BlockLayout) -> Tensor:
    """The weight restricted to the live block rows and columns, its dead blocks there zeroed."""
    row_index, col_index = layout.live_features
    sub_weight = weight
    if len(row_index) < weight.shape[0]:
        sub_weight = sub_weight.index_select(0, row_index)
    if len(col_index) < weight.shape[1]:
        sub_weight = sub_weight.index_select(1, col_index)
    if layout.compact_mask is not None:  # blocks dead inside the kept rows and columns
        sub_weight = sub_weight * expand_mask(layout.compact_mask).to(weight.dtype)
    return sub_weight


def compact_dense(x: Tensor, weight: Tensor, bias: Optional[Tensor], layout: BlockLayout,
                  sub_weight: Optional[Tensor] = None) -> Tensor:
    """The compacted path on (M, K) `x`: one dense matmul over the live rows and columns
    (`sub_weight`: ``compact_weight(weight, layout)`` when the caller keeps it)."""
    row_index, col_index = layout.live_features
    if sub_weight is None:
        sub_weight = compact_weight(weight, layout)
    if len(col_index) < weight.shape[1]:
        x = x.index_select(1, col_index)
    if len(row_index) == weight.shape[0]:
        return F.linear(x, sub_weight, bias)
    partial = F.linear(x, sub_weight)
    y = x.new_zeros(x.shape[0], weight.shape[0]) if bias is None else bias.expand(x.shape[0], -1).clone()
    return y.index_add(1, row_index, partial)


def block_sparse_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], block_mask: Tensor,
                        path: Optional[str] = None) -> Tensor:
    """Y = x W^T + b with W (N, K) masked by block_mask (N/32, K/32).

    Args:
        x: (..., K); weight: (N, K), N and K multiples of 32; bias: (N,) or None;
        block_mask: bool (N/32, K/32), True = live block.
        path: 'masked_dense', 'compact_dense' or 'block_sparse'; None lets the
            cost model choose (see choose_path). All give the same values.
    """
    if weight.dim() != 2 or weight.shape[0] % BLOCK or weight.shape[1] % BLOCK:
        raise ValueError(f"weight: expected (N, K) with N and K multiples of {BLOCK}, got {tuple(weight.shape)}")
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"x: expected last dimension {K} (weight's in_features), got {tuple(x.shape)}")
    if block_mask.shape != (N // BLOCK, K // BLOCK) or block_mask.dtype != torch.bool:
        raise ValueError(f"block_mask: expected bool of shape {(N // BLOCK, K // BLOCK)}, "
                         f"got {block_mask.dtype} {tuple(block_mask.shape)}")
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"bias: expected shape ({N},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("block_mask", block_mask), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} like x, got {t.device}")
    leading = x.shape[:-1]
    flat = x.reshape(-1, K)
    layout = layout_for(block_mask)
    if path is None:
        path = choose_path(layout, flat.shape[0], x.device).path
    if path == "masked_dense":
        y = F.linear(flat, _masked_weight(weight, block_mask), bias)
    elif path == "compact_dense":
        y = compact_dense(flat, weight, bias, layout)
    elif path == "block_sparse":
        y = torch.ops.pyprune.block_sparse_linear(
            flat.contiguous(), weight.contiguous(), bias, layout.mask, layout.row_indices,
            layout.row_counts, layout.col_indices, layout.col_counts)
    else:
        raise ValueError(f"path: expected 'masked_dense', 'compact_dense', 'block_sparse' or None, got {path!r}"
                         + (" ('packed_blocks' is BlockSparseLinear's inference path: use "
                            "pyprune.sparse.packed.packed_block_linear)" if path == "packed_blocks" else ""))
    return y.reshape(*leading, N)
