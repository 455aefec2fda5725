"""Triton kernels for softmax(Q K^T * scale) V under a 32x32 block mask.

Flash-attention style: each program owns one 32-row query block and walks only
the live key blocks of its row of the block mask (so masked blocks cost
neither work nor memory), with an online softmax in float32. The backward
pass recomputes probabilities from the saved log-sum-exp: one kernel per key
block for dK/dV (walking the live query blocks of its column), one per query
block for dQ; every output is written by one program, no atomics. Query rows
with no live block get a zero output and zero gradients.

q, k, v: (BH, L, D) contiguous, D a power of two in [16, 128]; the layout's
index lists are per (mask head, block): see pyprune.sparse.attention.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK = 32
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, row_indices_ptr, row_counts_ptr,
                    Lq, Lk, heads_per_mask, scale, max_live,
                    D: tl.constexpr, UPCAST: tl.constexpr, BLOCK_B: tl.constexpr):
    q_block = tl.program_id(0)
    bh = tl.program_id(1)
    mask_head = bh // heads_per_mask
    n_q_blocks = Lq // BLOCK_B
    rows = q_block * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_B)
    dims = tl.arange(0, D)
    q = tl.load(q_ptr + bh * Lq * D + rows[:, None] * D + dims[None, :])
    if UPCAST:
        q = q.to(tl.float32)
    m = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BLOCK_B,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_B, D), dtype=tl.float32)
    layout_row = (mask_head * n_q_blocks + q_block)
    live = tl.load(row_counts_ptr + layout_row)
    for i in range(0, max_live):
        if i < live:
            k_block = tl.load(row_indices_ptr + layout_row * max_live + i)
            keys = k_block * BLOCK_B + cols
            k = tl.load(k_ptr + bh * Lk * D + keys[:, None] * D + dims[None, :])
            v = tl.load(v_ptr + bh * Lk * D + keys[:, None] * D + dims[None, :])
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), out_dtype=tl.float32) * scale
            m_new = tl.maximum(m, tl.max(s, axis=1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            l = l * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
            m = m_new
    has_keys = l > 0
    out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l, 1.0)[:, None], 0.0)
    tl.store(o_ptr + bh * Lq * D + rows[:, None] * D + dims[None, :], out.to(o_ptr.dtype.element_ty))
    lse = tl.where(has_keys, m + tl.log(tl.where(has_keys, l, 1.0)), float("-inf"))
    tl.store(lse_ptr + bh * Lq + rows, lse)


@triton.jit
def _probs_and_score_grads(q, k, v, do, lse, delta, scale):
    """Recompute P = exp(S - lse) for one (query block, key block) pair and
    the score gradient dS = P * (dO V^T - delta) * scale."""
    s = tl.dot(q, tl.trans(k), out_dtype=tl.float32) * scale
    p = tl.exp(s - lse[:, None])                 # rows in a live block have a finite lse
    dp = tl.dot(do, tl.trans(v), out_dtype=tl.float32)
    return p, p * (dp - delta[:, None]) * scale


@triton.jit
def _grad_kv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                    col_indices_ptr, col_counts_ptr, Lq, Lk, heads_per_mask, scale, max_live,
                    D: tl.constexpr, UPCAST: tl.constexpr, BLOCK_B: tl.constexpr):
    k_block = tl.program_id(0)
    bh = tl.program_id(1)
    mask_head = bh // heads_per_mask
    n_k_blocks = Lk // BLOCK_B
    keys = k_block * BLOCK_B + tl.arange(0, BLOCK_B)
    rows_in_block = tl.arange(0, BLOCK_B)
    dims = tl.arange(0, D)
    k = tl.load(k_ptr + bh * Lk * D + keys[:, None] * D + dims[None, :])
    v = tl.load(v_ptr + bh * Lk * D + keys[:, None] * D + dims[None, :])
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros((BLOCK_B, D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_B, D), dtype=tl.float32)
    layout_col = mask_head * n_k_blocks + k_block
    live = tl.load(col_counts_ptr + layout_col)
    for i in range(0, max_live):
        if i < live:
            q_block = tl.load(col_indices_ptr + layout_col * max_live + i)
            rows = q_block * BLOCK_B + rows_in_block
            q = tl.load(q_ptr + bh * Lq * D + rows[:, None] * D + dims[None, :])
            do = tl.load(do_ptr + bh * Lq * D + rows[:, None] * D + dims[None, :])
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(lse_ptr + bh * Lq + rows)
            delta = tl.load(delta_ptr + bh * Lq + rows)
            p, ds = _probs_and_score_grads(q, k, v, do, lse, delta, scale)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, out_dtype=tl.float32)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, out_dtype=tl.float32)
    tl.store(dk_ptr + bh * Lk * D + keys[:, None] * D + dims[None, :], dk.to(dk_ptr.dtype.element_ty))
    tl.store(dv_ptr + bh * Lk * D + keys[:, None] * D + dims[None, :], dv.to(dv_ptr.dtype.element_ty))


@triton.jit
def _grad_q_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                   row_indices_ptr, row_counts_ptr, Lq, Lk, heads_per_mask, scale, max_live,
                   D: tl.constexpr, UPCAST: tl.constexpr, BLOCK_B: tl.constexpr):
    q_block = tl.program_id(0)
    bh = tl.program_id(1)
    mask_head = bh // heads_per_mask
    n_q_blocks = Lq // BLOCK_B
    rows = q_block * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_B)
    dims = tl.arange(0, D)
    q = tl.load(q_ptr + bh * Lq * D + rows[:, None] * D + dims[None, :])
    do = tl.load(do_ptr + bh * Lq * D + rows[:, None] * D + dims[None, :])
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(lse_ptr + bh * Lq + rows)
    delta = tl.load(delta_ptr + bh * Lq + rows)
    dq = tl.zeros((BLOCK_B, D), dtype=tl.float32)
    layout_row = mask_head * n_q_blocks + q_block
    live = tl.load(row_counts_ptr + layout_row)
    for i in range(0, max_live):
        if i < live:
            k_block = tl.load(row_indices_ptr + layout_row * max_live + i)
            keys = k_block * BLOCK_B + cols
            k = tl.load(k_ptr + bh * Lk * D + keys[:, None] * D + dims[None, :])
            v = tl.load(v_ptr + bh * Lk * D + keys[:, None] * D + dims[None, :])
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            _, ds = _probs_and_score_grads(q, k, v, do, lse, delta, scale)
            dq += tl.dot(ds.to(k.dtype), k, out_dtype=tl.float32)
    tl.store(dq_ptr + bh * Lq * D + rows[:, None] * D + dims[None, :], dq.to(dq_ptr.dtype.element_ty))


def _upcast(t: torch.Tensor) -> bool:
    return _INTERPRET and t.dtype == torch.bfloat16


def _out(like: torch.Tensor, shape=None) -> torch.Tensor:
    dtype = torch.float32 if _upcast(like) else like.dtype
    return torch.empty(shape if shape is not None else like.shape, dtype=dtype, device=like.device)


def forward(q, k, v, row_indices, row_counts, heads_per_mask, scale):
    """q (BH, Lq, D), k/v (BH, Lk, D) -> (out (BH, Lq, D), lse (BH, Lq) float32)."""
    BH, Lq, D = q.shape
    Lk = k.shape[1]
    out = _out(q)
    lse = torch.empty((BH, Lq), dtype=torch.float32, device=q.device)
    grid = (Lq // BLOCK, BH)
    _forward_kernel[grid](q, k, v, out, lse, row_indices, row_counts, Lq, Lk, heads_per_mask, scale,
                          row_indices.shape[-1], D=D, UPCAST=_upcast(q), BLOCK_B=BLOCK)
    return out.to(q.dtype), lse


def backward(grad_out, q, k, v, out, lse, row_indices, row_counts, col_indices, col_counts,
             heads_per_mask, scale):
    """Gradients (dq, dk, dv) of the forward above."""
    BH, Lq, D = q.shape
    Lk = k.shape[1]
    grad_out = grad_out.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()    # rowsum(dO * O)
    dq, dk, dv = _out(q), _out(k), _out(v)
    upcast = _upcast(q)
    _grad_kv_kernel[(Lk // BLOCK, BH)](q, k, v, grad_out, lse, delta, dk, dv, col_indices, col_counts,
                                       Lq, Lk, heads_per_mask, scale, col_indices.shape[-1],
                                       D=D, UPCAST=upcast, BLOCK_B=BLOCK)
    _grad_q_kernel[(Lq // BLOCK, BH)](q, k, v, grad_out, lse, delta, dq, row_indices, row_counts,
                                      Lq, Lk, heads_per_mask, scale, row_indices.shape[-1],
                                      D=D, UPCAST=upcast, BLOCK_B=BLOCK)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
