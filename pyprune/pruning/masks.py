"""SIMPLE's learnable structured masks, attached to a transformers model.

``StructuredMasks(model)`` puts real-valued masks (initialised to 1) on

- every attention head: the head's output is multiplied by its mask before
  the output projection;
- every FFN neuron: its activation is multiplied by its mask before the down
  projection (the same as scaling the neuron's row and bias in the first
  matrix and its column in the second);
- the hidden dimension, one mask shared by all layers: the outputs of the
  embeddings, of every attention and FFN block and of every normalisation are
  multiplied by it. Normalisations become ``MaskedNorm``, which takes its
  statistics over the kept hidden dimensions only (``hidden_keep``), exactly
  what the compacted model's smaller normalisation computes.

The model's own parameters, their names and its state_dict are untouched: the
masks live in this module (save it separately) and act through hooks and
swapped-in normalisations that ``remove()`` takes out again.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .._validation import fail
from .arch import model_spec
from .plan import Importance, PrunePlan

COMPONENTS = ("heads", "neurons", "hidden")


class MaskedNorm(nn.Module):
    """LayerNorm or RMSNorm over the kept hidden dimensions, output times the hidden mask.

    Holds the original norm's own ``weight`` (and ``bias``) Parameters, so the
    parameters and their names stay those of the model.
    """

    def __init__(self, norm: nn.Module, masks: "StructuredMasks") -> None:
        super().__init__()
        self.weight = norm.weight
        self.bias = getattr(norm, "bias", None)
        self.rms = not isinstance(norm, nn.LayerNorm)
        eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
        if eps is None:
            fail("norm", "a LayerNorm or RMSNorm with eps or variance_epsilon", type(norm).__name__)
        self.eps = float(eps)
        self.__dict__["original"] = norm     # not a submodule: no duplicate parameters
        self.__dict__["masks"] = masks

    def forward(self, x: Tensor) -> Tensor:
        keep = self.masks.hidden_keep.to(torch.float32)
        count = keep.sum()
        dtype = x.dtype
        x = x.to(torch.float32)
        if self.rms:
            variance = (x * x * keep).sum(-1, keepdim=True) / count
            y = (x * torch.rsqrt(variance + self.eps)).to(dtype) * self.weight
        else:
            mean = (x * keep).sum(-1, keepdim=True) / count
            centred = (x - mean) * keep
            variance = (centred * centred).sum(-1, keepdim=True) / count
            y = (centred * torch.rsqrt(variance + self.eps)).to(dtype) * self.weight
            if self.bias is not None:
                y = y + self.bias
        return y * self.masks.hidden_factor().to(y.dtype)


class StructuredMasks(nn.Module):
    """Learnable masks on heads, FFN neurons and the shared hidden dimension.

    Args:
        model: a supported transformers model (BERT/RoBERTa/XLM-R, GPT-2, BART, LLaMA).
        components: which of ``("heads", "neurons", "hidden")`` to mask.

    Use as a context manager or call ``remove()`` to detach. Parameters:
    ``head_masks[i]`` (num_heads of attention i), ``neuron_masks[i]`` (d_ff of
    FFN i), ``hidden_mask`` (d); ``names`` maps them to the spec names that
    plans use.
    """

    def __init__(self, model: nn.Module, components: tuple[str, ...] = COMPONENTS) -> None:
        super().__init__()
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            fail("components", f"a subset of {COMPONENTS}", sorted(unknown))
        spec = model_spec(model)
        if "hidden" in components and spec.unknown_heads:
            raise NotImplementedError(f"model: hidden-dimension masks need to know every task head; "
                                      f"unknown: {spec.unknown_heads}")
        self.components = tuple(components)
        self.attention_names = [a.name for a in spec.attentions]
        self.ffn_names = [f.name for f in spec.ffns]
        device = next(model.parameters()).device
        ones = lambda n: nn.Parameter(torch.ones(n, device=device))  # noqa: E731
        self.head_masks = nn.ParameterList([ones(a.num_heads) for a in spec.attentions]
                                           if "heads" in components else [])
        self.neuron_masks = nn.ParameterList([ones(f.size) for f in spec.ffns] if "neurons" in components else [])
        self.hidden_mask = ones(spec.hidden.size) if "hidden" in components else None
        self.register_buffer("hidden_keep", torch.ones(spec.hidden.size, dtype=torch.bool, device=device))
        self.__dict__["model"] = model
        self._handles: list = []
        self._swapped: list = []
        self._attach(spec)

    # ------------------------------------------------------------ hooks
    def hidden_factor(self) -> Tensor:
        keep = self.hidden_keep.to(torch.float32)
        return keep if self.hidden_mask is None else self.hidden_mask * keep

    def _attach(self, spec) -> None:
        for i, attention in enumerate(spec.attentions):
            if self.head_masks:
                self._handles.append(attention.o.module.register_forward_pre_hook(
                    _scale_input(lambda i=i: self.head_masks[i], attention.head_dim)))
        for i, ffn in enumerate(spec.ffns):
            if self.neuron_masks:
                self._handles.append(ffn.output.module.register_forward_pre_hook(
                    _scale_input(lambda i=i: self.neuron_masks[i], 1)))
        if self.hidden_mask is None:
            return
        writers = [s.module for s in spec.hidden.embeddings] + [a.o.module for a in spec.attentions]
        writers += [f.output.module for f in spec.ffns]
        for module in {id(m): m for m in writers}.values():
            self._handles.append(module.register_forward_hook(_scale_output(self.hidden_factor)))
        for slot in spec.hidden.norms:
            norm = slot.module
            slot.replace(MaskedNorm(norm, self))
            self._swapped.append((slot, norm))

    def remove(self) -> None:
        """Detach from the model: hooks removed, original normalisations back."""
        for handle in self._handles:
            handle.remove()
        for slot, norm in self._swapped:
            slot.replace(norm)
        self._handles, self._swapped = [], []

    def __enter__(self) -> "StructuredMasks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------ learning
    def l1_penalty(self, heads: float = 1.0, neurons: float = 1.0, hidden: float = 1.0) -> Tensor:
        """sum over components of coefficient x ||mask||_1 (SIMPLE eq. 5, one coefficient per component)."""
        device = self.hidden_keep.device
        total = torch.zeros((), device=device)
        if self.head_masks:
            total = total + heads * torch.cat([m.abs() for m in self.head_masks]).sum()
        if self.neuron_masks:
            total = total + neurons * torch.cat([m.abs() for m in self.neuron_masks]).sum()
        if self.hidden_mask is not None:
            total = total + hidden * self.hidden_mask.abs().sum()
        return total

    def importance(self) -> Importance:
        """|mask| per component: the ranking extraction uses."""
        return Importance(
            {n: m.detach().abs() for n, m in zip(self.attention_names, self.head_masks)},
            {n: m.detach().abs() for n, m in zip(self.ffn_names, self.neuron_masks)},
            None if self.hidden_mask is None else self.hidden_mask.detach().abs())

    # ------------------------------------------------------------ fixed sub-networks
    def apply_plan(self, plan: PrunePlan) -> None:
        """Binarise: 1 on what `plan` keeps, 0 elsewhere, and freeze the masks.

        The masked model then computes what ``compact(model, plan)`` computes.
        """
        with torch.no_grad():
            for name, mask in zip(self.attention_names, self.head_masks):
                _binarise(mask, plan.heads.get(name))
            for name, mask in zip(self.ffn_names, self.neuron_masks):
                _binarise(mask, plan.neurons.get(name))
            if self.hidden_mask is not None:
                _binarise(self.hidden_mask, plan.hidden)
                self.hidden_keep.copy_(self.hidden_mask.bool())
        for mask in self.parameters():
            mask.requires_grad_(False)


def _binarise(mask: nn.Parameter, keep: Optional[Tensor]) -> None:
    if keep is None:
        mask.fill_(1)
        return
    mask.zero_()
    mask[keep.to(mask.device)] = 1


def _scale_input(get_mask, repeat: int):
    def hook(module, args):
        x = args[0]
        mask = get_mask()
        if repeat > 1:
            mask = mask.repeat_interleave(repeat)
        return (x * mask.to(x.dtype),) + tuple(args[1:])
    return hook


def _scale_output(get_factor):
    def hook(module, args, output):
        return output * get_factor().to(output.dtype)
    return hook
