"""Block-sparse Triton kernels on a GPU against the dense masked reference.
Skipped without a CUDA device (scripts/gpu_check.sh runs them on one)."""
import pytest
import torch

from pyprune.sparse import block_sparse_linear, build_layout, expand_mask

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.0])
def test_kernels_match_dense(dtype, density):
    from pyprune.triton_kernels import block_sparse_linear as kernels

    M, N, K = 1000, 1024, 768
    mask = torch.rand(N // 32, K // 32, device="cuda") < density
    layout = build_layout(mask)
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    w = torch.randn(N, K, device="cuda", dtype=dtype)
    element_mask = expand_mask(mask)
    exact = x.double() @ (w.double() * element_mask).T
    torch_error = ((x @ (w * element_mask.to(dtype)).T).double() - exact).abs().max()
    y = kernels.forward(x, w, None, layout.row_indices, layout.row_counts)
    assert (y.double() - exact).abs().max() <= 2 * torch_error + 1e-6
    dy = torch.randn(M, N, device="cuda", dtype=dtype)
    dw = kernels.grad_weight(dy, x, layout.row_indices, layout.row_counts)
    assert (dw[~element_mask] == 0).all()


def test_module_paths_agree_on_gpu():
    mask = torch.rand(32, 24, device="cuda") < 0.5
    x = torch.randn(64, 768, device="cuda", requires_grad=True)
    w = torch.randn(1024, 768, device="cuda", requires_grad=True)
    outs = [block_sparse_linear(x, w, None, mask, path=p) for p in ("masked_dense", "block_sparse")]
    torch.testing.assert_close(outs[0], outs[1], rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_matches_sdpa_on_deer_mask(dtype):
    """DEER-shaped mask: 256 source tokens, 512 target slots; source rows see
    only the source, target rows see everything."""
    from pyprune.sparse import block_masked_attention

    src, tgt, B, H, D = 256, 512, 4, 12, 64
    L = src + tgt
    block_mask = torch.ones(L // 32, L // 32, dtype=torch.bool, device="cuda")
    block_mask[: src // 32, src // 32:] = False
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    out = block_masked_attention(q, k, v, block_mask)
    element = expand_mask(block_mask)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=element)
    exact = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=element)
    assert (out.double() - exact).abs().max() <= 2 * (expected.double() - exact).abs().max() + 1e-3
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
