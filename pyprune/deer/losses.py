"""DEER's training objective (Algorithm 1): CTC with glancing, the three editor losses, the regulariser.

``DeerObjective`` wraps the model and its pruning controller in one module
whose ``forward(sources, targets)`` returns the losses, so that data-parallel
training (``torch.nn.parallel.DistributedDataParallel``) sees every
parameter, the movement scores included.

Inputs are token ids: ``sources`` (B, S) as [bos] x [eos], ``targets`` (B, T)
as [bos] y [eos], both padded with the pad id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import (apply_del_words, ctc_best_alignment, ctc_greedy_draft, ctc_loss_from_logits, get_del_targets,
                   get_ins_targets)
from .model import DeerModel


@dataclass
class LossConfig:
    ctc_smoothing: float = 0.1
    insertion_smoothing: float = 0.1
    placeholder_smoothing: float = 0.01
    regularizer: float = 10.0          # lambda of eq. 7 (on the parameter-weighted mean of sigmoid(scores))
    draft_prob: float = 0.0            # chance per step of training the editor on the model's own CTC drafts


def content(targets: Tensor, model: DeerModel) -> tuple[Tensor, Tensor]:
    """Targets without [bos]/[eos], as output classes left-packed, and their lengths."""
    c = model.config
    inner = targets.ne(c.pad_id) & targets.ne(c.bos_id) & targets.ne(c.eos_id)
    lengths = inner.sum(1)
    order = torch.argsort((~inner).to(torch.int8), dim=1, stable=True)
    packed = targets.gather(1, order)[:, :max(int(lengths.max()), 1)]
    keep = torch.arange(packed.shape[1], device=targets.device)[None] < lengths[:, None]
    return torch.where(keep, model.to_output(packed), 0), lengths


def ctc_draft_tokens(model: DeerModel, logits: Tensor, n_slots: Tensor, blank_penalty: float = 0.0) -> Tensor:
    """The greedy CTC draft of `logits` as [bos] tokens [eos] rows, with `blank_penalty` subtracted from the
    blank's logit first (a positive penalty gives longer drafts); `logits` are left as they are
    (``ctc_greedy_draft``: one op from the logits to the framed rows)."""
    c = model.config
    return ctc_greedy_draft(logits, n_slots, model.out_to_token, bos=c.bos_id, eos=c.eos_id, pad=c.pad_id,
                            blank=0, blank_penalty=blank_penalty, max_length=model.max_positions,
                            batch_first=True)


# Blank penalties ``length_matching_penalty`` chooses from.
PENALTY_GRID = torch.arange(-4.0, 8.001, 0.125)


@torch.no_grad()
def length_matching_penalty(logits: Tensor, n_slots: Tensor, label_lengths: Tensor) -> Tensor:
    """The blank penalty (of ``PENALTY_GRID``; a 0-dim tensor on the logits' device) whose greedy drafts of
    `logits` are, summed over the batch, closest in length to the references (`label_lengths`); the smallest
    such penalty on a tie.

    A frame is emitted under penalty p when the blank's logit minus p falls below the best other class's, and
    counts unless it repeats the class of an emitted frame just before it (CTC's collapse), so every penalty
    of the grid is scored from one pass over the logits.
    """
    best, label = logits[..., 1:].max(-1)
    margin = logits[..., 0] - best                                            # (B, T)
    valid = torch.arange(logits.shape[1], device=logits.device)[None] < n_slots[:, None]
    grid = PENALTY_GRID.to(logits.device)
    emitted = (margin[None] <= grid[:, None, None]) & valid                  # (G, B, T)
    repeat = torch.zeros_like(emitted)
    repeat[..., 1:] = emitted[..., :-1] & (label[:, 1:] == label[:, :-1])
    lengths = (emitted & ~repeat).sum((1, 2))
    gap = (lengths - label_lengths.sum()).abs()
    return grid[torch.argmin(gap)]                          # argmin returns the first (smallest) penalty on a tie


def random_deletion(targets: Tensor, model: DeerModel, generator: Optional[torch.Generator] = None) -> Tensor:
    """Delete each content token with a per-row probability drawn from U(0, 1) (bos/eos kept), left-packed."""
    c = model.config
    rate = torch.rand(targets.shape[0], 1, generator=generator, device=targets.device)
    drop = torch.rand(targets.shape, generator=generator, device=targets.device) < rate
    out, _, _ = apply_del_words(targets, None, None, drop.long(), c.pad_id, c.bos_id, c.eos_id)
    return out[:, :int(out.ne(c.pad_id).sum(1).max())]


def glance(model: DeerModel, logits: Tensor, slots: Tensor, n_slots: Tensor, labels: Tensor, label_lengths: Tensor,
           ratio: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """GLAT's CTC variant: reveal ratio x (frames the model gets wrong on the best alignment) slots.

    The oracle is the Viterbi alignment of the reference under the model's own
    scores (``ctc_best_alignment``); the revealed slots take the aligned
    token's id (frames aligned to the blank keep their slot token).
    """
    if ratio <= 0:
        return slots
    alignment, best = ctc_best_alignment(logits.detach(), labels, n_slots, label_lengths, blank=0, batch_first=True)
    valid = torch.arange(slots.shape[1], device=slots.device)[None] < n_slots[:, None]
    wrong = (logits.argmax(-1) != alignment) & valid
    count = torch.ceil(wrong.sum(1).float() * ratio).long()
    count = torch.where(torch.isfinite(best), count, 0)           # unalignable rows reveal nothing
    candidates = valid & alignment.ne(0)
    noise = torch.rand(slots.shape, generator=generator, device=slots.device).masked_fill(~candidates, 2.0)
    rank = noise.argsort(1).argsort(1)
    reveal = candidates & (rank < count[:, None])
    return torch.where(reveal, model.to_tokens(alignment), slots)


class DeerObjective(nn.Module):
    """The DEER model, its pruning controller (optional) and the joint loss of Algorithm 1."""

    def __init__(self, model: DeerModel, pruning: Optional[nn.Module] = None,
                 config: Optional[LossConfig] = None) -> None:
        super().__init__()
        self.model = model
        self.pruning = pruning
        self.config = config or LossConfig()

    def forward(self, sources: Tensor, targets: Tensor, glance_ratio: float = 0.0,
                generator: Optional[torch.Generator] = None, blank_penalty: float = 0.0) -> dict[str, Tensor]:
        """The losses ("loss": their sum) and "length_penalty": the blank penalty that would have made this
        batch's drafts as long as its references (``length_matching_penalty``; not a loss). The editor's
        drafts, when used, are decoded with `blank_penalty`, as at test time."""
        model, c, cfg = self.model, self.model.config, self.config
        cache = model.encode_source(sources)
        source_lengths = sources.ne(c.pad_id).sum(1)
        n_slots = model.num_slots(source_lengths)
        slots = model.ctc_slots(sources, source_lengths)
        labels, label_lengths = content(targets, model)
        matrix = model.output_matrix()          # one gather (and one scatter in backward) per step
        plain = None                            # the logits of the slots as at test time (nothing revealed)
        if glance_ratio > 0:
            with torch.no_grad():
                plain = model.vocab_logits(model.decode_target(cache, slots), matrix.detach())
            slots = glance(model, plain, slots, n_slots, labels, label_lengths, glance_ratio, generator)
        logits = model.vocab_logits(model.decode_target(cache, slots), matrix)
        if plain is None:
            plain = logits
        losses = {"ctc": ctc_loss_from_logits(logits, labels, n_slots, label_lengths, blank=0, zero_infinity=True,
                                              label_smoothing=cfg.ctc_smoothing, batch_first=True)}

        use_drafts = cfg.draft_prob > 0 and float(torch.rand((), generator=generator)) < cfg.draft_prob
        if use_drafts:
            # The editor's input at test time: the CTC draft, from the slots with nothing revealed. Deletion
            # learns on it directly; insertion on the draft after the oracle deletions.
            drafted = ctc_draft_tokens(model, plain.detach(), n_slots, blank_penalty)
            deletion_input = drafted
            wrong = self._deletion_labels(drafted, targets)
            y_del, _, _ = apply_del_words(drafted, None, None, wrong, c.pad_id, c.bos_id, c.eos_id)
            y_del = y_del[:, :int(y_del.ne(c.pad_id).sum(1).max())]
        else:
            y_del = random_deletion(targets, model, generator)
        masked, masked_tokens, insert_counts = get_ins_targets(y_del, targets, c.pad_id, c.mask_id)

        h = model.decode_target(cache, y_del)
        gaps = y_del[:, 1:].ne(c.pad_id)
        plh = model.placeholder_logits(h)[gaps]
        losses["placeholder"] = F.cross_entropy(plh, insert_counts[gaps].clamp(max=c.max_placeholders - 1),
                                                label_smoothing=cfg.placeholder_smoothing)

        h = model.decode_target(cache, masked_tokens, rows=masked)       # the placeholders' states only
        words = model.vocab_logits(h, matrix)[..., 1:]         # no blank among insertions
        if bool(masked.any()):
            losses["insertion"] = F.cross_entropy(words, model.to_output(targets[masked]) - 1,
                                                  label_smoothing=cfg.insertion_smoothing)
        else:
            losses["insertion"] = words.sum() * 0.0
        if not use_drafts:
            deletion_input = masked_tokens.clone()
            deletion_input[masked] = model.to_tokens(words.detach().argmax(-1) + 1)
        h = model.decode_target(cache, deletion_input)
        labels_del = self._deletion_labels(deletion_input, targets)
        editable = deletion_input.ne(c.pad_id) & deletion_input.ne(c.bos_id) & deletion_input.ne(c.eos_id)
        losses["deletion"] = F.cross_entropy(model.deletion_logits(h)[editable], labels_del[editable])
        if self.pruning is not None and cfg.regularizer:
            losses["regularizer"] = cfg.regularizer * self.pruning.regularizer()
        losses["loss"] = sum(losses.values())
        losses["length_penalty"] = length_matching_penalty(plain.detach(), n_slots, label_lengths)
        return losses

    def _deletion_labels(self, drafts: Tensor, targets: Tensor) -> Tensor:
        """(B, drafts width) 1 where the draft token is not on the edit path to the reference."""
        labels = get_del_targets(drafts, targets, self.model.config.pad_id)
        width = drafts.shape[1]
        if labels.shape[1] < width:
            labels = F.pad(labels, (0, width - labels.shape[1]))
        return labels[:, :width]


def glance_ratio(step: int, total: int, start: float = 0.5, end: float = 0.2) -> float:
    """Glancing ratio annealed linearly from `start` to `end` over training."""
    if total <= 1:
        return end
    return start + (end - start) * min(1.0, step / (total - 1))
