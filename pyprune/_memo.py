"""Values derived from tensors, kept until one of those tensors changes."""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def derived(owner: object, name: str, tensors: Sequence[Tensor], make: Callable[[], T]) -> T:
    """``make()``, kept in ``owner.__dict__[name]`` (outside any state_dict) until one of `tensors` is
    replaced, moved or changed in place (keyed on their storage pointers and version counters). Inference
    tensors (made under ``torch.inference_mode``) keep no version counter: with any of them among `tensors`
    nothing is kept and every call makes the value afresh."""
    if any(t.is_inference() for t in tensors):
        return make()
    key = tuple((t.data_ptr(), t._version) for t in tensors)
    cached = owner.__dict__.get(name)
    if cached is None or cached[0] != key:
        cached = owner.__dict__[name] = (key, make())
    return cached[1]


def unless_recorded(owner: object, name: str, tensors: Sequence[Tensor], make: Callable[[], T]) -> T:
    """``make()`` afresh where autograd records it (a grad-requiring input under grad mode), so the
    backward reaches `tensors`; otherwise ``derived``: kept until one of them changes."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return make()
    return derived(owner, name, tensors, make)
