"""PackedLinear and pack_linears (pyprune.nn.packed): nn.Linear layers on the packed-blocks CPU kernel."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyprune
import transformers
from pyprune.nn import BlockSparseLinear, PackedLinear, fuse_gelu, pack_linears
from pyprune.sparse.linear import packed_usable

from helpers import assert_bfloat16_close

needs_kernel = pytest.mark.skipif(not packed_usable(torch.device("cpu"), torch.float32),
                                  reason="the cpp extension (bsr_linear) is not built")


@pytest.mark.parametrize("in_features,out_features", [(64, 96), (70, 45), (33, 31), (1, 1)])
@pytest.mark.parametrize("leading", [(), (9,), (2, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_linear_at_any_width(in_features, out_features, leading, with_bias):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=with_bias)
    packed = PackedLinear.from_linear(linear)
    x = torch.randn(*leading, in_features)
    with torch.no_grad():
        y = packed(x)
    assert y.shape == (*leading, out_features) and y.dtype == torch.float32
    bias = None if linear.bias is None else linear.bias.double()
    torch.testing.assert_close(y.double(), F.linear(x.double(), linear.weight.double(), bias), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("in_features,out_features", [(64, 96), (70, 45)])
def test_bfloat16_layer_rounds_the_float32_sum_once(in_features, out_features):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features).to(torch.bfloat16)
    packed = PackedLinear.from_linear(linear)
    x = torch.randn(2, 9, in_features).to(torch.bfloat16)
    with torch.no_grad():
        y = packed(x)
        assert torch.equal(y, packed._checked(x))        # the direct call and the registered op agree
    assert y.shape == (2, 9, out_features) and y.dtype == torch.bfloat16 and packed.blocks.dtype == torch.bfloat16
    exact = F.linear(x.double(), linear.weight.double(), linear.bias.double())
    assert_bfloat16_close(y, exact)


def test_zero_blocks_are_skipped_and_a_block_sparse_layer_stays_exact():
    torch.manual_seed(1)
    mask = torch.rand(3, 4) < 0.5
    mask[0, 0] = True
    layer = BlockSparseLinear(128, 96, block_mask=mask)
    packed = PackedLinear.from_linear(layer)
    assert packed.live_blocks == int(mask.sum())
    assert f"live_blocks={int(mask.sum())}/12" in repr(packed)
    x = torch.randn(6, 128)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=1e-5)
    dead = PackedLinear(torch.zeros(40, 40), torch.arange(40.0))     # no live block: the bias alone
    assert dead.live_blocks == 0
    with torch.no_grad():
        assert torch.equal(dead(torch.randn(3, 40)), torch.arange(40.0).expand(3, 40))


def test_the_layer_copies_and_does_not_train():
    linear = nn.Linear(32, 32)
    packed = PackedLinear.from_linear(linear)
    with torch.no_grad():
        before = packed(torch.ones(1, 32))
        linear.weight.zero_()                             # the source layer changing does not reach the copy
        assert torch.equal(packed(torch.ones(1, 32)), before)
    assert list(packed.parameters()) == []
    with pytest.raises(ValueError, match="input"):
        packed(torch.ones(1, 32, requires_grad=True))


@needs_kernel
def test_the_direct_kernel_call_is_the_registered_op():
    torch.manual_seed(3)
    packed = PackedLinear.from_linear(nn.Linear(70, 45))
    x = torch.randn(2, 3, 70)
    with torch.no_grad():
        direct = packed(x)
        assert torch.equal(direct, packed._checked(x))               # the same kernel through the dispatcher
        with pyprune.backends.disabled("cpp"):                       # the op's reference, not the kernel
            torch.testing.assert_close(packed(x), direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call,name", [
    (lambda: PackedLinear(torch.zeros(4)), "weight"),
    (lambda: PackedLinear(torch.zeros(4, 4, dtype=torch.long)), "weight"),
    (lambda: PackedLinear(torch.zeros(4, 4), torch.zeros(5)), "bias"),
    (lambda: PackedLinear.from_linear(nn.Conv1d(2, 2, 1)), "linear"),
    (lambda: PackedLinear(torch.zeros(4, 6))(torch.zeros(2, 5)), "input"),
    (lambda: PackedLinear(torch.zeros(4, 6))(torch.zeros(2, 6, dtype=torch.float64)), "x"),
    (lambda: pack_linears("model"), "module"),
])
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 96), nn.GELU(),
                                  BlockSparseLinear(96, 64, block_mask=torch.tensor([[True, False, True]] * 2)))
        self.attention = nn.MultiheadAttention(64, 2, batch_first=True)
        self.low = nn.Linear(64, 8).to(torch.bfloat16)
        self.fp16 = nn.Linear(8, 8).to(torch.float16)

    def forward(self, x):
        h = self.body(x)
        h = self.attention(h, h, h, need_weights=False)[0]
        return self.fp16(self.low(h.to(torch.bfloat16)).to(torch.float16)).float()


@needs_kernel
def test_pack_linears_swaps_what_the_kernel_runs_and_nothing_else():
    torch.manual_seed(2)
    model = _Mixed().eval()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        expected = model(x)
        assert pack_linears(model) == 3
        got = model(x)
    assert isinstance(model.body[0], PackedLinear) and isinstance(model.body[2], PackedLinear)
    assert model.body[2].live_blocks == 4
    assert isinstance(model.low, PackedLinear) and model.low.blocks.dtype == torch.bfloat16
    # nn.MultiheadAttention reads its projection's weight directly: a subclass of nn.Linear is left alone,
    # and so is a layer in a dtype the kernel does not run (float16).
    assert type(model.attention.out_proj) is not PackedLinear and type(model.fp16) is nn.Linear
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)   # bfloat16 and float16 round


def test_pack_linears_changes_nothing_where_the_kernel_cannot_run():
    model = nn.Sequential(nn.Linear(32, 32))
    with pyprune.backends.disabled("cpp"):
        assert pack_linears(model) == 0
    assert type(model[0]) is nn.Linear
    assert pack_linears(nn.Sequential(nn.Linear(32, 32).double())) == 0


class _Intermediate(nn.Module):
    """Shaped like a BERT-family intermediate block: dense, then the activation as an attribute."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.dense, self.intermediate_act_fn = nn.Linear(64, 96), act

    def forward(self, x):
        return self.intermediate_act_fn(self.dense(x))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fuse_gelu_moves_exact_gelus_into_the_kernel(dtype):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(approximate="tanh"),
                          _Intermediate(transformers.activations.GELUActivation()), nn.Linear(96, 64), nn.GELU(),
                          _Intermediate(nn.ReLU())).to(dtype).eval()
    x = torch.randn(7, 64, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
        pack_linears(model)
        unfused = model(x)
        assert fuse_gelu(model) == 3                  # the tanh approximation and the ReLU stay where they are
        got = model(x)
    assert [m.activation for m in model.modules() if isinstance(m, PackedLinear)] == \
        ["gelu", "none", "gelu", "gelu", "none"]
    assert type(model[1]) is nn.Identity and type(model[3]) is nn.GELU and type(model[6]) is nn.Identity
    assert type(model[4].intermediate_act_fn) is nn.Identity and type(model[7].intermediate_act_fn) is nn.ReLU
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got, unfused, **tolerance)
    torch.testing.assert_close(got, expected, **tolerance)
    assert fuse_gelu(model) == 0                      # nothing left to fuse
