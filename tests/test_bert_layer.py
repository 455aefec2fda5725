"""pyprune_C::bert_layer: one packed BERT layer for decoding in one call, against the Python layer it replaces."""
from __future__ import annotations

import pytest
import torch
import transformers

import pyprune.deer.model as deer_model
from pyprune import backends
from pyprune.deer.baseline import AutoregressiveBaseline
from pyprune.deer.generate import generate_ids
from pyprune.deer.model import (FUSED_TENSORS, _fused_weights, _layer_kv, _layer_on_rows, fused_layers,
                                inference_copy, run_fused)

import test_deer
from helpers import none_switch
from test_deer import SOURCES, batch, make

tokenizer = test_deer.tokenizer          # the fixture, shared

pytestmark = pytest.mark.skipif(not backends.has_kernel("bert_layer", "CPU"), reason="the cpp extension is not built")

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture
def unfused(monkeypatch):
    """A switch: unfused(True) makes every layer run as Python ops (the reference), unfused(False) undoes it."""
    return none_switch(monkeypatch, deer_model, "_fused_weights")


def packed_model(tokenizer, dtype, keep=1.0):
    deer = make(tokenizer)
    return deer, deer.sub_network(keep, dtype, packed=True)


def states(model, sources, targets):
    """Every state the fused layer feeds: the joint pass (prefix rule, last layer on target rows), the source
    pass, a target pass over the cached source, and the last layer on chosen rows."""
    cache, joint = model.encode_with_target(sources, targets)
    source_cache = model.encode_source(sources)
    decoded = model.decode_target(source_cache, targets)
    rows = targets.ne(0) & (torch.arange(targets.shape[1]) % 2 == 1)
    chosen = model.decode_target(source_cache, targets, rows=rows)
    return [joint, decoded, chosen] + cache.keys + cache.values + source_cache.keys + source_cache.values


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_fused_layer_gives_what_the_python_layer_gives(tokenizer, unfused, dtype, keep):
    deer, model = packed_model(tokenizer, dtype, keep)
    sources, targets = batch(deer)
    layer = model.encoder.encoder.layer[0]
    mask = targets.ne(0)[:, None, None, :]
    assert _fused_weights(layer, torch.zeros(1, 1, 64, dtype=dtype), mask) is not None    # the fused path runs
    with torch.inference_mode():
        fused = states(model, sources, targets)
        unfused(True)
        python = states(model, sources, targets)
    for a, b in zip(fused, python):
        assert a.dtype == dtype
        assert torch.equal(a, b)                    # the same ops in the same order: the same bits


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_the_fused_layer_is_the_same_at_any_thread_count(tokenizer, unfused, threads):
    # The op's kernels split their work among however many threads there are (one: inline; more than the
    # machine's cores: oversubscribed): the same work in other shares, so the same bits as the Python layer.
    deer, model = packed_model(tokenizer, torch.bfloat16, 0.5)
    sources, targets = batch(deer)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            fused = states(model, sources, targets)
            unfused(True)
            python = states(model, sources, targets)
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(fused, python):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decoding_with_the_fused_layer_is_unchanged(tokenizer, unfused, dtype):
    deer, model = packed_model(tokenizer, dtype)
    ids = deer.encode(SOURCES)
    with torch.inference_mode():
        fused = [generate_ids(model, ids, max_iter=2, batch_size=b, blank_penalty=-1.0) for b in (1, 3)]
        unfused(True)
        python = [generate_ids(model, ids, max_iter=2, batch_size=b, blank_penalty=-1.0) for b in (1, 3)]
    assert fused == python


def test_layers_the_fused_op_cannot_run_take_the_python_path(tokenizer):
    deer, model = packed_model(tokenizer, torch.float32)
    layer = model.encoder.encoder.layer[0]
    x = torch.zeros(1, 3, 64)
    key_padding, full = torch.ones(1, 1, 1, 3, dtype=torch.bool), torch.ones(1, 1, 3, 3, dtype=torch.bool)
    assert _fused_weights(layer, x, key_padding) is not None
    assert _fused_weights(layer, x, full) is None                               # a mask per query row
    assert _fused_weights(layer, x.bfloat16(), key_padding) is None              # not the weights' dtype
    assert _fused_weights(layer, x.clone().requires_grad_(), key_padding) is None   # needs a gradient
    assert _fused_weights(deer.model.encoder.encoder.layer[0], x.detach(), key_padding) is None   # not packed
    with backends.disabled("cpp"):
        assert _fused_weights(layer, x.detach(), key_padding) is None
    layer.train()
    assert _fused_weights(layer, x.detach(), key_padding) is None
    layer.eval()
    unpacked = inference_copy(deer.model, packed=False).encoder.encoder.layer[0]
    assert _fused_weights(unpacked, x.detach(), key_padding) is None


def test_rows_of_the_last_layer_through_the_fused_op(tokenizer):
    deer, model = packed_model(tokenizer, torch.float32)
    sources, targets = batch(deer)
    layer = model.encoder.encoder.layer[-1]
    with torch.inference_mode():
        cache = model.encode_source(sources)
        h = torch.randn(targets.shape[0], targets.shape[1], 64)
        mask = torch.cat([cache.mask, targets.ne(0)], 1)[:, None, None, :]
        prefix = (cache.keys[-1], cache.values[-1])
        every, k, v = _layer_kv(layer, h, h, prefix, mask)
        rows = targets.ne(0)
        rows[1] = False                                                     # a batch row with none
        # (fewer query rows go through the packed kernel's tiles in another grouping: float32 rounding)
        torch.testing.assert_close(_layer_on_rows(layer, h, rows, prefix, mask), every[rows], rtol=1e-5, atol=1e-5)
        assert k.shape == v.shape == (targets.shape[0], 2, targets.shape[1], 32)


def test_bad_arguments_to_the_raw_op_are_errors_not_crashes(tokenizer):
    deer, model = packed_model(tokenizer, torch.float32)
    layer = model.encoder.encoder.layer[0]
    h = torch.randn(2, 5, 64)
    valid = torch.ones(2, 5, dtype=torch.bool)
    weights, _, _ = _fused_weights(layer, h, valid[:, None, None, :])
    op = torch.ops.pyprune_C.bert_layer
    out, k, v = op(h, h, None, None, valid, 0, weights, 2, 1e-12)
    assert out.shape == (2, 5, 64) and k.shape == (2, 2, 5, 32)
    with pytest.raises(RuntimeError, match="weights must hold 28 tensors"):
        op(h, h, None, None, valid, 0, weights[:-1], 2, 1e-12)
    with pytest.raises(RuntimeError, match="prefix_k and prefix_v come together"):
        op(h, h, k, None, valid, 0, weights, 2, 1e-12)
    with pytest.raises(RuntimeError, match="prefix_k and prefix_v must be"):
        op(h, h, k[:, :1], v[:, :1], valid, 0, weights, 2, 1e-12)
    with pytest.raises(RuntimeError, match="kv_in and q_in"):
        op(h, h[..., :32], None, None, valid, 0, weights, 2, 1e-12)
    with pytest.raises(RuntimeError, match="multiple of heads"):
        op(h, h, None, None, valid, 0, weights, 3, 1e-12)
    with pytest.raises(RuntimeError, match="key_valid"):
        op(h, h, None, None, valid[:, :4], 0, weights, 2, 1e-12)
    with pytest.raises(RuntimeError, match="prefix must be in"):
        op(h, h, None, None, valid, 6, weights, 2, 1e-12)
    swapped = list(weights)
    swapped[12:16] = weights[16:20]                                          # the FFN's first layer as output
    with pytest.raises(RuntimeError, match="hidden"):
        op(h, h, None, None, valid, 0, swapped, 2, 1e-12)



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prefixed", [False, True])
def test_a_pass_in_one_call_gives_what_the_layers_give_one_by_one(tokenizer, dtype, prefixed):
    # bert_layers against bert_layer called per layer as the per-layer path calls it: source rows through all
    # layers but the last, the last on the rows from last_queries on, the keys cut to keep_keys rows.
    deer, model = packed_model(tokenizer, dtype, 0.5)
    layers = model.encoder.encoder.layer
    torch.manual_seed(0)
    h = torch.randn(2, 7, 64).to(dtype)
    valid = torch.ones(2, 7 + 3 * prefixed, dtype=torch.bool)
    valid[1, -2:] = False
    source, last, keep = (0, 0, 0) if prefixed else (3, 3, 3)
    fused = fused_layers(layers, h)
    assert fused is not None and len(fused.weights) == FUSED_TENSORS * len(layers)
    assert fused.heads == [2, 1]                                     # keep 0.5 pruned a head of the second layer
    prefixes = [tuple(torch.randn(2, heads, 3, 32).to(dtype) for _ in range(2)) for heads in fused.heads]
    with torch.inference_mode():
        out, keys, values = run_fused(fused, h, valid, *(zip(*prefixes) if prefixed else ()), source_rows=source,
                                      last_queries=last, keep_keys=keep)
        x, want_keys, want_values = h, [], []
        for i, layer in enumerate(layers):
            final = i + 1 == len(layers)
            x, k, v = _layer_kv(layer, x, x[:, last:] if final else x, prefixes[i] if prefixed else None,
                                valid[:, None, None, :], 0 if final else source)
            want_keys.append(k[:, :, :keep])
            want_values.append(v[:, :, :keep])
    assert torch.equal(out, x) and out.shape == (2, 7 - last, 64)
    assert len(keys) == len(values) == (0 if keep == 0 else len(layers))
    for got, want in zip(keys + values, want_keys + want_values):
        assert torch.equal(got, want)


def test_fused_layers_only_where_every_layer_fuses(tokenizer):
    deer, model = packed_model(tokenizer, torch.float32)
    layers = model.encoder.encoder.layer
    x = torch.zeros(1, 1, 64)
    assert fused_layers(layers, x) is not None
    assert fused_layers(layers, x.bfloat16()) is None                            # not the weights' dtype
    assert fused_layers(deer.model.encoder.encoder.layer, x) is None              # not packed
    assert fused_layers([], x) is None
    layers[1].train()
    assert fused_layers(layers, x) is None                                        # one layer in training
    layers[1].eval()
    _, pruned = packed_model(tokenizer, torch.float32, 0.5)                        # layers of 2 heads and of 1
    fused = fused_layers(pruned.encoder.encoder.layer, x)
    assert fused.heads == [2, 1] and fused.first(1).heads == [2] and len(fused.first(1).weights) == FUSED_TENSORS


def test_a_source_cache_keeps_the_gathered_layers_for_its_passes(tokenizer, monkeypatch):
    # encode_with_target gathers the layers' weights once (or takes them), and the passes over its cache,
    # selected rows included, use them without gathering again.
    deer, model = packed_model(tokenizer, torch.float32)
    sources, targets = batch(deer)
    gathered = []
    monkeypatch.setattr(deer_model, "fused_layers", lambda *a: gathered.append(1) or fused_layers(*a))
    with torch.inference_mode():
        cache, _ = model.encode_with_target(sources, targets)
        assert cache.fused is not None and len(gathered) == 1
        again, _ = model.encode_with_target(sources, targets, cache.fused)
        assert again.fused is cache.fused and len(gathered) == 1
        selected = cache.select(torch.tensor([2, 0]))
        assert selected.fused is cache.fused
        model.decode_target(selected, targets[[2, 0]])
        assert len(gathered) == 1


def test_bad_arguments_to_the_pass_op_are_errors_not_crashes(tokenizer):
    deer, model = packed_model(tokenizer, torch.float32)
    layers = model.encoder.encoder.layer
    h = torch.randn(2, 5, 64)
    valid = torch.ones(2, 5, dtype=torch.bool)
    fused = fused_layers(layers, h)
    op = torch.ops.pyprune_C.bert_layers
    ok = dict(source_rows=0, last_queries=0, keep_keys=0)

    def call(h=h, prefix_k=(), prefix_v=(), weights=fused.weights, **kw):
        kw = {**ok, **kw}
        return op(h, list(prefix_k), list(prefix_v), valid, kw["source_rows"], kw["last_queries"],
                  kw["keep_keys"], weights, kw.get("heads", fused.heads), fused.eps)
    assert call()[0].shape == (2, 5, 64)
    with pytest.raises(RuntimeError, match="28 tensors a layer"):
        call(weights=fused.weights[:-1])
    with pytest.raises(RuntimeError, match="28 tensors a layer"):
        call(weights=[])
    with pytest.raises(RuntimeError, match="heads and eps must hold one value a layer"):
        call(heads=fused.heads[:1])
    k = torch.zeros(2, 2, 3, 32)
    with pytest.raises(RuntimeError, match="one tensor a layer"):
        call(prefix_k=[k], prefix_v=[k])
    with pytest.raises(RuntimeError, match="one tensor a layer"):
        call(prefix_k=[k, k], prefix_v=[k])
    with pytest.raises(RuntimeError, match="last_queries must be in"):
        call(last_queries=5)
    with pytest.raises(RuntimeError, match="keep_keys must be in"):
        call(keep_keys=6)
    with pytest.raises(RuntimeError, match="h must be a"):
        call(h=h[0])
    with pytest.raises(RuntimeError, match="prefix must be in"):
        call(source_rows=6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cached_keys_in_any_layout_give_the_same_layer(tokenizer, dtype):
    # The op joins the cached keys and values to the layer's own by row copies where their features are
    # contiguous, and through at::cat otherwise: the same result either way.
    deer, model = packed_model(tokenizer, dtype)
    layer = model.encoder.encoder.layer[0]
    torch.manual_seed(0)
    h = torch.randn(2, 5, 64).to(dtype)
    prefix_k, prefix_v = (torch.randn(2, 2, 3, 32).to(dtype) for _ in range(2))
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[1, 6:] = False
    weights, _, _ = _fused_weights(layer, h, valid[:, None, None, :])
    op = torch.ops.pyprune_C.bert_layer
    with torch.inference_mode():
        expected = op(h, h, prefix_k, prefix_v, valid, 0, weights, 2, 1e-12)[0]
        features_strided = [t.transpose(2, 3).contiguous().transpose(2, 3) for t in (prefix_k, prefix_v)]
        assert features_strided[0].stride(3) != 1
        assert torch.equal(op(h, h, *features_strided, valid, 0, weights, 2, 1e-12)[0], expected)
        wide = [torch.zeros(2, 4, 3, 32, dtype=dtype) for _ in range(2)]
        for w, t in zip(wide, (prefix_k, prefix_v)):
            w[:, ::2] = t
        wide = [w[:, ::2] for w in wide]                                       # strided heads
        assert torch.equal(op(h, h, *wide, valid, 0, weights, 2, 1e-12)[0], expected)
        other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
        with pytest.raises(RuntimeError, match="CPU tensors of the rows' dtype"):
            op(h, h, prefix_k.to(other), prefix_v.to(other), valid, 0, weights, 2, 1e-12)

@pytest.mark.parametrize("packed", [False, True])
def test_the_baselines_decoding_memory_equals_its_encoders_output(tokenizer, packed):
    # Decoding runs the AR baseline's encoder layer by layer as DEER does (fused where packed); training, and
    # this reference, call the Hugging Face encoder.
    deer = make(tokenizer)
    c, cfg = deer.model.config, deer.model.encoder.config
    torch.manual_seed(1)
    baseline = AutoregressiveBaseline(transformers.BertModel(cfg, add_pooling_layer=False),
                                      deer.model.restricted_vocab(), c.pad_id, c.bos_id, c.eos_id, layers=1)
    baseline = inference_copy(baseline.eval(), packed=packed)
    sources, _ = batch(deer)
    valid = sources.ne(c.pad_id)
    with torch.inference_mode():
        assert (_fused_weights(baseline.encoder.encoder.layer[0], torch.zeros(1, 1, 64), valid[:, None, None, :])
                is not None) == packed
        expected = baseline.encoder(input_ids=sources, attention_mask=valid.long()).last_hidden_state
        kv, mask = baseline._memory(sources)
        block = baseline.blocks[0]
        want = block.cross_attn.split(block.cross_attn.k(expected))
    torch.testing.assert_close(kv[0][0].transpose(1, 2)[valid], want.transpose(1, 2)[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(mask[:, 0, 0], valid)
