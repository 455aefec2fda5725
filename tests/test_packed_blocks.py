"""The packed block-sparse CPU kernel (pyprune.sparse.packed) against dense references, and
BlockSparseLinear's inference path onto it."""
import pytest
import torch
import torch.nn.functional as F

import pyprune
from pyprune.nn import BlockSparseLinear
from pyprune.sparse import expand_mask
from pyprune.sparse.packed import pack_blocks, packed_block_linear
from pyprune.sparse.packed_reference import bsr_linear, unpack_weight

from helpers import ISA_VARIANTS, assert_bfloat16_close, assert_prints_ok


def _mask(rows: int, cols: int, kind: str) -> torch.Tensor:
    if kind == "random":
        return torch.rand(rows, cols) < 0.5
    mask = torch.ones(rows, cols, dtype=torch.bool)
    if kind == "empty":
        mask[:] = False
    elif kind == "empty_row_and_column":
        mask[1] = False
        mask[:, 2] = False
    elif kind == "single":
        mask[:] = False
        mask[2, 1] = True
    return mask


MASK_KINDS = ["random", "full", "empty", "empty_row_and_column", "single"]


def _exact(x, weight, mask, bias):
    masked = weight.double() * expand_mask(mask)
    return F.linear(x.double(), masked, None if bias is None else bias.double())


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("tokens", [1, 4, 11, 25])   # tiles of 1, 4, 11 rows; 25 = 9 + 8 + 8
@pytest.mark.parametrize("with_bias", [True, False])
def test_packed_linear_against_dense(backend, kind, tokens, with_bias):
    mask = _mask(4, 5, kind)
    weight, x = torch.randn(128, 160), torch.randn(tokens, 160)
    bias = torch.randn(128) if with_bias else None
    y = packed_block_linear(x, pack_blocks(weight, mask), bias)
    assert y.dtype == torch.float32 and y.shape == (tokens, 128)
    torch.testing.assert_close(y.double(), _exact(x, weight, mask, bias), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("tokens", [1, 7, 9, 17])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bfloat16_sums_in_float32_and_rounds_once(backend, kind, tokens, with_bias):
    mask = _mask(4, 5, kind)
    weight, x = torch.randn(128, 160).bfloat16(), torch.randn(tokens, 160).bfloat16()
    bias = torch.randn(128).bfloat16() if with_bias else None
    y = packed_block_linear(x, pack_blocks(weight, mask), bias)
    assert y.dtype == torch.bfloat16 and y.shape == (tokens, 128)
    assert_bfloat16_close(y, _exact(x, weight, mask, bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 7, 9, 17])
def test_gelu_epilogue_is_torchs_exact_gelu(backend, dtype, tokens):
    mask = _mask(4, 5, "random")
    weight, x, bias = (t.to(dtype) for t in (torch.randn(128, 160), torch.randn(tokens, 160), torch.randn(128)))
    y = packed_block_linear(x, pack_blocks(weight, mask), bias, activation="gelu")
    before = _exact(x, weight, mask, bias)
    exact = F.gelu(before)
    if dtype == torch.bfloat16:
        # The reference rounds the linear output, then the GELU's (the kernel rounds once:
        # test_every_isa_variant_matches): GELU's slope is below 1.13.
        assert bool(((y.double() - exact).abs() <= 2.0 ** -8 * (exact.abs() + 1.13 * before.abs()) + 1e-4).all())
    else:
        torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-4)
    # Not the tanh approximation: the two differ by up to 1e-3 around |x| = 2.
    assert (exact - F.gelu(_exact(x, weight, mask, bias), approximate="tanh")).abs().max() > 1e-4


def test_packing_round_trip_and_layout():
    mask = _mask(4, 5, "random")
    weight = torch.randn(128, 160) * expand_mask(mask)
    packed = pack_blocks(weight, mask)
    assert packed.blocks.shape == (int(mask.sum()), 32, 32) and packed.out_features == 128
    assert packed.row_ptr.tolist() == [0] + mask.sum(1).cumsum(0).tolist()
    assert torch.equal(unpack_weight(packed.blocks, packed.row_ptr, packed.col_index, 160), weight)
    r, c = mask.nonzero()[0].tolist()                    # the first live block, stored transposed
    assert torch.equal(packed.blocks[0], weight[32 * r:32 * r + 32, 32 * c:32 * c + 32].T)
    x = torch.randn(3, 160, dtype=torch.float64)
    torch.testing.assert_close(bsr_linear(x, packed.blocks.double(), packed.row_ptr, packed.col_index, None),
                               _exact(x, weight, mask, None))


def test_strided_and_batched_inputs(backend):
    mask = _mask(3, 4, "random")
    weight, bias = torch.randn(96, 128), torch.randn(96)
    packed = pack_blocks(weight, mask)
    wide = torch.randn(2, 5, 200)
    x = wide[..., 10:138]                                # rows strided wider than the features
    y = packed_block_linear(x, packed, bias)
    assert y.shape == (2, 5, 96)
    torch.testing.assert_close(y.double(), _exact(x, weight, mask, bias), rtol=1e-5, atol=1e-4)
    columns = torch.randn(128, 6).T                      # not contiguous in the feature dimension
    torch.testing.assert_close(packed_block_linear(columns, packed, bias).double(),
                               _exact(columns, weight, mask, bias), rtol=1e-5, atol=1e-4)


def test_bfloat16_rows_with_an_odd_stride(backend):
    mask = _mask(3, 4, "random")
    weight = torch.randn(96, 128).bfloat16()
    x = torch.randn(5, 201).bfloat16()[:, 7:135]          # row stride 201: feature pairs start at odd offsets
    y = packed_block_linear(x, pack_blocks(weight, mask))
    assert_bfloat16_close(y, _exact(x, weight, mask, None))


def test_other_dtypes_run_on_the_reference():
    mask = _mask(3, 4, "random")
    weight, x = torch.randn(96, 128, dtype=torch.float64), torch.randn(5, 128, dtype=torch.float64)
    y = packed_block_linear(x, pack_blocks(weight, mask))
    torch.testing.assert_close(y, _exact(x, weight, mask, None))


@pytest.mark.parametrize("isa", ISA_VARIANTS)
def test_every_isa_variant_matches(isa):
    """Each compiled variant (isa_dispatch.h), forced with PYPRUNE_CPU_ISA in a fresh process, in float32 and
    bfloat16 (AVX512_BF16's pairwise dot products where the CPU has them, widening to float32 below)."""
    if not pyprune.backends.has_kernel("bsr_linear", "CPU"):
        pytest.skip("C++ extension not built")
    script = (
        "import torch; from pyprune.sparse.packed import pack_blocks; from pyprune.sparse import expand_mask\n"
        "torch.manual_seed(0); mask = torch.rand(5, 6) < 0.6\n"
        "for dtype, slack in ((torch.float32, 0.0), (torch.bfloat16, 2.0 ** -8)):\n"
        "    w = torch.randn(160, 192).to(dtype); b = torch.randn(160).to(dtype); p = pack_blocks(w, mask)\n"
        "    for m in (1, 3, 4, 5, 8, 9, 12, 13, 25):\n"
        "        x = torch.randn(m, 192).to(dtype)\n"
        "        for act in ('none', 'gelu'):\n"
        "            y = torch.ops.pyprune_C.bsr_linear(x, p.blocks, p.row_ptr, p.col_index, b, act)\n"
        "            exact = x.double() @ (w.double() * expand_mask(mask)).T + b.double()\n"
        "            exact = torch.nn.functional.gelu(exact) if act == 'gelu' else exact\n"
        "            assert y.dtype == dtype and bool(((y.double() - exact).abs() <= slack * exact.abs() + 1e-4).all()), m\n"
        "print('ok')\n")
    assert_prints_ok(script, PYPRUNE_CPU_ISA=isa)


def test_opcheck():
    mask = _mask(3, 4, "random")
    packed = pack_blocks(torch.randn(96, 128), mask)
    torch.library.opcheck(torch.ops.pyprune.packed_block_linear.default,
                          (torch.randn(5, 128), packed.blocks, packed.row_ptr, packed.col_index, torch.randn(96)),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.pyprune.packed_block_linear.default,
                          (torch.randn(5, 128), packed.blocks, packed.row_ptr, packed.col_index, None, "gelu"),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("call,name", [
    (lambda p: packed_block_linear(torch.randn(3, 100), p), "x"),
    (lambda p: packed_block_linear(torch.randn(3, 128, dtype=torch.float64), p), "x"),
    (lambda p: packed_block_linear(torch.randn(3, 128, requires_grad=True), p), "x"),
    (lambda p: packed_block_linear(torch.randn(3, 128), p, torch.randn(95)), "bias"),
    (lambda p: packed_block_linear(torch.randn(3, 128), p, activation="relu"), "activation"),
    (lambda p: pack_blocks(torch.randn(96, 100), torch.ones(3, 4, dtype=torch.bool)), "weight"),
    (lambda p: pack_blocks(torch.randn(96, 128), torch.ones(3, 3, dtype=torch.bool)), "block_mask"),
    (lambda p: pack_blocks(torch.randn(96, 128), torch.ones(3, 4)), "block_mask"),
])
def test_bad_inputs_name_the_argument(call, name):
    packed = pack_blocks(torch.randn(96, 128), _mask(3, 4, "random"))
    with pytest.raises(ValueError, match=f"^{name}:"):
        call(packed)


def test_raw_kernel_rejects_indices_that_would_read_out_of_bounds():
    if not pyprune.backends.has_kernel("bsr_linear", "CPU"):
        pytest.skip("C++ extension not built")
    packed = pack_blocks(torch.randn(96, 128), _mask(3, 4, "full"))
    x, op = torch.randn(2, 128), torch.ops.pyprune_C.bsr_linear
    bad_column = packed.col_index.clone()
    bad_column[3] = 4                                    # x has 4 block columns: 0..3
    bad_rows = packed.row_ptr.clone()
    bad_rows[-1] += 1                                    # one more block than stored
    unordered = torch.tensor([0, 8, 4, 12])
    for args, message in [((x, packed.blocks, packed.row_ptr, bad_column, None), "col_index"),
                          ((x, packed.blocks, bad_rows, packed.col_index, None), "row_ptr"),
                          ((x, packed.blocks, unordered, packed.col_index, None), "non-decreasing"),
                          ((x[:, :96], packed.blocks, packed.row_ptr, packed.col_index, None), "col_index"),
                          ((x, packed.blocks, packed.row_ptr, packed.col_index, torch.randn(95)), "bias")]:
        with pytest.raises(RuntimeError, match=message):
            op(*args)


def test_module_infers_on_packed_blocks_and_trains_without_them(monkeypatch):
    mask = _mask(12, 12, "random")
    layer = BlockSparseLinear.from_dense(torch.nn.Linear(384, 384), mask)
    x = torch.randn(1, 14, 384)                          # one sentence of decoding
    expected = _exact(x, layer.weight, mask, layer.bias)
    import pyprune.nn.sparse as module
    packs = []
    monkeypatch.setattr(module, "pack_blocks", lambda *a: packs.append(1) or pack_blocks(*a))
    with torch.no_grad():
        if pyprune.backends.has_kernel("bsr_linear", "CPU"):
            assert layer.explain(14).path == "packed_blocks"
            assert layer.explain(14).costs["packed_blocks"] < layer.explain(14).costs["masked_dense"]
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-4)
        layer(x)
        with pyprune.backends.disabled("cpp"):
            assert layer.explain(14).path != "packed_blocks"
            torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-4)
        packed_calls = len(packs)
        layer.weight.mul_(2.0)                           # an in-place change repacks
        torch.testing.assert_close(layer(x).double(), 2 * expected - layer.bias.double(), rtol=1e-5, atol=1e-4)
        assert len(packs) == packed_calls + (1 if pyprune.backends.has_kernel("bsr_linear", "CPU") else 0)
    assert layer.explain(14).path != "packed_blocks"     # with autograd: a differentiable path
    layer(x).sum().backward()
    assert layer.weight.grad is not None and (layer.weight.grad[~expand_mask(mask)] == 0).all()
    frozen = torch.randn(1, 14, 384, requires_grad=True)
    layer.requires_grad_(False)
    layer(frozen).sum().backward()                       # the input still gets its gradient
    assert frozen.grad is not None
    if pyprune.backends.has_kernel("bsr_linear", "CPU"):
        assert packs and len(packs) == packed_calls + 1  # packed once per weight version, kept otherwise
