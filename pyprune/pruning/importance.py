"""Baseline importance criteria, in the same format as SIMPLE's learned masks.

Each returns an ``Importance`` that ``extract`` turns into a plan exactly as
it does the learned masks, so baselines go through the same extraction and
fine-tuning:

- ``magnitude``: L2 norm of the weights a component owns (a head: its Q, K,
  V rows and O columns, with a grouped key/value head shared by its group;
  a neuron: its rows in the input projections and its column in the down
  projection; a hidden dimension: its embedding columns and every projection
  row or column on the residual stream).
- ``random``: uniform scores from a seeded generator.
- ``movement``: first-order movement, -sum_t dL/dm accumulated over batches
  with every mask at 1 (equal to -sum W * dL/dW over the weights a component
  scales: components whose weights move away from zero score high).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from .arch import model_spec, weight_matrix
from .masks import StructuredMasks
from .plan import Importance


@torch.no_grad()
def magnitude(model: nn.Module, hidden: bool = True) -> Importance:
    spec = model_spec(model)
    heads, neurons = {}, {}
    for attention in spec.attentions:
        group = attention.group_size
        q_total, kv_total = attention.widths
        q = weight_matrix(attention.q.module).float()
        if attention.fused_qkv:
            q, k, v = q[:q_total], q[q_total:q_total + kv_total], q[q_total + kv_total:]
        else:
            k, v = weight_matrix(attention.k.module).float(), weight_matrix(attention.v.module).float()
        o = weight_matrix(attention.o.module).float()
        per_head = q.pow(2).reshape(attention.num_heads, -1).sum(1)
        per_head += o.pow(2).t().reshape(attention.num_heads, -1).sum(1)
        per_kv = (k.pow(2) + v.pow(2)).reshape(attention.num_kv_heads, -1).sum(1) / group
        heads[attention.name] = (per_head + per_kv.repeat_interleave(group)).sqrt()
    for ffn in spec.ffns:
        total = weight_matrix(ffn.output.module).float().pow(2).sum(0)
        for slot in ffn.inputs:
            total = total + weight_matrix(slot.module).float().pow(2).sum(1)
        neurons[ffn.name] = total.sqrt()
    hidden_scores = None
    if hidden:
        total = torch.zeros(spec.hidden.size)
        for slot in spec.hidden.embeddings:
            total += slot.module.weight.float().pow(2).sum(0).cpu()
        readers, writers = spec.hidden_projections()
        for slot in readers:
            total += weight_matrix(slot.module).float().pow(2).sum(0).cpu()
        for slot in writers:
            total += weight_matrix(slot.module).float().pow(2).sum(1).cpu()
        hidden_scores = total.sqrt()
    return Importance(heads, neurons, hidden_scores)


def random(model: nn.Module, seed: int = 0, hidden: bool = True) -> Importance:
    spec = model_spec(model)
    generator = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.rand(n, generator=generator)  # noqa: E731
    return Importance({a.name: draw(a.num_heads) for a in spec.attentions},
                      {f.name: draw(f.size) for f in spec.ffns},
                      draw(spec.hidden.size) if hidden else None)


def movement(model: nn.Module, batches: Iterable, loss_fn: Callable[[nn.Module, object], Tensor],
             hidden: bool = True) -> Importance:
    """Accumulate -dL/dm over `batches` (``loss_fn(model, batch)`` returns the loss); weights unchanged."""
    components = ("heads", "neurons", "hidden") if hidden else ("heads", "neurons")
    with StructuredMasks(model, components) as masks:
        named = [(("heads", n), m) for n, m in zip(masks.attention_names, masks.head_masks)]
        named += [(("neurons", n), m) for n, m in zip(masks.ffn_names, masks.neuron_masks)]
        if masks.hidden_mask is not None:
            named.append((("hidden", None), masks.hidden_mask))
        totals = None
        for batch in batches:
            for _, mask in named:
                mask.grad = None
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            grads = [-mask.grad.detach().clone() for _, mask in named]
            totals = grads if totals is None else [t + g for t, g in zip(totals, grads)]
        model.zero_grad(set_to_none=True)
    if totals is None:
        raise ValueError("batches: expected at least one batch, got none")
    # Signed, unlike StructuredMasks.importance()'s |m|: negative = moving towards zero.
    scores = {"heads": {}, "neurons": {}, "hidden": None}
    for ((kind, name), _), total in zip(named, totals):
        if kind == "hidden":
            scores["hidden"] = total
        else:
            scores[kind][name] = total
    return Importance(scores["heads"], scores["neurons"], scores["hidden"])
