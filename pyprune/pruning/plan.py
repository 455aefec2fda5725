"""Which heads, neurons and hidden dimensions a pruned model keeps.

A ``PrunePlan`` is what every method produces and what compaction consumes:
kept query heads per attention block, kept neurons per FFN block, kept
hidden dimensions (shared by all layers) and, for DEER's 32x32 block pruning,
the block masks of the projections that stay partially sparse. Index
tensors are sorted, so compaction keeps the original order.

``extract`` turns importance scores (learned SIMPLE masks, magnitudes,
movement, random) into a plan for a compression ratio r:

- ``uniform``: every layer keeps floor(H/r) heads, floor(d_ff/r) neurons and
  the model floor(d/r) hidden dimensions, so the compacted model has one size
  per component and a plain transformers config describes it;
- ``global``: heads (and neurons) of all layers compete in one pool, so
  per-layer sizes vary; each layer keeps at least one head and one neuron.

With grouped-query attention (LLaMA) the query heads kept in a layer form
equal-sized groups over the key/value heads that stay: the attention kernels
of transformers need ``heads = kv_heads * group``. The count is the largest
such product not above the target (ties: more key/value heads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from .._validation import fail
from .arch import ModelSpec

MODES = ("uniform", "global")


@dataclass
class PrunePlan:
    heads: dict[str, Tensor] = field(default_factory=dict)        # attention name -> kept query heads
    neurons: dict[str, Tensor] = field(default_factory=dict)      # ffn name -> kept neurons
    hidden: Optional[Tensor] = None                                # kept hidden dims (None: all)
    block_masks: dict[str, Tensor] = field(default_factory=dict)  # projection path -> bool block mask

    def to_dict(self) -> dict:
        return {"heads": {k: v.tolist() for k, v in self.heads.items()},
                "neurons": {k: v.tolist() for k, v in self.neurons.items()},
                "hidden": None if self.hidden is None else self.hidden.tolist(),
                "block_masks": {k: v.tolist() for k, v in self.block_masks.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "PrunePlan":
        index = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
        return cls({k: index(v) for k, v in data.get("heads", {}).items()},
                   {k: index(v) for k, v in data.get("neurons", {}).items()},
                   None if data.get("hidden") is None else index(data["hidden"]),
                   {k: torch.tensor(v, dtype=torch.bool) for k, v in data.get("block_masks", {}).items()})


@dataclass
class Importance:
    """Scores per component, larger = more important (same layout as the specs)."""
    heads: dict[str, Tensor]       # attention name -> (num_heads,)
    neurons: dict[str, Tensor]     # ffn name -> (d_ff,)
    hidden: Optional[Tensor]       # (d,) or None: hidden dimension not pruned


def check_ratio(ratio: float, name: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 1:
        fail(name, "a compression ratio > 1 (2 keeps half of each component)", ratio)
    return float(ratio)


def _top(scores: Tensor, count: int) -> Tensor:
    # Stable on ties: the lower index wins, so plans are deterministic.
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    return order[:count].sort().values


def gqa_shape(num_heads: int, num_kv_heads: int, target: int) -> tuple[int, int]:
    """(kv_heads, group) with kv_heads*group <= target, as large as possible; ties: more kv heads."""
    group_size = num_heads // num_kv_heads
    best = (0, 0)
    for group in range(1, group_size + 1):
        kv = min(num_kv_heads, target // group)
        if kv * group > best[0] * best[1] or (kv * group == best[0] * best[1] and kv > best[0]):
            best = (kv, group)
    if best[0] == 0:
        best = (1, 1)
    return best


def select_heads(scores: Tensor, num_kv_heads: int, target: int) -> Tensor:
    """Kept query heads: `target` best, shaped into equal groups over kept kv heads."""
    num_heads = scores.numel()
    target = max(1, min(num_heads, target))
    if num_kv_heads == num_heads:
        return _top(scores, target)
    kv, group = gqa_shape(num_heads, num_kv_heads, target)
    per_group = scores.detach().float().cpu().reshape(num_kv_heads, num_heads // num_kv_heads)
    best_in_group = torch.sort(per_group, dim=1, descending=True, stable=True)
    group_scores = best_in_group.values[:, :group].sum(dim=1)
    kept_groups = _top(group_scores, kv)
    heads = best_in_group.indices[kept_groups, :group] + kept_groups[:, None] * per_group.shape[1]
    return heads.flatten().sort().values


def check_importance(spec: ModelSpec, importance: Importance) -> None:
    """Scores for every head, neuron and (when given) hidden dimension of `spec`'s model, or a clear error
    (scores saved for another model must not be turned into a plan for this one)."""
    def check(kind: str, name: str, scores: Optional[Tensor], size: int) -> None:
        if scores is None:
            fail("importance", f"{kind} scores for {name}", "none (scores of another model?)")
        if tuple(scores.shape) != (size,):
            fail("importance", f"{kind} scores of shape ({size},) for {name}",
                 f"{tuple(scores.shape)} (scores of another model?)")
    for attention in spec.attentions:
        check("head", attention.name, importance.heads.get(attention.name), attention.num_heads)
    for ffn in spec.ffns:
        check("neuron", ffn.name, importance.neurons.get(ffn.name), ffn.size)
    if importance.hidden is not None:
        check("hidden-dimension", "the model", importance.hidden, spec.hidden.size)
    extra = (set(importance.heads) - {a.name for a in spec.attentions}) | \
        (set(importance.neurons) - {f.name for f in spec.ffns})
    if extra:
        fail("importance", "scores only for this model's blocks", f"also {sorted(extra)[:3]} (scores of another model?)")


def extract(spec: ModelSpec, importance: Importance, ratio: float, mode: str = "uniform") -> PrunePlan:
    """The sub-network keeping 1/ratio of each component (see the module docstring)."""
    return extract_fraction(spec, importance, 1.0 / check_ratio(ratio), mode)


def extract_fraction(spec: ModelSpec, importance: Importance, keep: float, mode: str = "uniform") -> PrunePlan:
    """``extract`` by kept fraction in (0, 1] (1 keeps everything: progressive schedules start there)."""
    if mode not in MODES:
        fail("mode", f"one of {MODES}", repr(mode))
    if not 0 < keep <= 1:
        fail("keep", "a kept fraction in (0, 1]", keep)
    check_importance(spec, importance)
    plan = PrunePlan()
    if mode == "uniform":
        for attention in spec.attentions:
            target = max(1, math.floor(attention.num_heads * keep + 1e-9))
            plan.heads[attention.name] = select_heads(importance.heads[attention.name],
                                                      attention.num_kv_heads, target)
        for ffn in spec.ffns:
            plan.neurons[ffn.name] = _top(importance.neurons[ffn.name], max(1, math.floor(ffn.size * keep + 1e-9)))
    else:
        _extract_global(spec, importance, keep, plan)
    if importance.hidden is not None:
        count = math.floor(spec.hidden.size * keep + 1e-9)
        if count < 1:
            fail("ratio", f"at most {spec.hidden.size} (the hidden size) so one hidden dimension stays", 1 / keep)
        plan.hidden = _top(importance.hidden, count)
    return plan


def _global_counts(scores: dict[str, Tensor], keep: float) -> dict[str, int]:
    """Per entry, how many of its units rank in the top `keep` of all entries pooled (at least one each)."""
    pooled = torch.cat([v.detach().float().cpu() for v in scores.values()])
    total = max(len(scores), math.floor(pooled.numel() * keep + 1e-9))
    cutoff = torch.sort(pooled, descending=True, stable=True).values[total - 1]
    return {name: max(1, int((v.detach().float().cpu() >= cutoff).sum())) for name, v in scores.items()}


def _extract_global(spec: ModelSpec, importance: Importance, keep: float, plan: PrunePlan) -> None:
    # Heads: one pool over all layers; each layer then keeps its winners, shaped
    # into equal groups for grouped-query attention.
    heads = _global_counts({a.name: importance.heads[a.name] for a in spec.attentions}, keep)
    for attention in spec.attentions:
        plan.heads[attention.name] = select_heads(importance.heads[attention.name], attention.num_kv_heads,
                                                  heads[attention.name])
    neurons = _global_counts({f.name: importance.neurons[f.name] for f in spec.ffns}, keep)
    for ffn in spec.ffns:
        plan.neurons[ffn.name] = _top(importance.neurons[ffn.name], neurons[ffn.name])
