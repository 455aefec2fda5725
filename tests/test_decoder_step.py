"""pyprune_C::decoder_step: one greedy decoding step of the AR baseline's decoder in one call, against the
Python blocks it replaces."""
from __future__ import annotations

import pytest
import torch
import transformers

import test_deer
from helpers import none_switch
from pyprune import backends
from pyprune.deer.baseline import AutoregressiveBaseline
from pyprune.deer.model import inference_copy
from test_deer import SOURCES, batch, make

tokenizer = test_deer.tokenizer          # the fixture, shared

pytestmark = pytest.mark.skipif(not backends.has_kernel("decoder_step", "CPU"),
                                reason="the cpp extension is not built")

DTYPES = [torch.float32, torch.bfloat16]
STEP_TENSORS = 38                        # a block's weights: 8 packed linears x 4 tensors, 3 LayerNorms x 2


@pytest.fixture
def unfused(monkeypatch):
    """A switch: unfused(True) makes every step run the Python blocks (the reference), unfused(False) undoes it."""
    return none_switch(monkeypatch, AutoregressiveBaseline, "_fused_step")


def baseline_for(deer, dtype=torch.float32, packed=True, layers=2):
    c = deer.model.config
    torch.manual_seed(2)
    model = AutoregressiveBaseline(transformers.BertModel(deer.model.encoder.config, add_pooling_layer=False),
                                   deer.model.restricted_vocab(), c.pad_id, c.bos_id, c.eos_id, layers=layers)
    with torch.no_grad():                      # biases and LayerNorms away from their zeros and ones
        for name, p in model.named_parameters():
            if not name.startswith("encoder") and p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return inference_copy(model.eval(), dtype, packed=packed)


def steps(model, sources, tokens, fused: bool):
    """Every state of three decoding steps over `tokens` (batch, 3): each step's output rows and each block's
    keys and values after it, from the fused op or from the Python blocks."""
    kv, mask = model._memory(sources)
    caches, self_k, self_v, seen = [[] for _ in model.blocks], [], [], []
    for t in range(tokens.shape[1]):
        h = model._embed(tokens[:, t:t + 1], t)
        if fused:
            h, self_k, self_v = torch.ops.pyprune_C.decoder_step(
                h, self_k, self_v, [k for k, _ in kv], [v for _, v in kv], mask[:, 0, 0], *model._fused_step(h))
            seen += [h, *self_k, *self_v]
        else:
            for block, memory_kv, cache in zip(model.blocks, kv, caches):
                h = block(h, memory_kv, mask, cache)
            seen += [h, *(c[0] for c in caches), *(c[1] for c in caches)]
    return seen


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_step_op_gives_what_the_python_blocks_give(tokenizer, dtype):
    deer = make(tokenizer)
    model = baseline_for(deer, dtype)
    sources, _ = batch(deer)                                      # three rows of different lengths: padding
    tokens = torch.randint(5, tokenizer.vocab_size, (sources.shape[0], 3))
    with torch.inference_mode():
        assert model._fused_step(model._embed(tokens[:, :1])) is not None        # the fused path runs
        fused, python = steps(model, sources, tokens, True), steps(model, sources, tokens, False)
    assert len(fused) == len(python) == 3 * (1 + 2 * 2)
    for a, b in zip(fused, python):
        assert a.dtype == dtype and a.shape == b.shape
        assert torch.equal(a, b)                    # the same ops in the same order: the same bits


@pytest.mark.parametrize("threads", [1, 3])
def test_the_step_op_is_the_same_at_any_thread_count(tokenizer, threads):
    deer = make(tokenizer)
    model = baseline_for(deer, torch.bfloat16)
    sources, _ = batch(deer)
    tokens = torch.randint(5, tokenizer.vocab_size, (sources.shape[0], 3))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            fused, python = steps(model, sources, tokens, True), steps(model, sources, tokens, False)
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(fused, python))


@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_decoding_with_the_step_op_is_unchanged(tokenizer, unfused, dtype):
    deer = make(tokenizer)
    model = baseline_for(deer, dtype)
    ids = deer.encode(SOURCES)
    with torch.inference_mode():
        fused = [model.generate_ids(ids, batch_size=b) for b in (1, 3)]
        unfused(True)
        python = [model.generate_ids(ids, batch_size=b) for b in (1, 3)]
    assert fused == python and all(len(row) > 0 for row in fused[0])


def test_decoding_steps_run_the_op_where_the_blocks_fuse(tokenizer):
    deer = make(tokenizer)
    model = baseline_for(deer)
    ids = deer.encode(SOURCES[:1])
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = model.generate_ids(ids, batch_size=1)
    calls = sum(e.count for e in prof.key_averages() if e.key == "pyprune_C::decoder_step")
    limit = 2 * len(ids[0]) + 10                                     # generate_ids's length limit for this source
    assert 0 < calls == min(len(out[0]) + 1, limit)                # a step for each token, and one for [eos]


def test_blocks_the_step_op_cannot_run_take_the_python_path(tokenizer):
    deer = make(tokenizer)
    model = baseline_for(deer)
    x = torch.zeros(1, 1, 64)
    assert model._fused_step(x) is not None
    assert model._fused_step(x.bfloat16()) is None                               # not the weights' dtype
    assert model._fused_step(x.clone().requires_grad_()) is None                 # needs a gradient
    with backends.disabled("cpp"):
        assert model._fused_step(x) is None
    model.train()
    assert model._fused_step(x) is None
    model.eval()
    assert baseline_for(deer, packed=False)._fused_step(x) is None               # not packed
    unfused_gelu = baseline_for(deer)
    unfused_gelu.blocks[0].ffn[0].activation = "none"
    unfused_gelu.blocks[0].ffn[1] = torch.nn.GELU()
    assert unfused_gelu._fused_step(x) is None                                   # the GELU outside the kernel


def test_bad_arguments_to_the_step_op_are_errors_not_crashes(tokenizer):
    deer = make(tokenizer)
    model = baseline_for(deer)
    sources, _ = batch(deer)
    op = torch.ops.pyprune_C.decoder_step
    with torch.inference_mode():
        kv, mask = model._memory(sources)
        ck, cv, valid = [k for k, _ in kv], [v for _, v in kv], mask[:, 0, 0]
        x = torch.randn(sources.shape[0], 1, 64)
        weights, heads, eps = model._fused_step(x)
        assert len(weights) == 2 * STEP_TENSORS
        h, sk, sv = op(x, [], [], ck, cv, valid, weights, heads, eps)
        assert h.shape == x.shape and sk[0].shape == (3, 2, 1, 32)
        with pytest.raises(RuntimeError, match="38 tensors a layer"):
            op(x, [], [], ck, cv, valid, weights[:-1], heads, eps)
        with pytest.raises(RuntimeError, match="heads and eps must hold one value a layer"):
            op(x, [], [], ck, cv, valid, weights, heads[:1], eps)
        with pytest.raises(RuntimeError, match="self_k and self_v must hold one tensor a layer"):
            op(x, sk, sv[:1], ck, cv, valid, weights, heads, eps)
        with pytest.raises(RuntimeError, match="cross_k and cross_v must hold one tensor a layer"):
            op(x, [], [], ck[:1], cv[:1], valid, weights, heads, eps)
        with pytest.raises(RuntimeError, match=r"\(batch, 1, hidden\)"):
            op(torch.randn(3, 2, 64), [], [], ck, cv, valid, weights, heads, eps)     # two tokens a row
        with pytest.raises(RuntimeError, match=r"\(batch, 1, hidden\)"):
            op(x.double(), [], [], ck, cv, valid, weights, heads, eps)
        with pytest.raises(RuntimeError, match="cross_k and cross_v must be"):
            op(x, [], [], [k[:2] for k in ck], cv, valid, weights, heads, eps)         # another batch
        with pytest.raises(RuntimeError, match="self_k and self_v must be CPU tensors of the rows' dtype"):
            op(x, [k.bfloat16() for k in sk], [v.bfloat16() for v in sv], ck, cv, valid, weights, heads, eps)
        with pytest.raises(RuntimeError, match="multiple of its heads"):
            op(x, [], [], ck, cv, valid, weights, [3, 3], eps)
        with pytest.raises(RuntimeError, match="eps must be finite"):
            op(x, [], [], ck, cv, valid, weights, heads, [float("nan"), 1e-5])
        with pytest.raises(RuntimeError, match="key_valid"):
            op(x, [], [], ck, cv, valid[:, :-1], weights, heads, eps)                  # the wrong source width
        with pytest.raises(RuntimeError, match="hidden"):
            op(torch.randn(3, 1, 32), [], [], ck, cv, valid, weights, heads, eps)
