"""Distillation losses for fine-tuning pruned models (SIMPLE section 3.3), and their schedule.

- ``logits_distillation``: cross-entropy of the student against the
  teacher's softened distribution (the mask-learning loss, eq. 4);
- ``causal_distillation``: MSE of keys and values of the kept heads, student
  against teacher (eq. 7), recorded with ``KeyValueRecorder``;
- ``hidden_distillation``: MSE of hidden states on the kept hidden dimensions.

The student may be the masked model (all heads and dimensions present) or
the compacted one (only the kept ones); both are handled.

``ProgressiveSchedule`` gives the kept fraction per fine-tuning step: from 1
down to 1/ratio along a cubic curve (fast at first, gentle at the end), then
flat.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import fail
from .arch import model_spec
from .plan import PrunePlan, check_ratio


def _token_mean(values: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
    """Mean over tokens of a (batch, tokens) tensor, padding excluded."""
    if attention_mask is None:
        return values.mean()
    weights = attention_mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1)


def logits_distillation(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
                        attention_mask: Optional[Tensor] = None) -> Tensor:
    """-sum softmax(t/T) log softmax(s/T) x T^2, averaged over (unpadded) tokens.

    Shapes: logits (batch, tokens, vocab); attention_mask (batch, tokens) of 0/1.
    """
    if student_logits.shape != teacher_logits.shape:
        fail("teacher_logits", f"the student's shape {tuple(student_logits.shape)}", tuple(teacher_logits.shape))
    if temperature <= 0:
        fail("temperature", "a positive number", temperature)
    target = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_token = -(target * log_probs).sum(-1) * temperature ** 2
    return _token_mean(per_token, attention_mask)


class KeyValueRecorder:
    """Records each attention block's keys and values, (batch, tokens, kv_heads, head_dim).

    Use as a context manager around a forward pass; ``records[name] = (k, v)``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.spec = model_spec(model)
        self.records: dict[str, tuple[Tensor, Tensor]] = {}
        self._handles = []

    def __enter__(self) -> "KeyValueRecorder":
        self.records = {}
        for attention in self.spec.attentions:
            if attention.fused_qkv:
                self._handles.append(attention.q.module.register_forward_hook(self._fused(attention)))
            else:
                pending = {}
                self._handles.append(attention.k.module.register_forward_hook(self._part(attention, "k", pending)))
                self._handles.append(attention.v.module.register_forward_hook(self._part(attention, "v", pending)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @staticmethod
    def _heads(x: Tensor, head_dim: int) -> Tensor:
        return x.reshape(*x.shape[:-1], -1, head_dim)

    def _fused(self, attention):
        width_q, width_kv = attention.widths

        def hook(module, args, output):
            k = output[..., width_q:width_q + width_kv]
            v = output[..., width_q + width_kv:]
            self.records[attention.name] = (self._heads(k, attention.head_dim), self._heads(v, attention.head_dim))
        return hook

    def _part(self, attention, which: str, pending: dict):
        def hook(module, args, output):
            pending[which] = self._heads(output, attention.head_dim)
            if len(pending) == 2:
                self.records[attention.name] = (pending.pop("k"), pending.pop("v"))
        return hook


def _squared_error_on(student: Tensor, teacher: Tensor, kept: Optional[Tensor], dim: int) -> Tensor:
    """(student - teacher)^2 on the kept entries of `dim`; a student that already lacks the
    pruned entries (compacted) is compared as it is."""
    teacher = teacher.detach()
    if kept is not None:
        index = kept.to(teacher.device)
        teacher = teacher.index_select(dim, index)
        if student.shape[dim] != teacher.shape[dim]:
            student = student.index_select(dim, index)
    return (student.float() - teacher.float()).pow(2)


def causal_distillation(student: dict[str, tuple[Tensor, Tensor]], teacher: dict[str, tuple[Tensor, Tensor]],
                        teacher_model: nn.Module, plan: Optional[PrunePlan] = None,
                        attention_mask: Optional[Tensor] = None) -> Tensor:
    """Sum over attention blocks of MSE(K) + MSE(V) on the kept (key/value) heads.

    `student` and `teacher` are ``KeyValueRecorder.records``; `teacher_model`
    gives the head layout; `plan` says which heads the student keeps (None:
    all). A student that already lacks the pruned heads (compacted) is matched
    to the teacher's kept heads.
    """
    spec = model_spec(teacher_model)
    total = None
    for attention in spec.attentions:
        if attention.name not in teacher or attention.name not in student:
            fail("student", f"keys and values for {attention.name}", "none recorded")
        heads = None if plan is None else plan.heads.get(attention.name)
        kept = None if heads is None else attention.kept_kv_heads(heads)
        term = 0.0
        for s, t in zip(student[attention.name], teacher[attention.name]):
            term = term + _token_mean(_squared_error_on(s, t, kept, -2).mean(dim=(-2, -1)), attention_mask)
        total = term if total is None else total + term
    return total


def hidden_distillation(student_hidden: tuple[Tensor, ...], teacher_hidden: tuple[Tensor, ...],
                        hidden_index: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None) -> Tensor:
    """Mean over layers of MSE of hidden states on the kept hidden dimensions.

    Inputs are the ``hidden_states`` tuples of transformers outputs (same
    number of entries); `hidden_index` lists the kept dimensions (None: all).
    """
    if len(student_hidden) != len(teacher_hidden):
        fail("student_hidden", f"{len(teacher_hidden)} hidden states (the teacher's)", len(student_hidden))
    terms = []
    for s, t in zip(student_hidden, teacher_hidden):
        terms.append(_token_mean(_squared_error_on(s, t, hidden_index, -1).mean(-1), attention_mask))
    return torch.stack(terms).mean()


class ProgressiveSchedule:
    """Kept fraction per step: 1 -> 1/ratio over ``ramp`` of the steps (cubic), then 1/ratio.

    Args:
        ratio: the final compression ratio (> 1).
        steps: total fine-tuning steps.
        ramp: fraction of the steps spent getting there (0 < ramp <= 1).
    """

    def __init__(self, ratio: float, steps: int, ramp: float = 0.5) -> None:
        self.final = 1.0 / check_ratio(ratio)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            fail("steps", "a positive number of steps", steps)
        if not 0 < ramp <= 1:
            fail("ramp", "a fraction in (0, 1]", ramp)
        self.steps, self.ramp_steps = steps, max(1, round(ramp * steps))

    def keep(self, step: int) -> float:
        progress = min(1.0, max(0, step) / self.ramp_steps)
        return self.final + (1.0 - self.final) * (1.0 - progress) ** 3
