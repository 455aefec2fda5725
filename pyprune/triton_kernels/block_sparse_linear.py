"""Triton kernels for Y = X W^T (+ b) with a 32x32 block-sparse W.

W is stored dense (N, K) like nn.Linear's weight; only live blocks are read.
Forward walks each block row's live block columns (row layout), dX walks each
block column's live block rows (column layout), dW computes live blocks only.
Accumulation is in float32; inputs float32, float16 or bfloat16. float32
operands use TF32 only when torch.backends.cuda.matmul.allow_tf32 is set, as
torch's own matmuls do.

Each kernel has its reference beside it in pyprune.sparse.reference.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK = 32

# The interpreter (TRITON_INTERPRET=1, used to test on CPU) computes bf16 dot
# products wrongly and truncates float32 -> bf16 instead of rounding; there,
# operands are upcast to float32 in the kernel and results are written in
# float32 and rounded by PyTorch. On a GPU none of this applies.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, row_indices_ptr, row_counts_ptr,
                    M, K, N, stride_xm, stride_wn, stride_ym, max_live,
                    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_B: tl.constexpr):
    pid_m = tl.program_id(0)
    block_row = tl.program_id(1)                       # 32 output features
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    inner = tl.arange(0, BLOCK_B)
    features = block_row * BLOCK_B + inner
    acc = tl.zeros((BLOCK_M, BLOCK_B), dtype=tl.float32)
    live = tl.load(row_counts_ptr + block_row)
    for i in range(0, max_live):
        if i < live:
            block_col = tl.load(row_indices_ptr + block_row * max_live + i)
            cols = block_col * BLOCK_B + inner
            x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=rows[:, None] < M, other=0.0)
            w = tl.load(w_ptr + features[:, None] * stride_wn + cols[None, :])
            if UPCAST:
                x = x.to(tl.float32)
                w = w.to(tl.float32)
            acc += tl.dot(x, tl.trans(w), out_dtype=tl.float32, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + features).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * stride_ym + features[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=rows[:, None] < M)


@triton.jit
def _grad_input_kernel(dy_ptr, w_ptr, dx_ptr, col_indices_ptr, col_counts_ptr,
                       M, K, N, stride_dym, stride_wn, stride_dxm, max_live,
                       UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_B: tl.constexpr):
    pid_m = tl.program_id(0)
    block_col = tl.program_id(1)                       # 32 input features
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    inner = tl.arange(0, BLOCK_B)
    cols = block_col * BLOCK_B + inner
    acc = tl.zeros((BLOCK_M, BLOCK_B), dtype=tl.float32)
    live = tl.load(col_counts_ptr + block_col)
    for i in range(0, max_live):
        if i < live:
            block_row = tl.load(col_indices_ptr + block_col * max_live + i)
            features = block_row * BLOCK_B + inner
            dy = tl.load(dy_ptr + rows[:, None] * stride_dym + features[None, :], mask=rows[:, None] < M, other=0.0)
            w = tl.load(w_ptr + features[:, None] * stride_wn + cols[None, :])
            if UPCAST:
                dy = dy.to(tl.float32)
                w = w.to(tl.float32)
            acc += tl.dot(dy, w, out_dtype=tl.float32, input_precision=PRECISION)
    tl.store(dx_ptr + rows[:, None] * stride_dxm + cols[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=rows[:, None] < M)


@triton.jit
def _grad_weight_kernel(dy_ptr, x_ptr, dw_ptr, row_indices_ptr, row_counts_ptr,
                        M, stride_dym, stride_xm, stride_dwn, max_live,
                        UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_B: tl.constexpr):
    block_row = tl.program_id(0)
    i = tl.program_id(1)
    live = tl.load(row_counts_ptr + block_row)
    if i < live:
        block_col = tl.load(row_indices_ptr + block_row * max_live + i)
        inner = tl.arange(0, BLOCK_B)
        features = block_row * BLOCK_B + inner
        cols = block_col * BLOCK_B + inner
        acc = tl.zeros((BLOCK_B, BLOCK_B), dtype=tl.float32)
        for start in range(0, M, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            dy = tl.load(dy_ptr + rows[:, None] * stride_dym + features[None, :], mask=rows[:, None] < M, other=0.0)
            x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=rows[:, None] < M, other=0.0)
            if UPCAST:
                dy = dy.to(tl.float32)
                x = x.to(tl.float32)
            acc += tl.dot(tl.trans(dy), x, out_dtype=tl.float32, input_precision=PRECISION)
        tl.store(dw_ptr + features[:, None] * stride_dwn + cols[None, :], acc.to(dw_ptr.dtype.element_ty))


def _upcast(t: torch.Tensor) -> bool:
    return _INTERPRET and t.dtype == torch.bfloat16


def _precision() -> str:
    """float32 operands: TF32 only where torch's own matmuls may use it."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _output(shape, like: torch.Tensor, zeros: bool = False) -> torch.Tensor:
    dtype = torch.float32 if _upcast(like) else like.dtype
    make = torch.zeros if zeros else torch.empty
    return make(shape, dtype=dtype, device=like.device)


def _block_m(M: int) -> int:
    return 64 if M >= 64 else max(16, triton.next_power_of_2(M))


def forward(x, weight, bias, row_indices, row_counts):
    """x (M, K), weight (N, K) -> (M, N); all inputs contiguous in their last dim."""
    M, K = x.shape
    N = weight.shape[0]
    y = _output((M, N), x)
    block_m = _block_m(M)
    grid = (triton.cdiv(M, block_m), N // BLOCK)
    _forward_kernel[grid](x, weight, bias if bias is not None else weight, y, row_indices, row_counts,
                          M, K, N, x.stride(0), weight.stride(0), y.stride(0), row_indices.shape[1],
                          HAS_BIAS=bias is not None, UPCAST=_upcast(x), PRECISION=_precision(),
                          BLOCK_M=block_m, BLOCK_B=BLOCK)
    return y.to(x.dtype)


def grad_input(grad_y, weight, col_indices, col_counts):
    """dX = dY W over live blocks: (M, N), (N, K) -> (M, K)."""
    M, N = grad_y.shape
    K = weight.shape[1]
    dx = _output((M, K), grad_y)
    block_m = _block_m(M)
    grid = (triton.cdiv(M, block_m), K // BLOCK)
    _grad_input_kernel[grid](grad_y, weight, dx, col_indices, col_counts, M, K, N,
                             grad_y.stride(0), weight.stride(0), dx.stride(0), col_indices.shape[1],
                             UPCAST=_upcast(grad_y), PRECISION=_precision(), BLOCK_M=block_m,
                             BLOCK_B=BLOCK)
    return dx.to(grad_y.dtype)


def grad_weight(grad_y, x, row_indices, row_counts):
    """dW = dY^T X on live blocks, zeros elsewhere: (M, N), (M, K) -> (N, K)."""
    M, N = grad_y.shape
    K = x.shape[1]
    dw = _output((N, K), grad_y, zeros=True)
    grid = (N // BLOCK, row_indices.shape[1])
    _grad_weight_kernel[grid](grad_y, x, dw, row_indices, row_counts, M, grad_y.stride(0),
                              x.stride(0), dw.stride(0), row_indices.shape[1],
                              UPCAST=_upcast(grad_y), PRECISION=_precision(),
                              BLOCK_M=_block_m(M), BLOCK_B=BLOCK)
    return dw.to(grad_y.dtype)
