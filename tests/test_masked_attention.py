"""The decoding attention kernel (pyprune_C::masked_attention) against a float64 softmax over the visible keys,
and the public op (pyprune.ops.masked_attention) against torch's attention."""
import math

import pytest
import torch
import torch.nn.functional as F

import pyprune
from pyprune.ops import attention_reference, masked_attention

from helpers import ISA_VARIANTS, assert_prints_ok

needs_kernel = pytest.mark.skipif(not pyprune.backends.has_kernel("masked_attention", "CPU"),
                                  reason="the cpp extension is not built")


def _exact(q, k, v, key_valid, prefix, scale):
    """float64 result of the inputs as given (bfloat16 widened exactly)."""
    return attention_reference.masked_attention(q.double(), k.double(), v.double(), key_valid, prefix, scale)


def _inputs(B, H, Q, K, D, dtype, layout="heads", seed=0):
    """q, k, v as the layers hold them: 'heads' views a linear layer's (B, L, H*D) output as (B, H, L, D)
    (strided, read in place), 'contiguous' is (B, H, L, D) memory, 'padded' rows wider than D."""
    g = torch.Generator().manual_seed(seed)

    def one(L):
        if layout == "heads":
            return torch.randn(B, L, H * D, generator=g).to(dtype).view(B, L, H, D).transpose(1, 2)
        if layout == "padded":
            return torch.randn(B, H, L, D + 5, generator=g).to(dtype)[..., :D]
        return torch.randn(B, H, L, D, generator=g).to(dtype)
    return one(Q), one(K), one(K)


# (B, H, Q, K, D, prefix): DEER's edit pass, its CTC pass (source rows first), the AR's step, and shapes off
# the kernel's 16-key / 16-feature / 4-row granularity (head sizes that are not a multiple of 16 take the
# plain-loop path).
SHAPES = [(1, 12, 17, 38, 32, 0), (1, 12, 63, 63, 32, 21), (3, 12, 1, 18, 32, 0), (2, 4, 5, 40, 64, 7),
          (2, 3, 9, 16, 24, 16), (1, 2, 4, 1, 8, 0), (2, 5, 33, 70, 48, 30), (1, 2, 6, 17, 128, 3)]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["heads", "contiguous", "padded"])
@pytest.mark.parametrize("masked", [False, True])
def test_kernel_matches_the_exact_softmax(dtype, shape, layout, masked):
    B, H, Q, K, D, prefix = shape
    q, k, v = _inputs(B, H, Q, K, D, dtype, layout)
    key_valid = None
    if masked:
        key_valid = torch.rand(B, K, generator=torch.Generator().manual_seed(1)) < 0.7
        key_valid[0, :max(prefix, 1)] = False         # row 0: source rows see nothing, target rows the rest
    scale = D ** -0.5
    out = torch.ops.pyprune_C.masked_attention(q, k, v, key_valid, prefix, scale)
    exact = _exact(q, k, v, key_valid, prefix, scale)
    assert out.shape == (B, Q, H * D) and out.dtype == dtype and out.is_contiguous()
    # float32: summation order and exp; bfloat16: the output rounded once (half an ulp, 2^-9 relative).
    slack = 2.0 ** -8 if dtype == torch.bfloat16 else 1e-5
    assert bool(((out.double() - exact).abs() <= slack * exact.abs() + 2e-5).all())
    if masked:
        seen = attention_reference.visible_keys(Q, K, key_valid, prefix, q.device)
        empty = ~seen.any(-1)                                            # (B, Q) rows with nothing to see
        if prefix:
            assert bool(empty[0, :prefix].all())           # batch row 0's source rows have nothing to see
        assert bool((out[empty] == 0).all())


@needs_kernel
def test_no_keys_and_no_queries():
    q, k, v = _inputs(2, 3, 4, 0, 32, torch.float32)
    assert torch.equal(torch.ops.pyprune_C.masked_attention(q, k, v, None, 0, 0.1), torch.zeros(2, 4, 96))
    q, k, v = _inputs(2, 3, 0, 5, 32, torch.float32)
    assert torch.ops.pyprune_C.masked_attention(q, k, v, None, 0, 0.1).shape == (2, 0, 96)


@needs_kernel
def test_nan_stays_in_its_row():
    q, k, v = _inputs(1, 2, 3, 5, 32, torch.float32, "contiguous")
    q[0, 1, 2, 7] = float("nan")
    out = torch.ops.pyprune_C.masked_attention(q, k, v, None, 0, 0.2).view(1, 3, 2, 32)
    assert out[0, 2, 1].isnan().all() and not out[0, :2].isnan().any() and not out[0, 2, 0].isnan().any()
    # A NaN key gives NaN scores among finite ones: every row of its head, four rows at a time or alone.
    for rows in (6, 2):
        q, k, v = _inputs(1, 2, rows, 7, 32, torch.float32, "contiguous")
        k[0, 0, 3, 5] = float("nan")
        out = torch.ops.pyprune_C.masked_attention(q, k, v, None, 0, 0.2).view(1, rows, 2, 32)
        assert out[0, :, 0].isnan().all() and not out[0, :, 1].isnan().any()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_nan_value_reaches_only_the_rows_that_see_its_key(dtype):
    # Rows before the prefix (DEER's source rows) never see the keys after it, whatever those hold, also
    # where they share a group of four rows with rows that do (rows 0-3, prefix 3), and masked keys reach
    # no row.
    q, k, clean = _inputs(1, 2, 8, 9, 32, dtype, "contiguous")
    v = clean.clone()
    v[0, :, 5] = float("nan")                               # a target key
    v[0, :, 1] = float("inf")                               # a padding key among the source's
    valid = torch.ones(1, 9, dtype=torch.bool)
    valid[0, 1] = False
    out = torch.ops.pyprune_C.masked_attention(q, k, v, valid, 3, 0.2).view(1, 8, 2, 32)
    assert not out[0, :3].isnan().any() and out[0, 3:].isnan().all()
    exact = _exact(q, k, clean, valid, 3, 0.2).view(1, 8, 2, 32)
    torch.testing.assert_close(out[0, :3].float(), exact[0, :3].float(), atol=1e-2, rtol=1e-2)


@needs_kernel
@pytest.mark.parametrize("isa", ISA_VARIANTS)
def test_every_isa_variant_matches(isa):
    """Each compiled variant (isa_dispatch.h), forced with PYPRUNE_CPU_ISA in a fresh process."""
    script = (
        "import torch; from pyprune.ops import attention_reference as R\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for dtype, slack in ((torch.float32, 1e-5), (torch.bfloat16, 2.0 ** -8)):\n"
        "    for B, H, Q, K, D, prefix in ((1, 4, 17, 38, 32, 5), (2, 3, 1, 18, 64, 0), (1, 2, 9, 21, 24, 4)):\n"
        "        q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype) for n in (Q, K, K))\n"
        "        valid = torch.rand(B, K, generator=g) < 0.8\n"
        "        out = torch.ops.pyprune_C.masked_attention(q, k, v, valid, prefix, D ** -0.5)\n"
        "        exact = R.masked_attention(q.double(), k.double(), v.double(), valid, prefix, D ** -0.5)\n"
        "        assert bool(((out.double() - exact).abs() <= slack * exact.abs() + 2e-5).all()), (dtype, D)\n"
        "print('ok')\n")
    assert_prints_ok(script, PYPRUNE_CPU_ISA=isa)


@pytest.mark.parametrize("backend_on", [True, False])
def test_public_op_equals_torch_attention(backend_on):
    """Where every row sees a key, the op is torch's attention with the same mask, heads merged; the
    reference (cpp backend off) agrees with the kernel."""
    B, H, Q, K, D, S = 2, 4, 11, 19, 32, 6
    q, k, v = _inputs(B, H, Q, K, D, torch.float32)
    key_valid = torch.ones(B, K, dtype=torch.bool)
    key_valid[1, 3] = key_valid[1, 15:] = False
    allowed = attention_reference.visible_keys(Q, K, key_valid, S, q.device)[:, None]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2).reshape(B, Q, H * D)
    if backend_on:
        got = masked_attention(q, k, v, key_valid, prefix=S)
    else:
        with pyprune.backends.disabled("cpp"):
            got = masked_attention(q, k, v, key_valid, prefix=S)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


def test_gradients_flow_through_the_reference():
    q, k, v = (t.clone().requires_grad_() for t in _inputs(1, 2, 5, 7, 16, torch.float64, "contiguous"))
    key_valid = torch.tensor([[True] * 6 + [False]])
    out = masked_attention(q, k, v, key_valid, prefix=2)
    torch.autograd.gradcheck(lambda a, b, c: masked_attention(a, b, c, key_valid, prefix=2), (q, k, v))
    out.sum().backward()
    assert k.grad[0, :, 6].abs().sum() == 0 and q.grad.abs().sum() > 0     # the padded key gets no gradient


def test_other_dtypes_run_on_the_reference():
    q, k, v = _inputs(1, 2, 3, 4, 16, torch.float64, "contiguous")
    torch.testing.assert_close(masked_attention(q, k, v), _exact(q, k, v, None, 0, 0.25))


def test_bad_inputs_raise_clear_errors():
    q, k, v = _inputs(2, 3, 4, 5, 16, torch.float32, "contiguous")
    with pytest.raises(ValueError, match="q: expected a floating-point tensor of shape"):
        masked_attention(q[0], k, v)
    with pytest.raises(ValueError, match="k/v: expected shape"):
        masked_attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="v: expected a torch.float32 tensor"):
        masked_attention(q, k, v.double())
    with pytest.raises(ValueError, match=r"key_valid: expected None or a bool \(2, 5\) tensor"):
        masked_attention(q, k, v, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_valid: expected .* got torch.int64"):
        masked_attention(q, k, v, torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"prefix: expected an integer in \[0, 5\]"):
        masked_attention(q, k, v, prefix=6)
    with pytest.raises(ValueError, match="scale: expected a finite number"):
        masked_attention(q, k, v, scale=math.inf)


@needs_kernel
def test_the_kernel_checks_what_steers_its_reads():
    q, k, v = _inputs(2, 3, 4, 5, 16, torch.float32, "contiguous")
    op = torch.ops.pyprune_C.masked_attention
    with pytest.raises(RuntimeError, match="key_valid must be a \\(batch, keys\\) bool"):
        op(q, k, v, torch.ones(2, 6, dtype=torch.bool), 0, 0.25)
    with pytest.raises(RuntimeError, match="prefix must be in \\[0, keys\\]"):
        op(q, k, v, None, 6, 0.25)
    with pytest.raises(RuntimeError, match="k and v must be \\(batch, heads, keys, head_dim\\)"):
        op(q, k, v[:, :2], None, 0, 0.25)
    with pytest.raises(RuntimeError, match="k and v must be 4-D CPU tensors of q's dtype"):
        op(q, k.double(), v, None, 0, 0.25)
    # Features that are not contiguous are copied, not misread.
    wide = torch.randn(2, 3, 5, 32)[..., ::2]
    torch.testing.assert_close(op(q, wide, wide, None, 0, 0.25), op(q, wide.contiguous(), wide.contiguous(), None, 0, 0.25))


def test_opcheck():
    q, k, v = _inputs(2, 3, 4, 5, 16, torch.float32, "contiguous")
    torch.library.opcheck(torch.ops.pyprune.masked_attention.default,
                          (q, k, v, torch.rand(2, 5) < 0.8, 2, 0.25), test_utils=("test_schema", "test_faketensor"))


@needs_kernel
def test_benchmark_runs_and_reports_both_providers(monkeypatch):
    from pyprune.benchmarks import attention as bench
    monkeypatch.setattr(bench, "SHAPES", bench.SHAPES[:1] + bench.SHAPES[3:4])
    monkeypatch.setattr(bench, "CALLS", 3)
    result = bench.run(repeats=1)
    assert len(result["rows"]) == 4 and all(r["torch_us"] > 0 and r["kernel_us"] > 0 for r in result["rows"])
    assert all(r["max_abs_error"] < (1e-2 if r["dtype"] == "bfloat16" else 1e-5) for r in result["rows"])
    assert "DEER CTC pass" in bench.format_table(result)


def test_decoding_code_uses_the_kernel_only_when_no_input_needs_a_gradient():
    from pyprune.ops import attention
    q, k, v = _inputs(1, 2, 3, 4, 16, torch.float32, "contiguous")
    usable = pyprune.backends.has_kernel("masked_attention", "CPU")
    assert attention.kernel_usable(q, k, v) == usable
    assert not attention.kernel_usable(q, k.requires_grad_(), v)          # a key that trains: torch's attention
    with torch.no_grad():
        assert attention.kernel_usable(q, k, v) == usable
    assert not attention.kernel_usable(q.double(), k.double(), v.double())
    with pyprune.backends.disabled("cpp"):
        assert not attention.kernel_usable(q, k.detach(), v)
