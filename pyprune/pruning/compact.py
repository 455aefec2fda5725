"""Compaction: turn a pruning plan into a physically smaller dense model.

The invariant every test checks: the masked model (masks from the same plan)
and the compacted model give the same outputs to floating-point tolerance.
It holds because a pruned head, neuron or hidden dimension contributes
exactly nothing in the masked model: a head's output is multiplied by zero
before the output projection, a neuron's activation before the down
projection, and a pruned hidden dimension is zero at every normalisation's
output and excluded from its statistics (see ``pyprune.pruning.masks``), so
nothing downstream ever reads it.

Projections left partially sparse by 32x32 block pruning become
``pyprune.nn.BlockSparseLinear`` (same state_dict keys as nn.Linear).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from .._validation import fail
from ..sparse import BLOCK, expand_mask
from .arch import AttentionSpec, ModelSpec, Slot, is_conv1d, model_spec
from .pretrained import record_sizes
from .plan import PrunePlan


class _Slicer:
    """Slices parameters along a dimension; tied parameters stay tied."""

    def __init__(self) -> None:
        # Keyed by id(): the source parameter is kept alive in the value so its
        # id cannot be reused by a new tensor while the memo lives.
        self._memo: dict[tuple[int, int], tuple[nn.Parameter, nn.Parameter]] = {}

    def take(self, param: Optional[nn.Parameter], dim: int, index: Optional[Tensor]) -> Optional[nn.Parameter]:
        if param is None or index is None:
            return param
        key = (id(param), dim)
        if key not in self._memo:
            data = param.detach().index_select(dim, index.to(param.device)).clone()
            self._memo[key] = (param, nn.Parameter(data, requires_grad=param.requires_grad))
        return self._memo[key][1]

    def projection(self, module: nn.Module, out_index: Optional[Tensor] = None,
                   in_index: Optional[Tensor] = None) -> None:
        """Keep output features `out_index` and input features `in_index` of a Linear/Conv1D."""
        out_dim, in_dim = (1, 0) if is_conv1d(module) else (0, 1)
        module.weight = self.take(self.take(module.weight, out_dim, out_index), in_dim, in_index)
        if getattr(module, "bias", None) is not None:
            module.bias = self.take(module.bias, 0, out_index)
        out_features, in_features = module.weight.shape[out_dim], module.weight.shape[in_dim]
        if is_conv1d(module):
            module.nf, module.nx = out_features, in_features
        else:
            module.out_features, module.in_features = out_features, in_features
        # Block-sparse layers carry a mask that must follow a slice; compaction
        # only creates them after slicing, so seeing one here is a misuse.
        if hasattr(module, "block_mask"):
            fail("model", "no BlockSparseLinear layers before compaction", type(module).__name__)

    def embedding(self, module: nn.Embedding, index: Tensor) -> None:
        module.weight = self.take(module.weight, 1, index)
        module.embedding_dim = module.weight.shape[1]

    def norm(self, module: nn.Module, index: Tensor) -> None:
        module.weight = self.take(module.weight, 0, index)
        if getattr(module, "bias", None) is not None:
            module.bias = self.take(module.bias, 0, index)
        if hasattr(module, "normalized_shape"):
            module.normalized_shape = (len(index),)


def head_rows(heads: Tensor, head_dim: int) -> Tensor:
    """Feature indices of the given heads in a (heads*head_dim) projection."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _compact_attention(spec: ModelSpec, attention: AttentionSpec, heads: Tensor, slicer: _Slicer,
                       block_masks: dict[str, Tensor], paths: dict[int, str]) -> None:
    kv_heads = attention.kept_kv_heads(heads)
    q_rows, kv_rows = head_rows(heads, attention.head_dim), head_rows(kv_heads, attention.head_dim)
    if attention.fused_qkv:
        width_q, width_kv = attention.widths
        fused_rows = torch.cat([q_rows, kv_rows + width_q, kv_rows + width_q + width_kv])
        _slice_block_mask(block_masks, paths, attention.q, out_index=fused_rows)
        slicer.projection(attention.q.module, out_index=fused_rows)
    else:
        for slot, rows in ((attention.q, q_rows), (attention.k, kv_rows), (attention.v, kv_rows)):
            _slice_block_mask(block_masks, paths, slot, out_index=rows)
            slicer.projection(slot.module, out_index=rows)
    _slice_block_mask(block_masks, paths, attention.o, in_index=q_rows)
    slicer.projection(attention.o.module, in_index=q_rows)
    spec.set_heads(attention, len(heads), len(kv_heads))


def _slice_block_mask(block_masks: dict[str, Tensor], paths: dict[int, str], slot: Slot,
                      out_index: Optional[Tensor] = None, in_index: Optional[Tensor] = None) -> None:
    path = paths.get(id(slot.module))
    if path not in block_masks:
        return
    mask = block_masks[path]
    for dim, index in ((0, out_index), (1, in_index)):
        if index is None:
            continue
        blocks = index.reshape(-1, BLOCK)
        if (blocks[:, 0] % BLOCK).any() or (blocks != blocks[:, :1] + torch.arange(BLOCK)).any():
            fail("plan", f"head removal aligned to {BLOCK}-wide blocks in {path} (head size a multiple "
                         f"of {BLOCK})", "a cut through a block")
        mask = mask.index_select(dim, blocks[:, 0] // BLOCK)
    block_masks[path] = mask


def compact(model: nn.Module, plan: PrunePlan, inplace: bool = False) -> nn.Module:
    """A model with the pruned heads, neurons and hidden dimensions removed.

    Args:
        model: a supported transformers model (see ``pyprune.pruning.arch``),
            without masks attached (detach ``StructuredMasks`` first).
        plan: what to keep (``PrunePlan``); components it does not name stay whole.
        inplace: modify `model` instead of a deep copy.

    Returns the compacted model, its config updated (``config.pyprune`` records
    per-layer sizes when one config field cannot describe them).
    """
    if not inplace:
        model = copy.deepcopy(model)
    spec = model_spec(model)
    names = {a.name for a in spec.attentions} | {f.name for f in spec.ffns}
    unknown = (set(plan.heads) | set(plan.neurons)) - names
    if unknown:
        fail("plan", f"component names of this {spec.family} model", sorted(unknown)[:3])
    if plan.hidden is not None and plan.block_masks:
        fail("plan", "block masks or hidden-dimension pruning, not both", "both")
    paths = {id(module): name for name, module in model.named_modules()}
    block_masks = {name: mask.to(torch.bool).cpu() for name, mask in plan.block_masks.items()}
    missing = set(block_masks) - set(paths.values())
    if missing:
        fail("plan.block_masks", "module paths of this model", sorted(missing)[:3])
    original = model.config.to_dict()
    slicer = _Slicer()
    with torch.no_grad():
        for attention in spec.attentions:
            heads = plan.heads.get(attention.name)
            if heads is not None and len(heads) < attention.num_heads:
                _compact_attention(spec, attention, heads.cpu().long(), slicer, block_masks, paths)
        for ffn in spec.ffns:
            neurons = plan.neurons.get(ffn.name)
            if neurons is not None and len(neurons) < ffn.size:
                neurons = neurons.cpu().long()
                for slot in ffn.inputs:
                    slicer.projection(slot.module, out_index=neurons)
                slicer.projection(ffn.output.module, in_index=neurons)
        if plan.hidden is not None and len(plan.hidden) < spec.hidden.size:
            _compact_hidden(model, spec, plan.hidden.cpu().long(), slicer)
        _install_block_sparse(model, block_masks)
    record_sizes(model, original)
    return model


def _compact_hidden(model: nn.Module, spec: ModelSpec, hidden: Tensor, slicer: _Slicer) -> None:
    if spec.unknown_heads:
        raise NotImplementedError(f"model: hidden-dimension pruning does not know the task heads "
                                  f"{spec.unknown_heads}; prune heads and neurons only, or use the base model")
    if spec.hidden.scaled_embeddings:
        raise NotImplementedError("model: hidden-dimension pruning of a model with scale_embedding=True "
                                  "(the scale sqrt(hidden_size) would change); set it False or keep the "
                                  "hidden dimension")
    for slot in spec.hidden.embeddings:
        slicer.embedding(slot.module, hidden)
    for slot in spec.hidden.norms:
        slicer.norm(slot.module, hidden)
    readers, writers = spec.hidden_projections()
    seen: set[int] = set()
    for slot in readers + writers:
        module = slot.module
        if id(module) in seen:
            continue
        seen.add(id(module))
        reads = any(r.module is module for r in readers)
        writes = any(w.module is module for w in writers)
        slicer.projection(module, out_index=hidden if writes else None, in_index=hidden if reads else None)


def _install_block_sparse(model: nn.Module, block_masks: dict[str, Tensor]) -> None:
    from ..nn import BlockSparseLinear
    for path, mask in block_masks.items():
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        linear = getattr(parent, attr)
        if bool(mask.all()):
            continue
        if is_conv1d(linear):
            # GPT-2's Conv1D stays a Conv1D (so the model still loads in plain
            # transformers), its dead blocks zeroed: exact, not faster.
            linear.weight.mul_(expand_mask(mask.to(linear.weight.device)).t().to(linear.weight.dtype))
            continue
        if not isinstance(linear, nn.Linear):
            fail("plan.block_masks", f"nn.Linear or Conv1D modules, {path} is", type(linear).__name__)
        setattr(parent, attr, BlockSparseLinear.from_dense(linear, mask.to(linear.weight.device)))


def count_parameters(model: nn.Module, live: bool = True) -> int:
    """Parameters of `model` (tied ones once); with `live`, dead 32x32 blocks of
    BlockSparseLinear layers are not counted."""
    from ..nn import BlockSparseLinear
    total = sum(p.numel() for p in model.parameters())
    if live:
        for module in model.modules():
            if isinstance(module, BlockSparseLinear):
                total -= int((~module.block_mask).sum()) * BLOCK * BLOCK
    return total
