"""DEER on a tiny random BERT: masks, CTC input, glancing, editor labels, generate, checkpoints, bad input."""
from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
import transformers

import pyprune
import pyprune.deer.model as deer_model

from pyprune.deer import Deer, DeerObjective
from pyprune.deer.baseline import AutoregressiveBaseline, train_baseline
from pyprune.deer.generate import fill_words, generate_ids, pad_rows
from pyprune.deer.losses import (PENALTY_GRID, content, ctc_draft_tokens, glance, length_matching_penalty,
                                 random_deletion)
from pyprune.deer.model import (DeerConfig, DeerModel, SourceCache, _kv, _layer, _plain_embeddings,
                                pack_for_inference)
from pyprune.deer.train import TrainConfig, encode_pairs, set_dropout, target_vocabulary, train
from pyprune.nn import BlockSparseLinear, PackedLinear
from pyprune.ops import apply_ins_words, attention, get_ins_targets
from pyprune.sparse.linear import packed_usable

from pruning_models import tiny_model

SOURCES = ["el perro come pan", "la casa es grande y bonita", "dios es amor"]
TARGETS = ["the dog eats bread", "the house is big and pretty", "god is love"]


@pytest.fixture(scope="module")
def tokenizer():
    words = sorted({w for s in SOURCES + TARGETS for w in s.split()} | {"extra", "word"})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    tokenizer = transformers.BertTokenizerFast(vocab=vocab)
    assert tokenizer.unk_token_id not in tokenizer(TARGETS)["input_ids"][0]
    return tokenizer


def make(tokenizer, prune=True, seed=0, max_positions=40, **config) -> Deer:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=128, max_position_embeddings=max_positions,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder = transformers.BertModel(cfg, add_pooling_layer=False)
    deer = Deer.from_encoder(encoder, tokenizer, vocab=target_vocabulary(tokenizer, TARGETS), prune=prune, **config)
    deer.model.eval()
    return deer


def batch(deer):
    pad = deer.model.config.pad_id
    return pad_rows(deer.encode(SOURCES), pad), pad_rows(deer.encode(TARGETS, name="targets"), pad)


def test_joint_attention_mask_blocks_source_from_target(tokenizer):
    deer = make(tokenizer)
    sources, targets = batch(deer)
    mask = deer.model.joint_attention_mask(sources, targets)
    S, T = sources.shape[1], targets.shape[1]
    assert mask.shape == (3, S + T, S + T)
    valid = torch.cat([sources.ne(0), targets.ne(0)], 1)
    assert not mask[:, :S, S:].any()                                   # source rows never see the target
    assert torch.equal(mask[:, S:, :], valid[:, None, :].expand(3, T, S + T))   # target rows see all but padding
    assert torch.equal(mask[:, :S, :S], valid[:, None, :S].expand(3, S, S))


def test_cached_source_decoding_equals_the_joint_pass(tokenizer):
    deer = make(tokenizer)
    model = deer.model
    sources, targets = batch(deer)
    joint = model.joint_forward(sources, targets)
    cached = model.decode_target(model.encode_source(sources), targets)
    valid = targets.ne(0)
    torch.testing.assert_close(cached[valid], joint[valid], atol=1e-5, rtol=1e-5)
    # Extra source padding and a different target change nothing for the other rows.
    wider = torch.nn.functional.pad(sources, (0, 3))
    torch.testing.assert_close(model.decode_target(model.encode_source(wider), targets)[valid], cached[valid],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_layers_compute_what_the_backbone_computes(tokenizer, training):
    # DEER runs the backbone's layers through its own _layer (cached keys and values, the attention kernel,
    # no module calls for the output blocks): over the source alone it must give the backbone's states.
    deer = make(tokenizer, prune=False)
    model = deer.model.train(training)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    sources, _ = batch(deer)
    valid = sources.ne(0)
    expected = model.encoder(input_ids=sources, attention_mask=valid.long(),
                             token_type_ids=torch.zeros_like(sources)).last_hidden_state
    with torch.set_grad_enabled(training):
        h = model._embed(sources, 0)
        for layer in model.encoder.encoder.layer:
            h = _layer(layer, h, *_kv(layer, h), valid[:, None, None, :])
    torch.testing.assert_close(h[valid], expected[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoding_embeddings_are_the_backbones(family, dtype, monkeypatch):
    # Out of training and without autograd, _embed sums the embedding tables itself: it must give the bits of
    # the backbone's own embedding module, for each backbone family, both token types and padded rows.
    encoder = tiny_model(family, type_vocab_size=2).to(dtype)
    config = DeerConfig(pad_id=encoder.config.pad_token_id, bos_id=2, eos_id=3, unk_id=4, mask_id=5)
    model = DeerModel(encoder, config).eval()
    ids = torch.randint(6, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    ids[1, -3:] = config.pad_id
    plain = []
    monkeypatch.setattr(deer_model, "_plain_embeddings",
                        lambda *args: plain.append(1) or _plain_embeddings(*args))
    for token_type in (0, 1):
        positions = torch.arange(9)[None].expand(2, -1) + model.position_offset
        with torch.no_grad():
            expected = encoder.embeddings(input_ids=ids, token_type_ids=torch.full_like(ids, token_type),
                                          position_ids=positions)
            assert torch.equal(model._embed(ids, token_type), expected)
        assert torch.equal(model._embed(ids, token_type), expected)          # autograd on: the module itself
    assert len(plain) == 2


def test_one_pass_over_source_and_target_equals_two(tokenizer):
    deer = make(tokenizer)
    model = deer.model
    sources, targets = batch(deer)
    cache, h = model.encode_with_target(sources, targets)
    reference = model.encode_source(sources)
    valid = targets.ne(0)
    torch.testing.assert_close(h[valid], model.decode_target(reference, targets)[valid], atol=1e-5, rtol=1e-5)
    for a, b in zip(cache.keys + cache.values, reference.keys + reference.values):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(cache.mask, reference.mask)
    with pytest.raises(ValueError, match="targets"):
        model.encode_with_target(sources, targets[:2])


@pytest.mark.parametrize("grad", [False, True])
def test_decoding_chosen_rows_equals_picking_them_from_every_row(tokenizer, grad):
    # decode_target(rows=...) runs its last layer on those rows only (on the attention kernel without
    # autograd, torch's with it); rows of different counts per batch row, one row with none.
    deer = make(tokenizer)
    model = deer.model.train(grad)
    sources, targets = batch(deer)
    rows = torch.zeros_like(targets, dtype=torch.bool)
    rows[0, [1, 2, 3, 5]] = rows[2, [0, 4]] = True
    with torch.set_grad_enabled(grad):
        cache = model.encode_source(sources)
        everywhere = model.decode_target(cache, targets)
        chosen = model.decode_target(cache, targets, rows=rows)
        none = model.decode_target(cache, targets, rows=torch.zeros_like(rows))
    torch.testing.assert_close(chosen, everywhere[rows], atol=1e-5, rtol=1e-5)
    assert none.shape == (0, everywhere.shape[-1])
    if grad:
        chosen.sum().backward()
        assert model.encoder.encoder.layer[-1].output.dense.weight.grad.abs().sum() > 0
    for bad in (rows[:, 1:], rows.long()):
        with pytest.raises(ValueError, match="rows"):
            model.decode_target(cache, targets, rows=bad)


@pytest.mark.skipif(not pyprune.backends.has_kernel("masked_attention", "CPU"), reason="the cpp extension is not built")
def test_decoding_passes_on_the_attention_kernel_equal_the_joint_pass(tokenizer, monkeypatch):
    """Without autograd the cached passes run pyprune_C::masked_attention (the CTC pass with its source-prefix
    rule); the joint pass, with its full (rows x keys) mask, runs torch's attention."""
    deer = make(tokenizer)
    model = deer.model.eval()
    sources, targets = batch(deer)
    used = []
    usable = attention.kernel_usable
    monkeypatch.setattr(attention, "kernel_usable", lambda *t: used.append(usable(*t)) or used[-1])
    with torch.no_grad():
        joint = model.joint_forward(sources, targets)
        assert not used
        cache, h = model.encode_with_target(sources, targets)
        cached = model.decode_target(cache, targets)
    assert used and all(used)
    valid = targets.ne(0)
    torch.testing.assert_close(h[valid], joint[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached[valid], joint[valid], atol=1e-5, rtol=1e-5)


def test_fill_words_equals_the_argmax_over_every_position(tokenizer):
    deer = make(tokenizer)
    model, c = deer.model.eval(), deer.model.config
    sources, targets = batch(deer)
    holes = torch.rand(targets.shape, generator=torch.Generator().manual_seed(0)) < 0.4
    holes &= targets.ne(c.pad_id) & targets.ne(c.bos_id) & targets.ne(c.eos_id)
    tokens = targets.masked_fill(holes, c.mask_id)
    assert holes.any()
    cache = model.encode_source(sources)
    with torch.no_grad():
        logits = model.vocab_logits(model.decode_target(cache, tokens))
    everywhere = model.to_tokens(logits[..., 1:].argmax(-1) + 1)
    assert torch.equal(fill_words(model, cache, tokens), torch.where(holes, everywhere, tokens))
    assert fill_words(model, cache, targets) is targets                   # no placeholder: unchanged


@pytest.mark.parametrize("adaptive", [True, False])
def test_an_iteration_that_only_deleted_hands_its_states_to_the_next(tokenizer, monkeypatch, adaptive):
    import pyprune.deer.generate as generate
    deer = make(tokenizer)
    model, ids = deer.sub_network(1.0), deer.encode(SOURCES)
    passes = []
    decode = model.decode_target
    monkeypatch.setattr(model, "decode_target",
                        lambda cache, tokens, **rows: passes.append(1) or decode(cache, tokens, **rows))
    options = dict(max_iter=3, batch_size=3, adaptive=adaptive, deletion_penalty=-0.3, insertion_penalty=1e4)
    reused = generate_ids(model, ids, **options)
    with_reuse = len(passes)
    edit = generate._edit
    monkeypatch.setattr(generate, "_edit", lambda *args: (edit(*args)[0], None, None))   # every iteration from a pass
    passes.clear()
    assert generate_ids(model, ids, **options) == reused
    # Insertions are off, so every iteration only deletes: each one after the first skips its first pass
    # (without `adaptive` all three run; with it, the second runs because the first deleted something).
    assert any(len(r) < len(s) - 2 for r, s in zip(reused, ids))
    assert with_reuse == len(passes) - 2 if not adaptive else with_reuse < len(passes)


def test_edit_passes_run_on_the_rows_whose_tokens_changed(tokenizer, monkeypatch):
    deer = make(tokenizer)
    model, ids = deer.sub_network(1.0), deer.encode(SOURCES)
    passes = []
    decode = model.decode_target
    monkeypatch.setattr(model, "decode_target", lambda cache, tokens, **rows: passes.append(
        (len(tokens), bool(rows))) or decode(cache, tokens, **rows))
    # Without `adaptive` every row stays in the batch, so a pass on fewer than three rows left some out.
    options = dict(max_iter=2, adaptive=False, deletion_penalty=0.0, insertion_penalty=1.0)
    batched = generate_ids(model, ids, batch_size=3, **options)
    subsets = [(n, fill) for n, fill in passes if n < 3]
    assert any(not fill for _, fill in subsets) and any(fill for _, fill in subsets)   # placeholders and fills
    assert batched == generate_ids(model, ids, batch_size=1, **options)


def test_ctc_slots(tokenizer):
    for slots in ("unk", "copy"):
        deer = make(tokenizer, slots=slots, max_positions=12)
        model, c = deer.model, deer.model.config
        sources, _ = batch(deer)
        lengths = sources.ne(0).sum(1)
        n = model.num_slots(lengths)
        assert n.tolist() == [min(2 * int(x), 12) for x in lengths]       # alpha=2, capped by positions
        built = model.ctc_slots(sources, lengths)
        for row in range(3):
            k = int(n[row])
            assert built[row, 0] == c.bos_id and built[row, k - 1] == c.eos_id and built[row, k:].eq(0).all()
            inner = built[row, 1:k - 1]
            if slots == "unk":
                assert inner.eq(c.unk_id).all()
            else:                                                      # the source, upsampled in order
                content_ids = sources[row, 1:int(lengths[row]) - 1].tolist()
                positions = [content_ids.index(t) for t in inner.tolist()]
                assert positions == sorted(positions) and set(positions) <= set(range(len(content_ids)))


def test_targets_as_ctc_labels(tokenizer):
    deer = make(tokenizer)
    _, targets = batch(deer)
    labels, lengths = content(targets, deer.model)
    for row in range(3):
        ids = [t for t in targets[row].tolist() if t not in (0, 2, 3)]
        assert lengths[row] == len(ids)
        assert deer.model.to_tokens(labels[row, :len(ids)]).tolist() == ids


def test_glancing_reveals_aligned_tokens(tokenizer):
    deer = make(tokenizer)
    model = deer.model
    sources, targets = batch(deer)
    lengths = sources.ne(0).sum(1)
    n, slots = model.num_slots(lengths), model.ctc_slots(sources, lengths)
    labels, label_lengths = content(targets, model)
    logits = torch.randn(3, slots.shape[1], model.num_classes, generator=torch.Generator().manual_seed(0))
    assert torch.equal(glance(model, logits, slots, n, labels, label_lengths, 0.0), slots)
    full = glance(model, logits, slots, n, labels, label_lengths, 1.0)
    half = glance(model, logits, slots, n, labels, label_lengths, 0.5, torch.Generator().manual_seed(1))
    changed_full, changed_half = (full != slots).sum(1), (half != slots).sum(1)
    assert (changed_half <= changed_full).all() and changed_full.sum() > 0
    for row in range(3):                     # revealed tokens, in order, spell the reference (a CTC path)
        revealed = full[row][full[row] != slots[row]].tolist()
        reference = model.to_tokens(labels[row, :int(label_lengths[row])]).tolist()
        merged = [t for i, t in enumerate(revealed) if i == 0 or t != revealed[i - 1]]
        assert all(t in reference for t in merged)


def test_editor_labels_rebuild_the_reference(tokenizer):
    deer = make(tokenizer)
    c = deer.model.config
    _, targets = batch(deer)
    deleted = random_deletion(targets, deer.model, torch.Generator().manual_seed(3))
    assert deleted[:, 0].eq(c.bos_id).all()
    masked, masked_tokens, counts = get_ins_targets(deleted, targets, c.pad_id, c.mask_id)
    assert counts.sum() == masked.sum()                     # one placeholder per missing token
    rebuilt, _ = apply_ins_words(masked_tokens, None, targets, None, c.mask_id)
    assert torch.equal(rebuilt, targets)


def test_objective_has_every_term_and_reaches_every_part(tokenizer):
    deer = make(tokenizer)
    objective = DeerObjective(deer.model, deer.pruning)
    deer.model.train()
    losses = objective(*batch(deer), glance_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"ctc", "placeholder", "insertion", "deletion", "regularizer", "loss", "length_penalty"}
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    assert not losses["length_penalty"].requires_grad
    losses["loss"].backward()
    m = deer.model
    for p in (m.blank, m.output_bias, m.delete_head.weight, m.placeholder_head.weight,
              m.encoder.embeddings.word_embeddings.weight, deer.pruning.attention_scores[0], deer.pruning.ffn_scores[0]):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_length_matching_penalty_equals_decoding_at_every_penalty(tokenizer):
    model = make(tokenizer).model

    def widened(four):                                       # the model's classes, those past the 4th never best
        return torch.cat([four, torch.full((*four.shape[:-1], model.num_classes - 4), -1e4)], -1)
    generator = torch.Generator().manual_seed(0)
    for trial in range(20):
        n_slots = torch.randint(1, 9, (3,), generator=generator)
        logits = torch.randn(3, 8, 4, generator=generator) * 2
        logits[..., 1:] = logits[..., 1:].round()           # ties and repeats between neighbouring frames
        logits = widened(logits)
        references = torch.randint(0, 9, (3,), generator=generator)
        lengths = torch.stack([ctc_draft_tokens(model, logits, n_slots, float(p)).ne(model.config.pad_id).sum() - 2 * 3
                               for p in PENALTY_GRID])
        gap = (lengths - references.sum()).abs()
        expected = PENALTY_GRID[int(gap.argmin())]
        assert length_matching_penalty(logits, n_slots, references) == float(expected), trial
    # A positive penalty lengthens the draft, a negative one shortens it.
    logits = torch.zeros(1, 6, 4)
    logits[0, :, 0] = 1.0                                    # blank by 1 everywhere
    logits[0, :, 1:] = torch.tensor([0.5, 0.0, 0.0])        # the same best word in every frame
    logits[0, 3, 2] = 0.9                                    # ... but another in the fourth
    logits = widened(logits)
    kept = logits.clone()
    drafts = [ctc_draft_tokens(model, logits, torch.tensor([6]), p)[0, 1:-1] for p in (0.0, 0.2, 0.6)]
    assert torch.equal(logits, kept)
    assert [len(d) for d in drafts] == [0, 1, 3]            # p 0.2: frame 4 only; p 0.6: frames 1-3 collapse, 4, 5-6
    assert length_matching_penalty(logits, torch.tensor([6]), torch.tensor([3])) == 0.5


def test_editor_drafts_come_from_the_slots_with_nothing_revealed(tokenizer, monkeypatch):
    from pyprune.deer import losses as losses_module
    deer = make(tokenizer)
    seen = []
    original = losses_module.ctc_draft_tokens
    monkeypatch.setattr(losses_module, "ctc_draft_tokens",
                        lambda model, logits, n, p: seen.append((logits, p)) or original(model, logits, n, p))
    objective = DeerObjective(deer.model, None, losses_module.LossConfig(draft_prob=1.0))
    sources, targets = batch(deer)
    objective(sources, targets, glance_ratio=1.0, generator=torch.Generator().manual_seed(0), blank_penalty=0.75)
    (logits, penalty), = seen
    m = deer.model
    lengths = sources.ne(m.config.pad_id).sum(1)
    with torch.no_grad():
        plain = m.vocab_logits(m.decode_target(m.encode_source(sources), m.ctc_slots(sources, lengths)))
    torch.testing.assert_close(logits, plain)
    assert penalty == 0.75


def _trained(tokenizer, tmp_path, steps=120, **kw):
    deer = make(tokenizer)
    pairs = encode_pairs(deer, list(zip(SOURCES, TARGETS)))
    config = TrainConfig(steps=steps, batch_size=3, lr=1e-3, head_lr=3e-3, checkpoint_every=1000, **kw)
    summary = train(deer, pairs, str(tmp_path / "run"), config, progress=False)
    return deer, pairs, summary


def test_training_fits_and_generate_takes_every_option(tokenizer, tmp_path):
    deer, pairs, summary = _trained(tokenizer, tmp_path)
    assert summary["step"] == 120
    outputs = {}
    for keep in deer.keep_ratios:
        for max_iter in (0, 1, 2):
            for adaptive in (True, False):
                out = deer.generate(SOURCES, max_iter=max_iter, adaptive=adaptive, keep=keep, batch_size=2)
                assert len(out) == 3 and all(isinstance(s, str) for s in out)
                outputs[keep, max_iter, adaptive] = out
    # Learned from three pairs in 120 steps: CTC alone already writes much of the references
    # (an untrained model writes nothing or noise).
    from collections import Counter
    matched = sum(sum((Counter(out.split()) & Counter(ref.split())).values())
                  for out, ref in zip(outputs[1.0, 0, True], TARGETS))
    assert matched >= 0.4 * sum(len(t.split()) for t in TARGETS)
    # Batching does not change results.
    one = generate_ids(deer.sub_network(1.0), deer.encode(SOURCES), max_iter=2, batch_size=1)
    three = generate_ids(deer.sub_network(1.0), deer.encode(SOURCES), max_iter=2, batch_size=3)
    assert one == three
    # Eager deletions: rows stop at different iterations, and the later ones run on the remaining rows'
    # source cache, selected when a row leaves or a pass runs on some rows (never at batch 1).
    selected = []
    select = SourceCache.select
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SourceCache, "select", lambda self, rows: selected.append(len(rows)) or select(self, rows))
        eager = dict(max_iter=4, deletion_penalty=-2.0)
        one = generate_ids(deer.sub_network(1.0), deer.encode(SOURCES), batch_size=1, **eager)
        assert not selected
        three = generate_ids(deer.sub_network(1.0), deer.encode(SOURCES), batch_size=3, **eager)
    assert one == three and selected and all(0 < n < 3 for n in selected)
    assert deer.generate([], max_iter=1) == []
    # Training kept a blank penalty per keep ratio; generate decodes with it unless given one.
    assert set(deer.blank_penalty) == set(deer.keep_ratios)
    assert all(PENALTY_GRID[0] <= p <= PENALTY_GRID[-1] for p in deer.blank_penalty.values())
    trained = deer.penalty(0.5)
    deer.blank_penalty[0.5] = -100.0                         # a blank everywhere: empty drafts
    assert deer.generate(SOURCES, max_iter=0, keep=0.5) == ["", "", ""]
    assert deer.generate(SOURCES, max_iter=0, keep=0.5, blank_penalty=trained) == outputs[0.5, 0, True]
    deer.blank_penalty[0.5] = trained
    # The evaluation table: every keep x iterations row, real BLEU against the references.
    from pyprune.deer.evaluate import bleu, evaluate, format_table
    result = evaluate(deer, list(zip(SOURCES, TARGETS)), keeps=(1.0, 0.5), iterations=(0, 1),
                      latency_sentences=2, progress=False)
    assert [(r["keep"], r["iterations"]) for r in result["rows"]] == [(1.0, 0), (1.0, 1), (0.5, 0), (0.5, 1)]
    assert result["rows"][0]["bleu"] == pytest.approx(bleu(outputs[1.0, 0, True], TARGETS))
    assert all(r["ms_batch1"] > 0 and r["ms_batch32"] > 0 for r in result["rows"])
    lengths = [len(ids) - 2 for ids in deer.encode(TARGETS)]
    assert result["reference_tokens"] == pytest.approx(sum(lengths) / 3)
    drafts = generate_ids(deer.sub_network(1.0), deer.encode(SOURCES), max_iter=0, blank_penalty=deer.penalty(1.0))
    assert result["rows"][0]["tokens"] == pytest.approx(sum(map(len, drafts)) / 3) and drafts[0]
    assert [r["blank_penalty"] for r in result["rows"]] == [deer.penalty(1.0)] * 2 + [deer.penalty(0.5)] * 2
    assert format_table(result).count("| DEER |") == 4
    override = evaluate(deer, list(zip(SOURCES, TARGETS)), keeps=(1.0,), iterations=(0,), latency_sentences=1,
                        progress=False, blank_penalty=-100.0, packed=False)
    assert override["rows"][0]["tokens"] == 0 and override["rows"][0]["blank_penalty"] == -100.0
    packed = packed_usable(torch.device("cpu"), torch.float32)
    assert (result["kernels"], override["kernels"]) == ("pyprune packed-blocks" if packed else "torch", "torch")
    assert "linear layers on torch kernels" in format_table(override)
    assert result["copy_bleu"] == pytest.approx(bleu(SOURCES, TARGETS)) and result["copy_bleu"] < 5
    pytest.importorskip("matplotlib")
    from pyprune.deer.evaluate import plot
    assert plot(result, str(tmp_path / "results.png"))
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Inference in bfloat16: a cached copy (the model stays float32), its CTC logits close to float32's.
    half = deer.sub_network(0.5, torch.bfloat16)
    assert half.output_bias.dtype == torch.bfloat16 and deer.sub_network(0.5, torch.bfloat16) is half
    assert deer.sub_network(0.5).output_bias.dtype == torch.float32 == deer.model.output_bias.dtype
    sources = pad_rows(deer.encode(SOURCES), deer.model.config.pad_id)
    lengths = sources.ne(deer.model.config.pad_id).sum(1)
    with torch.no_grad():
        logits = [m.vocab_logits(m.encode_with_target(sources, m.ctc_slots(sources, lengths))[1]).float()
                  for m in (deer.sub_network(0.5), half)]
    torch.testing.assert_close(logits[1], logits[0], atol=0.1 * float(logits[0].abs().max()), rtol=0)
    for keep in (1.0, 0.5):
        out = deer.generate(SOURCES, max_iter=2, keep=keep, dtype=torch.bfloat16)
        assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert evaluate(deer, list(zip(SOURCES, TARGETS)), keeps=(0.5,), iterations=(1,), latency_sentences=1,
                    progress=False, dtype=torch.bfloat16)["dtype"] == "bfloat16"
    # Smaller keep ratios are smaller models.
    from pyprune.pruning import count_parameters
    sizes = [count_parameters(deer.sub_network(k), live=True) for k in deer.keep_ratios]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


def test_output_matrix_is_cached_for_decoding_until_the_embeddings_change(tokenizer):
    model = make(tokenizer).model
    words = model.encoder.embeddings.word_embeddings.weight
    with torch.no_grad():
        first = model.output_matrix()
        assert model.output_matrix() is first
        words[model.out_to_token[1:]] += 1.0
        changed = model.output_matrix()
    assert changed is not first
    torch.testing.assert_close(changed[1:], first[1:] + 1.0)
    assert model.output_matrix().requires_grad and model.output_matrix() is not model.output_matrix()
    # The autoregressive baseline keeps its output rows for decoding alike, and trains through them.
    c = model.config
    baseline = AutoregressiveBaseline(model.encoder, model.restricted_vocab(), c.pad_id, c.bos_id, c.eos_id, layers=1)
    h = torch.randn(2, 3, words.shape[1])
    with torch.no_grad():
        first = baseline._logits(h)
        kept = baseline._output_cache[1]
        torch.testing.assert_close(baseline._logits(h), first)
        assert baseline._output_cache[1] is kept
        words[baseline.out_to_token] *= 2.0
        assert not torch.equal(baseline._logits(h), first) and baseline._output_cache[1] is not kept
    baseline._logits(h).sum().backward()
    assert words.grad is not None and words.grad[baseline.out_to_token].abs().sum() > 0


def test_edit_penalties_steer_deletion_and_insertion(tokenizer):
    from pyprune.deer.generate import delete_words, insert_words
    deer = make(tokenizer)
    model = deer.model
    sources, targets = batch(deer)
    cache = model.encode_source(sources)
    with torch.no_grad():
        h = model.decode_target(cache, targets)
        margin = (lambda d: d[..., 1] - d[..., 0])(model.deletion_logits(h))
    inner = targets.ne(0) & targets.ne(model.config.bos_id) & targets.ne(model.config.eos_id)
    count = lambda tokens: int(tokens.ne(0).sum())
    assert count(delete_words(model, targets, h, penalty=1e4)) == count(targets)          # nothing deleted
    assert count(delete_words(model, targets, h, penalty=-1e4)) == 2 * len(targets)        # only [bos] [eos] left
    # A token goes where its delete logit minus the penalty beats its keep logit: the median margin splits them.
    p = float(margin[inner].median())
    expected = int((inner & (margin > p)).sum())
    assert count(targets) - count(delete_words(model, targets, h, penalty=p)) == expected > 0
    kept = insert_words(model, cache, targets, h, penalty=1e4)                          # no placeholder anywhere
    assert torch.equal(kept, targets[:, :kept.shape[1]])
    grown = insert_words(model, cache, targets, h, penalty=-1e4)                         # at least one in every gap
    assert (grown.ne(0).sum(1) >= 2 * targets.ne(0).sum(1) - 1).all()
    # generate_ids takes them; no penalty is what the classifiers' argmax says.
    ids = deer.encode(SOURCES)
    assert generate_ids(model, ids, max_iter=1) == generate_ids(model, ids, max_iter=1, deletion_penalty=0.0,
                                                                insertion_penalty=0.0)
    drafts = generate_ids(model, ids, max_iter=0)
    assert generate_ids(model, ids, max_iter=2, deletion_penalty=1e4, insertion_penalty=1e4) == drafts
    for name in ("deletion_penalty", "insertion_penalty"):
        with pytest.raises(ValueError, match=name):
            generate_ids(model, ids, **{name: float("inf")})


def test_calibration_keeps_the_best_edit_penalties_on_valid_pairs(tokenizer, tmp_path):
    from pyprune.deer.calibrate import calibrate_edits
    from pyprune.deer.evaluate import bleu
    deer, _, _ = _trained(tokenizer, tmp_path)
    pairs = list(zip(SOURCES, TARGETS))
    deletion, insertion = (0.0, -1e4, 1e4), (0.0, -1e4)
    scores = calibrate_edits(deer, pairs, keeps=(1.0, 0.5), deletion_grid=deletion, insertion_grid=insertion,
                             batch_size=2, progress=False)
    assert set(scores) == {1.0, 0.5} == set(deer.edit_penalty)
    for keep, by_point in scores.items():
        assert set(by_point) == {(d, i) for d in deletion for i in insertion}
        for (d, i), score in by_point.items():        # the shared draft and deletion pass change nothing
            out = generate_ids(deer.sub_network(keep), deer.encode(SOURCES), max_iter=1, deletion_penalty=d,
                               insertion_penalty=i, blank_penalty=deer.penalty(keep))
            assert score == pytest.approx(bleu(deer.decode(out), TARGETS))
        best = max(by_point.values())
        assert deer.edit_penalty[keep] == next(p for p, v in by_point.items() if v == best)   # first of equals
        assert by_point[-1e4, 0.0] < best                  # deleting every word scores lower than the best
        assert deer.decoding(keep) == {"blank_penalty": deer.penalty(keep),
                                       "deletion_penalty": deer.edit_penalty[keep][0],
                                       "insertion_penalty": deer.edit_penalty[keep][1]}
    # generate decodes with the calibrated pair unless given others.
    deer.edit_penalty[1.0] = (-1e4, 1e4)                 # delete every word, insert none
    assert deer.generate(SOURCES, max_iter=1) == [""] * 3
    assert deer.generate(SOURCES, max_iter=1, deletion_penalty=0.0, insertion_penalty=0.0) == \
        deer.decode(generate_ids(deer.sub_network(1.0), deer.encode(SOURCES), max_iter=1,
                                 blank_penalty=deer.penalty(1.0))) != [""] * 3
    # Saved into the checkpoint beside what was there.
    deer.save(str(tmp_path / "run"), extra={"step": 7})
    deer.save_penalties(str(tmp_path / "run"))
    loaded, state = Deer.load(str(tmp_path / "run"))
    assert loaded.edit_penalty == deer.edit_penalty and state["step"] == 7
    assert loaded.blank_penalty == pytest.approx(deer.blank_penalty)
    for bad in ((), "0", (float("nan"),)):
        with pytest.raises(ValueError, match="deletion_grid"):
            calibrate_edits(deer, pairs, deletion_grid=bad, progress=False)
    with pytest.raises(ValueError, match="pairs"):
        calibrate_edits(deer, [], progress=False)


def test_checkpoint_resume_continues_exactly(tokenizer, tmp_path):
    straight, _, _ = _trained(tokenizer, tmp_path / "a", steps=6)
    deer = make(tokenizer)
    pairs = encode_pairs(deer, list(zip(SOURCES, TARGETS)))
    config = TrainConfig(steps=6, batch_size=3, lr=1e-3, head_lr=3e-3, checkpoint_every=1000, time_limit=0.0)
    run = str(tmp_path / "b")
    assert train(deer, pairs, run, config, progress=False)["step"] == 1           # interrupted after one step
    resumed, state = Deer.load(run)
    assert state["step"] == 1
    config.time_limit = None
    train(resumed, pairs, run, config, resume=state, progress=False)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    for a, b in zip(straight.pruning.state_dict().values(), resumed.pruning.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert resumed.blank_penalty == pytest.approx(straight.blank_penalty) and straight.blank_penalty
    again, _ = Deer.load(run)
    assert again.generate(SOURCES, max_iter=1) == resumed.generate(SOURCES, max_iter=1)


def test_training_dropout_option(tokenizer, tmp_path):
    deer = make(tokenizer)
    set_dropout(deer.model.encoder, 0.1)                # as a pretrained backbone ships
    pairs = encode_pairs(deer, list(zip(SOURCES, TARGETS)))
    config = TrainConfig(steps=1, batch_size=3, checkpoint_every=1000, dropout=0.0)
    train(deer, pairs, str(tmp_path / "run"), config, progress=False)
    rates = [m.p for m in deer.model.encoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates and all(p == 0.0 for p in rates)
    with pytest.raises(ValueError, match="dropout"):
        train(deer, pairs, str(tmp_path / "bad"), TrainConfig(steps=1, dropout=1.5), progress=False)


def test_bad_inputs_raise_clear_errors(tokenizer, tmp_path):
    deer = make(tokenizer, max_positions=12)
    with pytest.raises(ValueError, match="empty source"):
        deer.generate(["dios", ""])
    with pytest.raises(ValueError, match="position table"):
        deer.generate([" ".join(["amor"] * 20)])
    with pytest.raises(ValueError, match="keep"):
        deer.generate(SOURCES, keep=0.6)
    with pytest.raises(ValueError, match="max_iter"):
        deer.generate(SOURCES, max_iter=-1)
    with pytest.raises(ValueError, match="blank_penalty"):
        deer.generate(SOURCES, blank_penalty=float("nan"))
    with pytest.raises(ValueError, match="dtype"):
        deer.generate(SOURCES, dtype=torch.int8)
    with pytest.raises(ValueError, match="sources"):
        deer.generate("a string, not a list")
    with pytest.raises(ValueError, match="keep"):
        make(tokenizer, prune=False).generate(SOURCES, keep=0.5)
    with pytest.raises(ValueError, match="checkpoint"):
        Deer.load(str(tmp_path))
    torch.save({"format": "something-else"}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="format"):
        Deer.load(str(tmp_path))
    with pytest.raises(ValueError, match="config"):
        make(tokenizer, alpha=2, not_a_field=1)


def test_autoregressive_baseline_cache_matches_full_recompute(tokenizer):
    deer = make(tokenizer)
    torch.manual_seed(0)
    c = deer.model.config
    cfg = deer.model.encoder.config
    model = AutoregressiveBaseline(transformers.BertModel(cfg, add_pooling_layer=False), deer.model.restricted_vocab(),
                                   c.pad_id, c.bos_id, c.eos_id, layers=2, max_length=30)
    pairs = encode_pairs(deer, list(zip(SOURCES, TARGETS)))
    summary = train_baseline(model, pairs, steps=60, batch_size=3, lr=1e-3, head_lr=3e-3, progress=False)
    assert summary["loss"] < 2.0
    cached = model.generate_ids([s for s, _ in pairs], batch_size=3, max_length=12)
    # Reference: greedy decoding that re-runs the whole prefix through the teacher-forced path each step.
    with torch.no_grad():
        for (source, _), got in zip(pairs, cached):
            prefix = [c.bos_id]
            kv, mask = model._memory(torch.tensor([source]))
            for _ in range(min(12, 2 * len(source) + 10)):
                h = model._embed(torch.tensor([prefix]))
                for block, memory_kv in zip(model.blocks, kv):
                    h = block(h, memory_kv, mask)
                token = int(model.out_to_token[model._logits(h)[0, -1].argmax()])
                if token == c.eos_id:
                    break
                prefix.append(token)
            assert prefix[1:] == got


@pytest.mark.skipif(not packed_usable(torch.device("cpu"), torch.float32), reason="the cpp extension is not built")
def test_generate_under_inference_mode(tokenizer):
    # The first call builds and keeps the sub-networks inside the caller's inference mode: they must be
    # ordinary tensors (cached values key on version counters, which inference tensors lack) and decode alike.
    deer = make(tokenizer)
    sources = ["a b c", "d e"]
    with torch.inference_mode():
        inside = [deer.generate(sources, keep=keep, max_iter=1, packed=packed)
                  for keep in (1.0, 0.5) for packed in (False, True)]
    assert not any(p.is_inference() for p in deer.sub_network(0.5, packed=True).parameters())
    assert inside == [deer.generate(sources, keep=keep, max_iter=1, packed=packed)
                      for keep in (1.0, 0.5) for packed in (False, True)]
    # A model made inside inference mode by the user: its cached values are made afresh on every call.
    with torch.inference_mode():
        model = copy.deepcopy(deer.model).eval()
        words = model.encoder.embeddings.word_embeddings.weight
        first = model.output_matrix()
        assert words.is_inference() and model.output_matrix() is not first
        words[model.out_to_token[1:]] += 1.0
        torch.testing.assert_close(model.output_matrix()[1:], first[1:] + 1.0)


def test_packed_inference_copies_compute_what_the_models_compute(tokenizer):
    deer = make(tokenizer)
    c = deer.model.config
    sources, targets = batch(deer)
    lengths = sources.ne(c.pad_id).sum(1)
    for keep in (1.0, 0.5):
        plain, packed = deer.sub_network(keep), deer.sub_network(keep, packed=True)
        assert deer.sub_network(keep, packed=True) is packed and plain.output_layer is None
        assert not any(type(m) in (torch.nn.Linear, BlockSparseLinear) for m in packed.modules())
        with torch.no_grad():
            for m in (plain, packed):
                cache, h = m.encode_with_target(sources, m.ctc_slots(sources, lengths))
                states = m.decode_target(cache, targets)
                m.outputs = [m.vocab_logits(h), states, m.deletion_logits(states), m.placeholder_logits(states)]
        for got, expected in zip(packed.outputs, plain.outputs):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        # The compacted FFN widths were padded with zero neurons to whole blocks, at no cost to the outputs.
        widths = [(p.intermediate.dense.out_features, q.intermediate.dense.out_features)
                  for p, q in zip(plain.encoder.encoder.layer, packed.encoder.encoder.layer)]
        assert all(w == -(-v // 32) * 32 for v, w in widths) and (keep == 1.0 or any(v != w for v, w in widths))
        # Each layer's GELU and the vocabulary transform's run in the packed kernel's epilogue.
        fused = [m for m in packed.modules() if isinstance(m, PackedLinear) and m.activation == "gelu"]
        assert len(fused) == len(widths) + 1 and fused[-1] is packed.transform[0]
        with pytest.raises(ValueError, match="input"):                 # an inference copy: no training
            packed.vocab_logits(torch.randn(1, 2, 64, requires_grad=True))
        # Its own parameters need no gradient, so it decodes outside no_grad too.
        assert not any(p.requires_grad for p in packed.parameters())
        states = packed.decode_target(cache, targets)                 # `cache`: packed's, from the loop
        assert not states.requires_grad and torch.equal(states, packed.outputs[1])
    assert type(deer.model.transform[0]) is torch.nn.Linear and deer.model.output_layer is None
    assert all(p.requires_grad for p in deer.model.parameters())         # the copies left the model as it was
    cfg = deer.model.encoder.config
    baseline = AutoregressiveBaseline(transformers.BertModel(cfg, add_pooling_layer=False),
                                      deer.model.restricted_vocab(), c.pad_id, c.bos_id, c.eos_id, layers=2).eval()
    packed_baseline = copy.deepcopy(baseline)
    assert pack_for_inference(packed_baseline) == 2 * 10 + 6 * 2 + 1     # decoder, encoder, output layer
    assert sum(isinstance(m, PackedLinear) and m.activation == "gelu" for m in packed_baseline.modules()) == 2 + 2
    with torch.no_grad():
        torch.testing.assert_close(packed_baseline(sources, targets), baseline(sources, targets), rtol=1e-5, atol=1e-5)


def test_decoding_benchmark_variants_agree(tokenizer):
    from pyprune.benchmarks.deer import measure
    deer = make(tokenizer, prune=False)
    c = deer.model.config
    torch.manual_seed(0)
    baseline = AutoregressiveBaseline(transformers.BertModel(deer.model.encoder.config, add_pooling_layer=False),
                                      deer.model.restricted_vocab(), c.pad_id, c.bos_id, c.eos_id, layers=1,
                                      max_length=20).eval()
    rows = measure(deer, baseline, deer.encode(SOURCES), rounds=1)
    packed = ["DEER decoding (keep 1, 2 iterations)", "autoregressive decoding"]
    assert [r["step"] for r in rows] == ["CTC draft", "fill", "autoregressive greedy"] + (
        packed if packed_usable(torch.device("cpu"), torch.float32) else [])
    assert all(r["anchor_ms"] > 0 and r["pyprune_ms"] > 0 for r in rows)
    assert "_logits" not in vars(baseline)                  # the benchmark's stand-in is gone again


def _ddp_worker(rank, world, init, out, tokenizer):
    import torch.distributed as dist
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        deer = make(tokenizer)
        pairs = encode_pairs(deer, list(zip(SOURCES, TARGETS)) * 2)
        train(deer, pairs, str(out), TrainConfig(steps=3, batch_size=3, lr=1e-3, checkpoint_every=1000),
              progress=False)
        torch.save({**{k: v.clone() for k, v in deer.model.state_dict().items()},
                    "blank_penalty": torch.tensor(sorted(deer.blank_penalty.items()))}, str(out / f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_data_parallel_training_keeps_ranks_in_step(tokenizer, tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path}/rendezvous", tmp_path, tokenizer), nprocs=2)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    start = make(tokenizer).model.state_dict()
    assert any(not torch.equal(start[k], a[k]) for k in a)              # it trained
    for k in a:                                                            # both ranks hold the same weights
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert (tmp_path / "checkpoint.pt").is_file()                         # rank 0 wrote the checkpoint


def test_command_line_train_generate_evaluate(tokenizer, tmp_path, capsys, monkeypatch):
    from pyprune.deer.cli import main
    backbone = tmp_path / "backbone"
    make(tokenizer).model.encoder.save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(SOURCES, TARGETS)))
    run = tmp_path / "run"
    assert main(["train", "--backbone", str(backbone), "--data", str(data), "--out", str(run), "--steps", "4",
                 "--batch-size", "3", "--draft-prob", "1", "--baseline-steps", "2"]) == 0
    deer, state = Deer.load(str(run))
    assert state["step"] == 4 and set(deer.blank_penalty) <= set(deer.keep_ratios) and deer.blank_penalty
    assert set(deer.edit_penalty) == set(deer.keep_ratios)                # calibrated on the valid split
    assert (run / "baseline.pt").is_file()
    capsys.readouterr()
    assert main(["train", "--backbone", str(backbone), "--data", str(data), "--out", str(run), "--steps", "4",
                 "--batch-size", "3", "--calibrate-sentences", "0"]) == 0      # resumed at its last step
    assert "already at step 4 of --steps 4; nothing to train" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--out", str(run), "--calibrate-sentences", "-1"])
    assert "--calibrate-sentences: expected an integer >= 0, got '-1'" in capsys.readouterr().err
    sources = tmp_path / "sources.txt"
    sources.write_text("\n".join(SOURCES) + "\n")
    assert main(["generate", "--model", str(run), "--input", str(sources), "--keep", "0.5", "--iterations", "1",
                 "--blank-penalty", "100", "--dtype", "bfloat16"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == deer.generate(SOURCES, max_iter=1, keep=0.5, blank_penalty=100.0, dtype=torch.bfloat16)
    assert all(printed)                                  # penalty 100: a word in every slot, no empty line
    report = tmp_path / "report"
    assert main(["evaluate", "--model", str(run), "--data", str(data), "--keeps", "1", "0.25", "--iterations", "0",
                 "--latency-sentences", "1", "--blank-penalty", "-100", "--out", str(report)]) == 0
    table = (report / "results.md").read_text()
    assert table.count("| DEER |") == 2 and "| -100.00 |" in table and "autoregressive" in table
    assert main(["evaluate", "--model", str(run), "--data", str(data), "--keeps", "1", "--iterations", "1",
                 "--latency-sentences", "1", "--deletion-penalty", "-10000", "--insertion-penalty", "3",
                 "--out", str(report)]) == 0
    row = json.loads((report / "results.json").read_text())["rows"][0]
    assert (row["deletion_penalty"], row["insertion_penalty"], row["tokens"]) == (-1e4, 3.0, 0)
    assert f"| {deer.penalty(1.0):.2f} / -10000 / 3 |" in (report / "results.md").read_text()
    assert not (run / "results.md").exists()            # --out: the run directory untouched
