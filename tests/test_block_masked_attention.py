"""Block-masked attention: Triton kernels (interpreted on CPU) and the
reference against dense masked attention in float64; edge masks, broadcast
masks, gradients, bad input."""
import pytest
import torch

import pyprune
from pyprune.sparse import block_masked_attention

pytest.importorskip("triton")

B, H, LQ, LK, D = 2, 2, 96, 64, 32


def _dense(q, k, v, mask, scale):
    """float64 softmax attention with the expanded block mask; empty rows -> 0."""
    full = mask.reshape(mask.shape[0] if mask.dim() == 4 else 1, mask.shape[-3] if mask.dim() == 4 else 1,
                        *mask.shape[-2:])
    element = full.repeat_interleave(32, -2).repeat_interleave(32, -1)
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~element, float("-inf"))
    return torch.softmax(scores, -1).nan_to_num(0.0) @ v.double()


def _masks():
    g = torch.Generator().manual_seed(0)
    random = torch.rand(B, 1, LQ // 32, LK // 32, generator=g) < 0.5
    single = torch.zeros(LQ // 32, LK // 32, dtype=torch.bool)
    single[2, 1] = True
    empty_row = torch.ones(LQ // 32, LK // 32, dtype=torch.bool)
    empty_row[1] = False
    per_head = torch.rand(1, H, LQ // 32, LK // 32, generator=g) < 0.6
    per_batch_head = torch.rand(B, H, LQ // 32, LK // 32, generator=g) < 0.6
    return {"random_per_batch": random, "single": single, "empty_row": empty_row,
            "all_empty": torch.zeros(LQ // 32, LK // 32, dtype=torch.bool),
            "all_full": torch.ones(LQ // 32, LK // 32, dtype=torch.bool),
            "per_head": per_head, "per_batch_head": per_batch_head}


MASKS = _masks()


def _run(dtype, mask, backend_off=()):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(dtype).requires_grad_() for L in (LQ, LK, LK))
    with pyprune.backends.disabled(*backend_off):
        out = block_masked_attention(q, k, v, mask)
        grad_out = torch.randn(out.shape, generator=g).to(dtype)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return (q, k, v), out, grad_out, grads


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernels_against_dense(mask_name, dtype):
    mask = MASKS[mask_name]
    (q, k, v), out, grad_out, grads = _run(dtype, mask)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    exact = _dense(*leaves, mask, D ** -0.5)
    exact_grads = torch.autograd.grad(exact, leaves, grad_out.double())
    # flash-attention's rule: twice the error of the same computation in torch at this dtype
    same_dtype = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    element = (mask if mask.dim() == 4 else mask[None, None]).repeat_interleave(32, -2).repeat_interleave(32, -1)
    scores = (same_dtype[0] @ same_dtype[1].transpose(-1, -2)) * D ** -0.5
    torch_out = torch.softmax(scores.masked_fill(~element, float("-inf")).float(), -1).nan_to_num(0.0).to(dtype) @ same_dtype[2]
    torch_grads = torch.autograd.grad(torch_out, same_dtype, grad_out)
    slack = 1e-6 if dtype == torch.float32 else 1e-3
    assert (out.double() - exact).abs().max() <= 2 * (torch_out.double() - exact).abs().max() + slack
    for got, want, theirs in zip(grads, exact_grads, torch_grads):
        assert torch.isfinite(got).all()
        assert (got.double() - want).abs().max() <= 2 * (theirs.double() - want).abs().max() + slack


def test_reference_path_matches_kernels():
    mask = MASKS["per_batch_head"]
    _, out_kernel, _, grads_kernel = _run(torch.float32, mask)
    _, out_reference, _, grads_reference = _run(torch.float32, mask, backend_off=("triton",))
    torch.testing.assert_close(out_kernel, out_reference, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_kernel, grads_reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_empty_query_rows_give_zero_and_no_nan():
    (q, k, v), out, _, grads = _run(torch.float32, MASKS["empty_row"])
    assert (out[:, :, 32:64] == 0).all()
    assert (grads[0][:, :, 32:64] == 0).all()
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("call,name", [
    (lambda q, k, v: block_masked_attention(q[:, :, :50], k, v, MASKS["all_full"]), "q/k"),
    (lambda q, k, v: block_masked_attention(q, k[:, :, :32], v, MASKS["all_full"]), "k/v"),
    (lambda q, k, v: block_masked_attention(q, k, v, MASKS["all_full"][:2]), "block_mask"),
    (lambda q, k, v: block_masked_attention(q, k, v, MASKS["all_full"].float()), "block_mask"),
    (lambda q, k, v: block_masked_attention(q.int(), k, v, MASKS["all_full"]), "q"),
    (lambda q, k, v: block_masked_attention(q, k, v, torch.ones(3, 1, 3, 2, dtype=torch.bool)), "block_mask"),
])
def test_bad_input(call, name):
    q, k, v = torch.randn(B, H, LQ, D), torch.randn(B, H, LK, D), torch.randn(B, H, LK, D)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call(q, k, v)


def test_opcheck():
    from pyprune.sparse.layout import _live_first
    mask = MASKS["random_per_batch"].reshape(-1, LQ // 32, LK // 32)
    rows, row_counts = _live_first(mask.reshape(-1, LK // 32))
    cols, col_counts = _live_first(mask.transpose(1, 2).reshape(-1, LQ // 32))
    q = torch.randn(B * H, LQ, D, requires_grad=True)
    k = torch.randn(B * H, LK, D, requires_grad=True)
    v = torch.randn(B * H, LK, D, requires_grad=True)
    torch.library.opcheck(torch.ops.pyprune.block_masked_attention.default,
                          (q, k, v, mask, rows, row_counts, cols, col_counts, H, D ** -0.5),
                          atol=1e-4, rtol=1e-4)
