"""Block-sparse linear: Triton kernels (interpreted on CPU) and every path
against the dense masked reference, gradients, edge masks, the module."""
import pytest
import torch
import torch.nn.functional as F

import pyprune
from pyprune import backends
from pyprune.nn import BlockSparseLinear
from pyprune.sparse import build_layout, block_sparse_linear, choose_path, expand_mask, layout_for
from pyprune.sparse.linear import compact_weight

triton = pytest.importorskip("triton")
from pyprune.triton_kernels import block_sparse_linear as kernels  # noqa: E402

N_BLOCKS, K_BLOCKS = 3, 5  # N = 96, K = 160


def _masks():
    generator = torch.Generator().manual_seed(0)
    random = torch.rand(N_BLOCKS, K_BLOCKS, generator=generator) < 0.5
    single = torch.zeros(N_BLOCKS, K_BLOCKS, dtype=torch.bool)
    single[1, 3] = True
    empty_row_col = torch.ones(N_BLOCKS, K_BLOCKS, dtype=torch.bool)
    empty_row_col[1] = False
    empty_row_col[:, 2] = False
    return {"random": random, "all_empty": torch.zeros_like(random), "all_full": torch.ones_like(random),
            "single": single, "empty_row_and_column": empty_row_col}


MASKS = _masks()


def _reference(x, w, b, mask):
    return F.linear(x.double(), (w.double() * expand_mask(mask)), None if b is None else b.double())


def _tolerance_check(got, exact, x, w, b, mask, dtype):
    """flash-attention's rule: at most twice torch's own error in that dtype."""
    torch_same_dtype = F.linear(x, (w * expand_mask(mask).to(dtype)), b).double()
    ours = (got.double() - exact).abs().max()
    theirs = (torch_same_dtype - exact).abs().max()
    assert ours <= 2 * theirs + 1e-5 * exact.abs().max().clamp(min=1), (ours, theirs)


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 37, 80])
def test_triton_kernels_against_dense(mask_name, dtype, M):
    mask = MASKS[mask_name]
    layout = build_layout(mask)
    x = torch.randn(M, K_BLOCKS * 32).to(dtype)
    w = torch.randn(N_BLOCKS * 32, K_BLOCKS * 32).to(dtype)
    b = torch.randn(N_BLOCKS * 32).to(dtype)
    y = kernels.forward(x, w, b, layout.row_indices, layout.row_counts)
    _tolerance_check(y, _reference(x, w, b, mask), x, w, b, mask, dtype)
    dy = torch.randn(M, N_BLOCKS * 32).to(dtype)
    dx = kernels.grad_input(dy, w, layout.col_indices, layout.col_counts)
    dw = kernels.grad_weight(dy, x, layout.row_indices, layout.row_counts)
    element_mask = expand_mask(mask)
    exact_dx = dy.double() @ (w.double() * element_mask)
    exact_dw = (dy.double().T @ x.double()) * element_mask
    torch_dx = (dy @ (w * element_mask.to(dtype))).double()
    torch_dw = ((dy.T @ x) * element_mask.to(dtype)).double()
    assert (dx.double() - exact_dx).abs().max() <= 2 * (torch_dx - exact_dx).abs().max() + 1e-5 * max(1.0, exact_dx.abs().max())
    assert (dw.double() - exact_dw).abs().max() <= 2 * (torch_dw - exact_dw).abs().max() + 1e-5 * max(1.0, exact_dw.abs().max())
    assert (dw[~element_mask] == 0).all()


@pytest.mark.parametrize("path", ["masked_dense", "compact_dense", "block_sparse"])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_every_path_forward_and_gradients(path, mask_name):
    """float32, so that the block_sparse path runs the Triton kernels."""
    mask = MASKS[mask_name]
    x = torch.randn(4, 9, K_BLOCKS * 32, requires_grad=True)
    w = torch.randn(N_BLOCKS * 32, K_BLOCKS * 32, requires_grad=True)
    b = torch.randn(N_BLOCKS * 32, requires_grad=True)
    y = block_sparse_linear(x, w, b, mask, path=path)
    seed = torch.randn_like(y)
    grads = torch.autograd.grad((y * seed).sum(), (x, w, b))
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y2 = F.linear(x2, w2 * expand_mask(mask), b2)
    expected = torch.autograd.grad((y2 * seed).sum(), (x2, w2, b2))
    torch.testing.assert_close(y, y2, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_op_gradcheck_and_opcheck():
    """float64: the op's autograd wiring, on the reference kernels (Triton
    kernels take float32/16 and bf16 and are checked against dense above)."""
    mask = MASKS["random"]
    layout = build_layout(mask)
    x = torch.randn(2, K_BLOCKS * 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(N_BLOCKS * 32, K_BLOCKS * 32, dtype=torch.float64, requires_grad=True)
    b = torch.randn(N_BLOCKS * 32, dtype=torch.float64, requires_grad=True)
    args = (x, w, b, layout.mask, layout.row_indices, layout.row_counts, layout.col_indices, layout.col_counts)
    assert torch.autograd.gradcheck(lambda x, w, b: torch.ops.pyprune.block_sparse_linear(x, w, b, *args[3:]),
                                    (x, w, b), fast_mode=True)
    torch.library.opcheck(torch.ops.pyprune.block_sparse_linear.default, args)


def test_layout_lists_and_cache():
    mask = MASKS["empty_row_and_column"].clone()
    layout = layout_for(mask)
    for r in range(N_BLOCKS):
        live = mask[r].nonzero().squeeze(1).tolist()
        assert layout.row_indices[r, : layout.row_counts[r]].tolist() == live
    for c in range(K_BLOCKS):
        assert layout.col_indices[c, : layout.col_counts[c]].tolist() == mask[:, c].nonzero().squeeze(1).tolist()
    assert layout_for(mask) is layout
    mask[1, 2] = True  # in-place edit: the layout is rebuilt
    assert layout_for(mask) is not layout and int(layout_for(mask).row_counts[1]) == 1


def test_path_choice_prefers_cheaper_and_never_worse_than_masked_dense():
    half_rows = torch.ones(32, 32, dtype=torch.bool)
    half_rows[::2] = False                         # FFN-style: half the block rows pruned
    choice = choose_path(layout_for(half_rows), 1024, torch.device("cpu"))
    assert choice.costs[choice.path] <= choice.costs["masked_dense"]
    assert choice.path == "compact_dense"
    full = choose_path(layout_for(MASKS["all_full"]), 1024, torch.device("cpu"))
    assert full.path == "masked_dense"


def test_module_is_drop_in_both_ways():
    dense = torch.nn.Linear(K_BLOCKS * 32, N_BLOCKS * 32)
    sparse = BlockSparseLinear.from_dense(dense, MASKS["random"])
    assert sparse.state_dict().keys() == dense.state_dict().keys()
    x = torch.randn(3, K_BLOCKS * 32)
    torch.testing.assert_close(sparse(x), sparse.to_dense()(x))
    # sparse -> dense checkpoint and back: the mask is recovered from the zeros
    plain = torch.nn.Linear(K_BLOCKS * 32, N_BLOCKS * 32)
    plain.load_state_dict(sparse.state_dict())
    again = BlockSparseLinear(K_BLOCKS * 32, N_BLOCKS * 32)
    again.load_state_dict(plain.state_dict())
    assert torch.equal(again.block_mask, MASKS["random"])
    torch.testing.assert_close(again(x), sparse(x))
    # a dense checkpoint loads as all-live
    fresh = BlockSparseLinear(K_BLOCKS * 32, N_BLOCKS * 32)
    fresh.load_state_dict(dense.state_dict())
    assert fresh.block_mask.all()
    assert "live_blocks" in repr(sparse)


def test_inference_skips_remasking_the_weight(monkeypatch):
    layer = BlockSparseLinear.from_dense(torch.nn.Linear(K_BLOCKS * 32, N_BLOCKS * 32), MASKS["random"])
    x = torch.randn(3, K_BLOCKS * 32)
    assert layer.explain(3).path == "masked_dense"
    with_grad = layer(x)
    import pyprune.nn.sparse as module
    monkeypatch.setattr(module, "block_sparse_linear", lambda *a: pytest.fail("the op was called"))
    with torch.no_grad():
        fast = layer(x)                  # plain F.linear on the stored weight (dead blocks are zeros)
    torch.testing.assert_close(fast, with_grad)
    torch.testing.assert_close(fast, x @ (layer.weight * expand_mask(MASKS["random"])).T + layer.bias)


def test_inference_keeps_the_compacted_weight(monkeypatch):
    rows = torch.ones(16, 16, dtype=torch.bool)
    rows[::2] = False                                   # FFN-style: half the block rows pruned
    rows[1, 0] = False                                  # and one block dead inside a kept row
    layer = BlockSparseLinear.from_dense(torch.nn.Linear(512, 512), rows)
    x = torch.randn(2, 20, 512)
    import pyprune.nn.sparse as module
    gathers = []
    monkeypatch.setattr(module, "compact_weight", lambda *a: gathers.append(1) or compact_weight(*a))
    expected = x @ (layer.weight * expand_mask(rows)).T + layer.bias
    with backends.disabled("cpp"), torch.no_grad():     # no packed kernel: the dense paths compete
        # Forty tokens: gathering the live weight on every call would cost more than it saves, but a
        # layer that keeps the gathered weight (no weight gradient) wins with the compacted matmul.
        assert layer.explain(40, weight_grad=True).path == "masked_dense"
        assert layer.explain(40, weight_grad=False).path == "compact_dense"
        torch.testing.assert_close(layer(x), expected)
        torch.testing.assert_close(layer(x), expected)
        assert len(gathers) == 1                        # gathered once, then kept
        layer.weight.mul_(2.0)                          # an in-place change is seen
        torch.testing.assert_close(layer(x), 2 * expected - layer.bias)
        assert len(gathers) == 2
        layer.set_block_mask(torch.ones_like(rows))     # so is a new mask
        assert layer.explain(40).path == "masked_dense"


def test_training_keeps_dead_blocks_zero():
    layer = BlockSparseLinear(K_BLOCKS * 32, N_BLOCKS * 32, block_mask=MASKS["random"])
    layer.force_path = "block_sparse"
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(8, K_BLOCKS * 32)).square().mean().backward()
        optimizer.step()
    assert (layer.weight[~expand_mask(MASKS["random"])] == 0).all()


@pytest.mark.parametrize("call,name", [
    (lambda: BlockSparseLinear(100, 64), "in_features"),
    (lambda: BlockSparseLinear(64, 70), "out_features"),
    (lambda: BlockSparseLinear(64, 64, block_mask=torch.ones(3, 2, dtype=torch.bool)), "block_mask"),
    (lambda: BlockSparseLinear(64, 64).set_block_mask(torch.ones(2, 2)), "block_mask"),
    (lambda: block_sparse_linear(torch.randn(2, 63), torch.randn(64, 64), None, torch.ones(2, 2, dtype=torch.bool)), "x"),
    (lambda: block_sparse_linear(torch.randn(2, 64), torch.randn(64, 60), None, torch.ones(2, 2, dtype=torch.bool)), "weight"),
    (lambda: block_sparse_linear(torch.randn(2, 64), torch.randn(64, 64), torch.randn(3), torch.ones(2, 2, dtype=torch.bool)), "bias"),
    (lambda: block_sparse_linear(torch.randn(2, 64), torch.randn(64, 64), None, torch.ones(2, 2, dtype=torch.bool), path="fast"), "path"),
])
def test_bad_input(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


def test_triton_backend_switch_falls_back_to_reference():
    mask = MASKS["random"]
    x = torch.randn(3, K_BLOCKS * 32)
    w = torch.randn(N_BLOCKS * 32, K_BLOCKS * 32)
    with pyprune.backends.disabled("triton"):
        y = block_sparse_linear(x, w, None, mask, path="block_sparse")
    torch.testing.assert_close(y, F.linear(x, w * expand_mask(mask)))
