"""Pruning toolkit: masked == compacted, sizes, thresholds, gradients, save/load, errors."""
import json
import math
import os
import random as pyrandom
import subprocess
import sys

import pytest
import torch

from pruning_models import FAMILIES, inputs, output, tiny_model
from pyprune.pruning import (BlockMovementPruning, Importance, KeyValueRecorder, PrunePlan, ProgressiveSchedule,
                             StructuredMasks, causal_distillation, compact, count_parameters, extract, from_pretrained,
                             hidden_distillation, importance, logits_distillation, model_spec, save_pretrained)
from pyprune.pruning.plan import gqa_shape, select_heads

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def random_importance(model, seed=0):
    return importance.random(model, seed=seed)


def masked_output(model, plan, batch):
    with torch.no_grad(), StructuredMasks(model) as masks:
        masks.apply_plan(plan)
        return output(model, batch)


def compare(masked, compacted, plan):
    """Base models return hidden states: compare on the kept dimensions."""
    if masked.shape[-1] != compacted.shape[-1]:
        masked = masked[..., plan.hidden]
    torch.testing.assert_close(compacted, masked, rtol=1e-5, atol=2e-5)


# ---------------------------------------------------------------- SIMPLE extraction + compaction

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["uniform", "global"])
@pytest.mark.parametrize("criterion", ["random", "magnitude"])
def test_masked_equals_compacted(family, mode, criterion):
    model = tiny_model(family)
    batch = inputs(family)
    scores = random_importance(model) if criterion == "random" else importance.magnitude(model)
    plan = extract(model_spec(model), scores, 2.0, mode)
    compacted = compact(model, plan)
    with torch.no_grad():
        compare(masked_output(model, plan, batch), output(compacted, batch), plan)
    # The original is untouched and differs from its pruned version.
    with torch.no_grad():
        assert not torch.allclose(output(model, batch)[..., :4], masked_output(model, plan, batch)[..., :4])


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_sizes_and_parameter_count(family):
    model = tiny_model(family)
    spec = model_spec(model)
    plan = extract(spec, random_importance(model), 2.0)
    compacted = compact(model, plan)
    after = model_spec(compacted)
    assert after.hidden.size == spec.hidden.size // 2
    for before, now in zip(spec.attentions, after.attentions):
        assert now.num_heads == before.num_heads // 2 and now.head_dim == before.head_dim
    for before, now in zip(spec.ffns, after.ffns):
        assert now.size == before.size // 2
    # Expected count, component by component, from the plan alone.
    removed = 0
    for attention in spec.attentions:
        kept = len(plan.heads[attention.name])
        kv_kept = len(torch.unique(plan.heads[attention.name] // attention.group_size))
        dh = attention.head_dim
        removed_q = (attention.num_heads - kept) * dh
        removed_kv = (attention.num_kv_heads - kv_kept) * dh
        removed += (removed_q + 2 * removed_kv) * spec.hidden.size  # q/k/v rows (and biases below)
        removed += removed_q * spec.hidden.size                      # o columns
        if getattr(attention.o.module, "bias", None) is not None:
            removed += removed_q + 2 * removed_kv
    assert count_parameters(compact(model, PrunePlan(heads=plan.heads))) == count_parameters(model) - removed


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_compaction_is_faster_to_run_and_smaller(family):
    model = tiny_model(family)
    plan = extract(model_spec(model), random_importance(model), 3.0)
    assert count_parameters(compact(model, plan)) < 0.5 * count_parameters(model)


def test_gqa_groups_stay_equal():
    assert gqa_shape(9, 3, 4) == (2, 2)        # SmolLM2: 9 heads over 3 kv heads, ratio 2 -> 4 heads
    assert gqa_shape(9, 3, 3) == (3, 1)        # ties: more key/value heads
    assert gqa_shape(8, 2, 8) == (2, 4)
    scores = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.5, 0.4])
    heads = select_heads(scores, 3, 4)
    groups = heads // 3
    assert len(heads) == 4 and torch.bincount(groups).max() == 2 and len(torch.unique(groups)) == 2


# ---------------------------------------------------------------- SIMPLE masks

@pytest.mark.parametrize("family", FAMILIES)
def test_masks_get_gradients_and_remove_cleanly(family):
    model = tiny_model(family)
    batch = inputs(family)
    with torch.no_grad():
        before = output(model, batch)
    names = [n for n, _ in model.named_parameters()]
    with StructuredMasks(model) as masks:
        with torch.no_grad():
            torch.testing.assert_close(output(model, batch), before, rtol=1e-5, atol=1e-5)  # masks at 1
        loss = output(model, batch).pow(2).mean() + masks.l1_penalty(1.0, 1.0, 1.0)
        loss.backward()
        for mask in masks.parameters():
            assert mask.grad is not None and mask.grad.abs().sum() > 0
        assert [n for n, _ in model.named_parameters()] == names        # keys untouched
    with torch.no_grad():
        torch.testing.assert_close(output(model, batch), before, rtol=0, atol=0)
    assert not any(type(m).__name__ == "MaskedNorm" for m in model.modules())


def test_l1_penalty_and_importance():
    model = tiny_model("gpt2")
    with StructuredMasks(model) as masks:
        heads = sum(m.numel() for m in masks.head_masks)
        neurons = sum(m.numel() for m in masks.neuron_masks)
        expected = 2.0 * heads + 3.0 * neurons + 5.0 * masks.hidden_mask.numel()
        assert math.isclose(float(masks.l1_penalty(2.0, 3.0, 5.0)), expected, rel_tol=1e-6)
        with torch.no_grad():
            masks.head_masks[0][1] = -3.0
        assert float(masks.importance().heads["h.0.attn"][1]) == 3.0
        plan = extract(model_spec(model), masks.importance(), 4.0)
        assert 1 in plan.heads["h.0.attn"].tolist()
        masks.apply_plan(plan)
        assert not any(p.requires_grad for p in masks.parameters())
        assert sorted(torch.nonzero(masks.head_masks[0]).flatten().tolist()) == plan.heads["h.0.attn"].tolist()


# ---------------------------------------------------------------- baselines

def test_magnitude_ranks_the_largest_head_and_neuron_first():
    model = tiny_model("bert")
    spec = model_spec(model)
    attention, ffn = spec.attentions[0], spec.ffns[0]
    with torch.no_grad():
        attention.o.module.weight[:, 2 * 16:3 * 16] *= 10        # head 2's output columns
        ffn.output.module.weight[:, 7] *= 10
    scores = importance.magnitude(model)
    assert int(scores.heads[attention.name].argmax()) == 2
    assert int(scores.neurons[ffn.name].argmax()) == 7


def test_magnitude_of_hidden_dims_counts_every_weight_compaction_removes():
    model = tiny_model("bert")                   # has a pooler: it reads and writes the hidden state
    before = importance.magnitude(model).hidden
    with torch.no_grad():
        row = model.pooler.dense.weight[5]       # output row of hidden dim 5 (its input column left alone)
        row[6:] *= 10
        row[:5] *= 10
    after = importance.magnitude(model).hidden
    assert after[5] > before[5]


def test_random_is_seeded():
    model = tiny_model("llama")
    a, b, c = importance.random(model, 1), importance.random(model, 1), importance.random(model, 2)
    assert torch.equal(a.hidden, b.hidden) and not torch.equal(a.hidden, c.hidden)


def test_movement_scores_follow_the_loss():
    model = tiny_model("gpt2")
    batch = inputs("gpt2")

    def loss_fn(m, b):
        return output(m, b).pow(2).mean()

    scores = importance.movement(model, [batch, batch], loss_fn)
    single = importance.movement(model, [batch], loss_fn)
    for name in scores.heads:
        torch.testing.assert_close(scores.heads[name], 2 * single.heads[name])
    # Scaling a neuron's mask up by a little changes the loss as -score predicts.
    name = next(iter(scores.neurons))
    neuron = int(scores.neurons[name].abs().argmax())
    with StructuredMasks(model, ("neurons",)) as masks:
        with torch.no_grad():
            base = float(loss_fn(model, batch))
            masks.neuron_masks[0][neuron] += 1e-3
            moved = float(loss_fn(model, batch))
    assert (moved - base) * float(single.neurons[name][neuron]) < 0
    assert not any(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------- DEER block movement pruning

def block_model(family="bert"):
    return tiny_model(family, hidden=128, heads=4)    # head size 32: heads align with blocks


@pytest.mark.parametrize("family", FAMILIES)
def test_deer_masked_equals_compacted_at_every_keep(family):
    model = block_model(family)
    batch = inputs(family)
    control = BlockMovementPruning(model)
    for keep in control.keep_ratios:
        control.set_sparsity(keep)
        with torch.no_grad():
            masked = output(model, batch)
            compacted = control.compact(keep)
            torch.testing.assert_close(output(compacted, batch), masked, rtol=1e-5, atol=2e-5)
        if keep < 1:
            assert count_parameters(compacted) < count_parameters(model)
            assert not any(isinstance(m, type(model.get_submodule(control.attention_paths[0])))
                           for m in compacted.modules())


def test_deer_thresholds_give_requested_sparsity_to_one_unit():
    model = block_model()
    control = BlockMovementPruning(model, keep_ratios=(1.0, 0.8, 0.5, 0.3, 0.1))
    ffn_unit = max(control._ffn_weights)
    _, ffn_total = control._pool(1)
    for keep in control.keep_ratios:
        attention, ffn = control.kept_fraction(keep)
        blocks = sum(s.numel() for s in control.attention_scores)
        assert keep <= attention + 1e-9 and attention <= keep + 1.0 / blocks + 1e-9
        assert keep <= ffn + 1e-9 and ffn <= keep + ffn_unit / float(ffn_total.sum()) + 1e-9


def test_deer_sub_networks_are_nested_and_refreshed():
    model = block_model()
    control = BlockMovementPruning(model, refresh_every=3)
    masks = {k: torch.cat([control.attention_mask(i, k).flatten() for i in range(len(control.attention_scores))])
             for k in control.keep_ratios}
    for big, small in zip(control.keep_ratios, control.keep_ratios[1:]):
        assert bool((masks[small] <= masks[big]).all())
    before = control.thresholds.clone()
    with torch.no_grad():
        for s in control.attention_scores:
            s.add_(torch.randn_like(s))
    control.step()
    control.step()
    assert torch.equal(control.thresholds, before)           # not yet refreshed
    control.step()
    assert not torch.equal(control.thresholds, before)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_deer_gradients_reach_scores_and_groups(family):
    model = block_model(family).train()
    batch = inputs(family)
    control = BlockMovementPruning(model)
    assert control.sample_sparsity(pyrandom.Random(0)) in control.keep_ratios
    control.set_sparsity(0.5)
    loss = output(model, batch).pow(2).mean() + 30 * control.regularizer()
    loss.backward()
    for score in control.parameters():
        assert score.grad is not None and score.grad.abs().sum() > 0
    groups = control.param_groups(lr=1e-4, score_lr=1e-2)
    score_ids = {id(p) for p in groups[1]["params"]}
    assert groups[1]["lr"] == 1e-2 and score_ids == {id(p) for p in control.parameters()}
    assert not score_ids & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) == len(list(model.parameters()))
    # Keys of the model are unchanged while attached.
    assert all("score" not in key for key in model.state_dict())


def test_deer_regularizer_is_a_weighted_mean_of_sigmoids():
    control = BlockMovementPruning(block_model())
    with torch.no_grad():
        for s in control.parameters():
            s.fill_(0.0)
    assert math.isclose(float(control.regularizer()), 0.5, rel_tol=1e-6)


# ---------------------------------------------------------------- save / load

LOAD_PLAIN = """
import sys, torch, transformers
path, family = sys.argv[1], sys.argv[2]
cls = {"bert": transformers.BertModel, "roberta": transformers.RobertaModel,
       "xlm-roberta": transformers.XLMRobertaModel, "gpt2": transformers.GPT2LMHeadModel,
       "bart": transformers.BartForConditionalGeneration, "llama": transformers.LlamaForCausalLM}[family]
model = cls.from_pretrained(path, attn_implementation="eager").eval()
batch = torch.load(path + "/batch.pt")
with torch.no_grad():
    out = model(**batch)
result = out.logits if hasattr(out, "logits") else out.last_hidden_state
assert "pyprune" not in sys.modules
torch.save(result, path + "/result.pt")
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_model_loads_in_plain_transformers(family, tmp_path):
    model = tiny_model(family)
    batch = inputs(family)
    compacted = compact(model, extract(model_spec(model), random_importance(model), 2.0))
    assert not hasattr(compacted.config, "pyprune")
    path = str(tmp_path / "model")
    save_pretrained(compacted, path)
    torch.save(batch, path + "/batch.pt")
    subprocess.run([sys.executable, "-c", LOAD_PLAIN, path, family], check=True, cwd=str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(torch.load(path + "/result.pt"), output(compacted, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_per_layer_sizes_round_trip_through_pyprune(family, tmp_path):
    model = tiny_model(family)
    batch = inputs(family)
    scores = random_importance(model, seed=5)
    plan = extract(model_spec(model), scores, 2.0, "global")
    first = next(iter(plan.heads))
    plan.heads[first] = plan.heads[first][:1]                   # force sizes that vary per layer
    compacted = compact(model, plan)
    assert compacted.config.pyprune["plain_loadable"] is False
    save_pretrained(compacted, str(tmp_path / "m"))
    loaded = from_pretrained(str(tmp_path / "m"))
    with torch.no_grad():
        torch.testing.assert_close(output(loaded, batch), output(compacted, batch), rtol=1e-5, atol=1e-5)
    assert count_parameters(loaded) == count_parameters(compacted)


def test_block_sparse_model_round_trip(tmp_path):
    model = block_model()
    batch = inputs("bert")
    control = BlockMovementPruning(model)
    compacted = control.compact(0.5)
    save_pretrained(compacted, str(tmp_path / "m"))
    loaded = from_pretrained(str(tmp_path / "m"))
    assert count_parameters(loaded) == count_parameters(compacted)
    with torch.no_grad():
        torch.testing.assert_close(output(loaded, batch), output(compacted, batch), rtol=1e-5, atol=1e-5)


def test_save_is_atomic(tmp_path):
    model = tiny_model("llama")
    path = str(tmp_path / "m")
    save_pretrained(model, path)
    original = json.load(open(os.path.join(path, "config.json")))

    class Broken(torch.nn.Module):
        config = model.config

        def save_pretrained(self, directory, **kwargs):
            with open(os.path.join(directory, "config.json"), "w") as f:
                f.write("{half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_pretrained(Broken(), path)
    assert json.load(open(os.path.join(path, "config.json"))) == original
    assert sorted(os.listdir(tmp_path)) == ["m"]


# ---------------------------------------------------------------- distillation

def test_logits_distillation_matches_its_formula():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=generator), torch.randn(2, 5, 11, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    T = 2.0
    per_token = -(torch.softmax(teacher / T, -1) * torch.log_softmax(student / T, -1)).sum(-1) * T * T
    expected = per_token[mask.bool()].mean()
    torch.testing.assert_close(logits_distillation(student, teacher, T, mask), expected)
    # Minimised (over the student) at the teacher's logits: the gradient there is zero.
    at_teacher = teacher.clone().requires_grad_()
    logits_distillation(at_teacher, teacher, T).backward()
    assert at_teacher.grad.abs().max() < 1e-6


@pytest.mark.parametrize("family", ["gpt2", "llama", "bart"])
def test_causal_and_hidden_distillation_agree_for_masked_and_compacted_students(family):
    teacher = tiny_model(family)
    batch = inputs(family)
    plan = extract(model_spec(teacher), random_importance(teacher, seed=2), 2.0)
    with torch.no_grad(), KeyValueRecorder(teacher) as recorded:
        teacher_out = teacher(**batch, output_hidden_states=True)
    teacher_kv = recorded.records
    student = tiny_model(family, seed=9)                          # different weights: nonzero losses
    with torch.no_grad(), StructuredMasks(student) as masks, KeyValueRecorder(student) as rec:
        masks.apply_plan(plan)
        masked_out = student(**batch, output_hidden_states=True)
    masked_kv = rec.records
    small = compact(student, plan)
    with torch.no_grad(), KeyValueRecorder(small) as rec:
        small_out = small(**batch, output_hidden_states=True)
    small_kv = rec.records
    causal_masked = causal_distillation(masked_kv, teacher_kv, teacher, plan)
    causal_small = causal_distillation(small_kv, teacher_kv, teacher, plan)
    assert float(causal_masked) > 0
    torch.testing.assert_close(causal_small, causal_masked, rtol=1e-5, atol=1e-6)
    assert float(causal_distillation(teacher_kv, teacher_kv, teacher, plan)) == 0.0
    hidden_key = "decoder_hidden_states" if family == "bart" else "hidden_states"
    h_masked = hidden_distillation(masked_out[hidden_key], teacher_out[hidden_key], plan.hidden)
    h_small = hidden_distillation(small_out[hidden_key], teacher_out[hidden_key], plan.hidden)
    torch.testing.assert_close(h_small, h_masked, rtol=1e-5, atol=1e-6)
    assert float(h_masked) > 0


# ---------------------------------------------------------------- schedule and errors

def test_progressive_schedule():
    schedule = ProgressiveSchedule(2.0, steps=100, ramp=0.5)
    keeps = [schedule.keep(s) for s in range(101)]
    assert keeps[0] == 1.0 and keeps[50] == 0.5 and keeps[100] == 0.5
    assert all(a >= b for a, b in zip(keeps, keeps[1:]))


@pytest.mark.parametrize("ratio", [1.0, 0.5, -2, float("nan"), float("inf"), True])
def test_bad_ratio(ratio):
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="ratio"):
        extract(model_spec(model), random_importance(model), ratio)


def test_absurd_ratio():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="ratio"):
        extract(model_spec(model), random_importance(model), 1000.0)


@pytest.mark.parametrize("keeps", [(1.0, 0.0), (1.2,), (0.5, 0.5), ()])
def test_bad_keep_ratios(keeps):
    with pytest.raises(ValueError, match="keep_ratios"):
        BlockMovementPruning(block_model(), keep_ratios=keeps)


def test_unknown_keep_and_bad_shapes():
    control = BlockMovementPruning(block_model())
    with pytest.raises(ValueError, match="keep: expected one of the keep ratios"):
        control.set_sparsity(0.6)
    with pytest.raises(ValueError, match="multiples of 32"):
        BlockMovementPruning(tiny_model("bert", hidden=48, heads=4))


def test_unsupported_models():
    with pytest.raises(NotImplementedError, match="model_type"):
        model_spec(torch.nn.Linear(4, 4))
    import transformers
    classifier = transformers.BertForSequenceClassification(tiny_model("bert").config).eval()
    with pytest.raises(NotImplementedError, match="classifier"):
        StructuredMasks(classifier)
    StructuredMasks(classifier, ("heads", "neurons")).remove()       # heads and neurons are fine


def test_plan_with_unknown_names():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="plan"):
        compact(model, PrunePlan(heads={"nope": torch.tensor([0])}))
    with pytest.raises(ValueError, match="importance"):
        extract(model_spec(model), Importance({}, {}, None), 2.0)
