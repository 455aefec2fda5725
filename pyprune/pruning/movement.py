"""DEER's dynamic block pruning: movement scores, global thresholds, nested sub-networks.

``BlockMovementPruning(model)`` gives

- a score per 32x32 block of every attention projection (Q, K, V, O): the
  projection becomes a ``MovementLinear`` (an nn.Linear with the same
  parameters and state_dict keys) computing with ``W * M``;
- a score per FFN neuron, shared by its row (and bias) in the first matrix
  (and gate) and its column in the second: its activation is multiplied by
  its mask before the down projection.

Mask = 1[sigmoid(score) >= tau] with a straight-through gradient (the
gradient of sigmoid) to the score. There are two pools, attention blocks and
FFN neurons, each with one global threshold per keep ratio: the
parameter-weighted quantile of sigmoid(scores), so the kept units hold
``keep`` of the pool's parameters (to one unit). Thresholds are refreshed
every ``refresh_every`` calls of ``step()``. All keep ratios share one score
ordering, so the sub-networks are nested: 25% is inside 50% inside 75%.

Scores start untied, from the weights' magnitudes (log RMS of each block or
neuron, standardised per projection or FFN layer): pruning acts from the first step, as
magnitude pruning, and training moves the scores. (DEER's published code
starts every score at 0, so nothing is pruned until scores diverge.)
"""
from __future__ import annotations

import contextlib
import math
import random
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import fail
from ..sparse import BLOCK
from .arch import Slot, is_conv1d, model_spec, weight_matrix
from .plan import PrunePlan

DEFAULT_KEEP = (1.0, 0.75, 0.5, 0.25)


def _expand(mask: Tensor) -> Tensor:
    return mask.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)


class MovementLinear(nn.Linear):
    """nn.Linear (or GPT-2 Conv1D) computing with its weight masked in 32x32 blocks by a controller.

    Shares the original layer's ``weight`` and ``bias`` Parameters and keys;
    the scores live in the controller (``BlockMovementPruning``).
    """

    def __init__(self, layer: nn.Module, controller: "BlockMovementPruning", index: int) -> None:
        nn.Module.__init__(self)
        out_features, in_features = weight_matrix(layer).shape
        self.in_features, self.out_features = in_features, out_features
        self.weight = layer.weight
        self.bias = layer.bias
        self.transposed = is_conv1d(layer)
        self.__dict__["original"] = layer
        self.__dict__["controller"] = controller
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        mask = _expand(self.controller.attention_mask(self.index)).to(self.weight.dtype)
        if self.transposed:
            return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight * mask.t()).reshape(
                *x.shape[:-1], self.out_features)
        return F.linear(x, self.weight * mask, self.bias)


class BlockMovementPruning(nn.Module):
    """DEER dynamic block pruning attached to a transformers model.

    Args:
        model: a supported transformers model; attention projections must have
            sizes that are multiples of 32.
        keep_ratios: the sub-network sizes, as fractions of each pool's
            parameters kept (default 1.0, 0.75, 0.5, 0.25).
        refresh_every: ``step()`` calls between threshold refreshes (200).
        attention, ffn: which pools to prune.
    """

    def __init__(self, model: nn.Module, keep_ratios: Sequence[float] = DEFAULT_KEEP, refresh_every: int = 200,
                 attention: bool = True, ffn: bool = True) -> None:
        super().__init__()
        ratios = [float(k) for k in keep_ratios]
        if not ratios or any(not 0 < k <= 1 for k in ratios) or len(set(ratios)) != len(ratios):
            fail("keep_ratios", "distinct fractions in (0, 1]", list(keep_ratios))
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            fail("refresh_every", "a positive number of steps", refresh_every)
        self.keep_ratios = sorted(ratios, reverse=True)
        self.refresh_every = refresh_every
        spec = model_spec(model)
        self.__dict__["model"] = model
        self.attention_paths: list[str] = []
        self.ffn_names: list[str] = []
        self.attention_scores = nn.ParameterList()
        self.ffn_scores = nn.ParameterList()
        self._slots: list[tuple[Slot, nn.Module]] = []
        self._handles: list = []
        self._ffn_weights: list[int] = []
        self._ffn_outputs: list[nn.Module] = []     # a plain list: not registered as submodules
        paths = {id(module): name for name, module in model.named_modules()}
        if attention:
            for attn in spec.attentions:
                for slot in attn.projections():
                    self._add_projection(slot, paths[id(slot.module)])
        if ffn:
            for block in spec.ffns:
                self._add_ffn(block)
        self._standardise(self.attention_scores)
        self._standardise(self.ffn_scores)
        self.register_buffer("thresholds", torch.zeros(len(self.keep_ratios), 2))
        self.keep = 1.0
        self.steps = 0
        self._attach()
        self.refresh_thresholds()

    # ------------------------------------------------------------ construction
    def _add_projection(self, slot: Slot, path: str) -> None:
        matrix = weight_matrix(slot.module)
        rows, cols = matrix.shape
        if rows % BLOCK or cols % BLOCK:
            fail(path, f"a projection with sizes that are multiples of {BLOCK} for block pruning",
                 f"({rows}, {cols})")
        with torch.no_grad():
            blocks = matrix.detach().float().reshape(rows // BLOCK, BLOCK, cols // BLOCK, BLOCK)
            rms = blocks.pow(2).mean(dim=(1, 3)).sqrt()
        self.attention_scores.append(nn.Parameter(torch.log(rms + 1e-12)))
        self.attention_paths.append(path)
        self._slots.append((slot, slot.module))

    def _add_ffn(self, block) -> None:
        # A neuron owns a column of the down projection and a row (and bias) of
        # each input projection: its norm and parameter count span all of them.
        with torch.no_grad():
            down = weight_matrix(block.output.module).detach().float()
            norm = down.pow(2).sum(0)
            parameters = down.shape[0]
            for slot in block.inputs:
                matrix = weight_matrix(slot.module).detach().float()
                norm = norm + matrix.pow(2).sum(1)
                parameters += matrix.shape[1] + (1 if getattr(slot.module, "bias", None) is not None else 0)
        self.ffn_scores.append(nn.Parameter(torch.log(norm.sqrt() + 1e-12)))
        self.ffn_names.append(block.name)
        self._ffn_weights.append(parameters)
        self._ffn_outputs.append(block.output.module)

    @staticmethod
    def _standardise(scores: nn.ParameterList) -> None:
        # Per tensor: projections are initialised at different scales (GPT-2
        # shrinks its output projections), and a pool-wide magnitude ranking
        # would prune those whole before training starts.
        with torch.no_grad():
            for s in scores:
                s.sub_(s.mean()).div_(s.std().clamp_min(1e-6) if s.numel() > 1 else 1.0)

    def _attach(self) -> None:
        for index, (slot, layer) in enumerate(self._slots):
            slot.replace(MovementLinear(layer, self, index))
        for index, module in enumerate(self._ffn_outputs):
            self._handles.append(module.register_forward_pre_hook(self._ffn_hook(index)))

    def _ffn_hook(self, index: int):
        def hook(module, args):
            x = args[0]
            return (x * self.ffn_mask(index).to(x.dtype),) + tuple(args[1:])
        return hook

    def remove(self) -> None:
        """Detach: original projections back, hooks removed (weights keep their values)."""
        for slot, layer in self._slots:
            slot.replace(layer)
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def detached(self) -> Iterator[nn.Module]:
        """The plain model for the duration of the block (for export or compaction)."""
        self.remove()
        try:
            yield self.model
        finally:
            self._attach()

    # ------------------------------------------------------------ thresholds
    def _pool(self, which: int) -> tuple[Tensor, Tensor]:
        """(sigmoid scores, parameters per unit) of pool 0 (attention) or 1 (FFN)."""
        scores = self.attention_scores if which == 0 else self.ffn_scores
        if len(scores) == 0:
            return torch.empty(0), torch.empty(0)
        probs = torch.cat([torch.sigmoid(s.detach().float()).flatten() for s in scores])
        if which == 0:
            weights = torch.full_like(probs, float(BLOCK * BLOCK))
        else:
            weights = torch.cat([torch.full((s.numel(),), float(w), device=probs.device)
                                 for s, w in zip(scores, self._ffn_weights)])
        return probs, weights

    @torch.no_grad()
    def refresh_thresholds(self) -> None:
        """Recompute each keep ratio's threshold in both pools (parameter-weighted quantiles)."""
        for which in (0, 1):
            probs, weights = self._pool(which)
            if probs.numel() == 0:
                continue
            order = torch.argsort(probs, descending=True, stable=True)
            cumulative = torch.cumsum(weights[order], 0)
            total = cumulative[-1]
            for row, keep in enumerate(self.keep_ratios):
                if keep >= 1.0:
                    self.thresholds[row, which] = 0.0
                    continue
                last = int(torch.searchsorted(cumulative, keep * total - 1e-6 * total))
                last = min(last, probs.numel() - 1)
                self.thresholds[row, which] = probs[order[last]]

    def step(self) -> None:
        """Count a training step; refresh thresholds every ``refresh_every`` steps."""
        self.steps += 1
        if self.steps % self.refresh_every == 0:
            self.refresh_thresholds()

    def keep_ratio(self, keep: float) -> float:
        """The trained keep ratio equal to `keep` (ValueError naming the ratios if none is)."""
        for ratio in self.keep_ratios:
            if isinstance(keep, (int, float)) and math.isclose(float(keep), ratio, abs_tol=1e-9):
                return ratio
        fail("keep", f"one of the keep ratios {self.keep_ratios}", keep)

    def set_sparsity(self, keep: float) -> None:
        """Select the nested sub-network that keeps `keep` of each pool."""
        self.keep = self.keep_ratio(keep)

    def sample_sparsity(self, rng: Optional[random.Random] = None) -> float:
        """Pick a keep ratio uniformly at random (one per training step), select it, return it."""
        keep = (rng or random).choice(self.keep_ratios)
        self.set_sparsity(keep)
        return keep

    def _threshold(self, which: int, keep: Optional[float] = None) -> Tensor:
        row = self.keep_ratios.index(self.keep if keep is None else self.keep_ratio(keep))
        return self.thresholds[row, which]

    def _mask(self, score: Tensor, which: int, keep: Optional[float]) -> Tensor:
        probs = torch.sigmoid(score)
        hard = (probs.detach() >= self._threshold(which, keep)).to(probs.dtype)
        if not torch.is_grad_enabled() or not score.requires_grad:
            return hard
        return hard + probs - probs.detach()     # straight-through: forward hard, backward sigmoid'

    def attention_mask(self, index: int, keep: Optional[float] = None) -> Tensor:
        """Block mask (rows/32, cols/32) of attention projection `index` at `keep` (default: current)."""
        return self._mask(self.attention_scores[index], 0, keep)

    def ffn_mask(self, index: int, keep: Optional[float] = None) -> Tensor:
        """Neuron mask (d_ff,) of FFN `index` at `keep` (default: current)."""
        return self._mask(self.ffn_scores[index], 1, keep)

    # ------------------------------------------------------------ training helpers
    def regularizer(self) -> Tensor:
        """Parameter-weighted mean of sigmoid(scores) over both pools (DEER's L1 term; scale by lambda)."""
        terms, total = [], 0.0
        for s in self.attention_scores:
            terms.append(torch.sigmoid(s).sum() * BLOCK * BLOCK)
            total += s.numel() * BLOCK * BLOCK
        for s, w in zip(self.ffn_scores, self._ffn_weights):
            terms.append(torch.sigmoid(s).sum() * w)
            total += s.numel() * w
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum() / total

    def param_groups(self, lr: float, score_lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer groups: the model's parameters, then the scores with their own rate (no decay)."""
        scores = {id(p) for p in self.parameters()}
        model_params = [p for p in self.model.parameters() if id(p) not in scores and p.requires_grad]
        return [{"params": model_params, "lr": lr, "weight_decay": weight_decay},
                {"params": list(self.parameters()), "lr": score_lr, "weight_decay": 0.0}]

    # ------------------------------------------------------------ sub-networks
    @torch.no_grad()
    def kept_fraction(self, keep: Optional[float] = None) -> tuple[float, float]:
        """Fraction of (attention, FFN) pool parameters kept at `keep`."""
        fractions = []
        for which, count in ((0, len(self.attention_scores)), (1, len(self.ffn_scores))):
            if count == 0:
                fractions.append(1.0)
                continue
            probs, weights = self._pool(which)
            kept = probs >= self._threshold(which, keep)
            fractions.append(float(weights[kept].sum() / weights.sum()))
        return fractions[0], fractions[1]

    @torch.no_grad()
    def plan(self, keep: Optional[float] = None) -> PrunePlan:
        """The sub-network at `keep` as a plan for ``compact``.

        FFN neurons are removed; a head is removed when every block of its
        columns in the output projection is pruned (it then contributes
        exactly nothing; with grouped-query attention, only whole key/value
        groups are removed); every other projection keeps its block mask and
        becomes a ``BlockSparseLinear``.
        """
        keep = self.keep if keep is None else self.keep_ratio(keep)
        plan = PrunePlan()
        masks = {path: self.attention_mask(i, keep).bool().cpu() for i, path in enumerate(self.attention_paths)}
        spec = model_spec(self.model)
        for attn in spec.attentions:
            o_path = self._path_of(attn.o)
            if o_path is None:
                continue
            o_mask = masks[o_path]
            if attn.head_dim % BLOCK:
                continue
            per_head = o_mask.reshape(o_mask.shape[0], attn.num_heads, attn.head_dim // BLOCK)
            alive = per_head.any(dim=2).any(dim=0)
            group = attn.group_size
            alive_groups = alive.reshape(attn.num_kv_heads, group).any(dim=1)
            if not alive_groups.any():
                alive_groups[0] = True      # transformers' attention needs one head
            heads = torch.arange(attn.num_heads).reshape(attn.num_kv_heads, group)[alive_groups].flatten()
            if len(heads) < attn.num_heads:
                plan.heads[attn.name] = heads
        for i, name in enumerate(self.ffn_names):
            # May be empty: a zero-width FFN adds only its output bias, as the masked one does.
            plan.neurons[name] = torch.nonzero(self.ffn_mask(i, keep).bool().cpu()).flatten()
        plan.block_masks = masks
        return plan

    def _path_of(self, slot: Slot) -> Optional[str]:
        module = slot.module
        if isinstance(module, MovementLinear):
            return self.attention_paths[module.index]
        return None

    def compact(self, keep: Optional[float] = None) -> nn.Module:
        """A compacted copy of the model at `keep` (FFN sliced, dead heads removed, block-sparse rest)."""
        from .compact import compact
        plan = self.plan(keep)
        with self.detached() as model:
            return compact(model, plan)
