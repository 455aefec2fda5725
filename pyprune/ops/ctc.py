"""Batched CTC: loss (drop-in for torch.nn.functional.ctc_loss), fused loss
from logits with label smoothing, greedy decoding (to labels, or straight to
framed token rows) and best (Viterbi) alignment.

Public functions validate and normalise their inputs, then call the
``pyprune::ctc_*`` ops, which route to the C++ (CPU) or CUDA kernels, or to the
pure-PyTorch references in ``pyprune.ops.ctc_reference``.

Value checks (lengths, labels) run when the values are on the host (Python
lists or CPU tensors). Device-resident lengths are not read back, so no host
synchronisation happens; the kernels still never read out of bounds and
report NaN for an invalid sample.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from pyprune._validation import fail, finite_number

from . import ctc_reference
from ._registry import define

Lengths = Union[Tensor, Sequence[int]]
_REDUCTIONS = ("none", "mean", "sum")

# --------------------------------------------------------------------------
# Input normalisation and validation


class _CTCBatch(NamedTuple):
    targets: Tensor            # flat int64 labels on the scores' device
    target_offsets: Tensor     # (N,) start of each sample's labels
    input_lengths: Tensor      # (N,) int64
    target_lengths: Tensor     # (N,) int64
    max_target_length: int     # S for padded targets, M for concatenated



def _as_lengths(name: str, lengths: Lengths, batch_size: int, device: torch.device,
                unbatched: bool) -> Tensor:
    if isinstance(lengths, Tensor):
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            fail(name, "an integer tensor", f"dtype {lengths.dtype}")
        tensor = lengths
    else:
        try:
            tensor = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError):
            fail(name, "a tensor or a sequence of ints", type(lengths).__name__)
        if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
            fail(name, "integers", f"values of dtype {tensor.dtype}")
    if unbatched and tensor.dim() == 0:
        tensor = tensor.reshape(1)
    if tensor.dim() != 1 or tensor.numel() != batch_size:
        fail(name, f"shape ({batch_size},), one length per batch element", f"shape {tuple(tensor.shape)}")
    if tensor.device.type != "cpu" and tensor.device != device:
        fail(name, f"a tensor on {device} or on the CPU", f"a tensor on {tensor.device}")
    return tensor


def _host_values(tensor: Tensor):
    """The values when they can be read without a device synchronisation."""
    if tensor.device.type == "cpu" and not torch.compiler.is_compiling():
        return tensor
    return None


def _check_scores(name: str, scores: Tensor, allow_unbatched: bool) -> None:
    if not isinstance(scores, Tensor):
        fail(name, "a tensor", type(scores).__name__)
    if not scores.dtype.is_floating_point:
        fail(name, "a floating-point tensor (float16, bfloat16, float32 or float64)", f"dtype {scores.dtype}")
    dims = "(T, N, C) or (T, C)" if allow_unbatched else "(T, N, C)"
    if scores.dim() != 3 and not (allow_unbatched and scores.dim() == 2):
        fail(name, f"shape {dims}", f"shape {tuple(scores.shape)}")
    if scores.shape[-1] == 0:
        fail(name, "at least one class", f"shape {tuple(scores.shape)}")


def _check_blank(blank: int, num_classes: int) -> None:
    if isinstance(blank, bool) or not isinstance(blank, int):
        fail("blank", "an int", type(blank).__name__)
    if not 0 <= blank < num_classes:
        fail("blank", f"a class index in [0, {num_classes})", blank)


def _prepare(scores: Tensor, targets: Tensor, input_lengths: Lengths, target_lengths: Lengths,
             blank: int, unbatched: bool, scores_name: str) -> _CTCBatch:
    T, N, C = scores.shape
    device = scores.device
    _check_blank(blank, C)
    if not isinstance(targets, Tensor):
        fail("targets", "a tensor", type(targets).__name__)
    if targets.dtype not in (torch.int32, torch.int64):
        fail("targets", "an int32 or int64 tensor", f"dtype {targets.dtype}")
    if targets.device != device:
        fail("targets", f"a tensor on {device} like {scores_name}", f"a tensor on {targets.device}")
    in_lengths = _as_lengths("input_lengths", input_lengths, N, device, unbatched)
    tgt_lengths = _as_lengths("target_lengths", target_lengths, N, device, unbatched)

    if unbatched:
        if targets.dim() != 1:
            fail("targets", "shape (S,) for an unbatched (T, C) input", f"shape {tuple(targets.shape)}")
        targets = targets.reshape(1, -1)
    if targets.dim() == 2:
        if targets.shape[0] != N:
            fail("targets", f"shape ({N}, S): the batch size of {scores_name} is {N}",
                  f"shape {tuple(targets.shape)}")
        padded_length = targets.shape[1]
        offsets = torch.arange(N, device=device, dtype=torch.long) * padded_length
        max_target_length = padded_length
    elif targets.dim() == 1:
        tgt_on_device = tgt_lengths.to(device=device, dtype=torch.long)
        offsets = torch.cumsum(tgt_on_device, 0) - tgt_on_device
        max_target_length = targets.numel()
    else:
        fail("targets", "shape (N, S) padded or (sum(target_lengths),) concatenated",
              f"shape {tuple(targets.shape)}")

    in_host = _host_values(in_lengths)
    if in_host is not None and N > 0:
        low, high = int(in_host.min()), int(in_host.max())
        if low < 0 or high > T:
            fail("input_lengths", f"values in [0, {T}] (T of {scores_name})", f"min {low}, max {high}")
    tgt_host = _host_values(tgt_lengths)
    if tgt_host is not None and N > 0:
        low, high = int(tgt_host.min()), int(tgt_host.max())
        if low < 0:
            fail("target_lengths", "non-negative values", f"min {low}")
        if targets.dim() == 2 and high > max_target_length:
            fail("target_lengths", f"values <= {max_target_length}, the padded target width", f"max {high}")
        if targets.dim() == 1 and int(tgt_host.sum()) > targets.numel():
            fail("target_lengths", f"a sum <= {targets.numel()}, the number of concatenated targets",
                  f"sum {int(tgt_host.sum())}")
    flat = targets.reshape(-1).to(torch.long)
    if tgt_host is not None and _host_values(flat) is not None and N > 0:
        positions = torch.arange(max(int(tgt_host.max()), 0))
        starts = offsets.cpu()
        used = flat[(starts[:, None] + positions[None])[positions[None] < tgt_host[:, None]]]
        if used.numel():
            if int(used.min()) < 0 or int(used.max()) >= C:
                fail("targets", f"labels in [0, {C}) (C of {scores_name})",
                      f"min {int(used.min())}, max {int(used.max())}")
            if bool((used == blank).any()):
                fail("targets", f"no blank label ({blank}) within the target lengths",
                      "a target containing the blank")
    return _CTCBatch(flat.contiguous(), offsets.contiguous(),
                     in_lengths.to(device=device, dtype=torch.long).contiguous(),
                     tgt_lengths.to(device=device, dtype=torch.long).contiguous(), max_target_length)


def _compute_dtype(x: Tensor, keep_bfloat16: bool = False) -> Tensor:
    """float16/bfloat16 are computed in float32 (bfloat16 kept as it is with `keep_bfloat16`, for a kernel that
    reads it); the class dim made contiguous."""
    if x.dtype is torch.float16 or (x.dtype is torch.bfloat16 and not keep_bfloat16):
        x = x.float()
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x


def _reduce(per_sample: Tensor, target_lengths: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return (per_sample / target_lengths.clamp(min=1).to(per_sample.dtype)).mean()


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        fail("reduction", f"one of {_REDUCTIONS}", repr(reduction))


# --------------------------------------------------------------------------
# Op definitions

_BATCH_ARGS = ("Tensor targets, Tensor target_offsets, Tensor input_lengths, "
               "Tensor target_lengths, int max_target_length, int blank")


def _loss_forward(k, log_probs, targets, offsets, in_len, tgt_len, max_len, blank, zero_infinity):
    return k.ctc_forward(log_probs, None, targets, offsets, in_len, tgt_len, max_len, blank,
                         zero_infinity)


def _loss_backward(k, grad_nll, log_probs, targets, offsets, in_len, tgt_len, nll, log_alpha,
                   max_len, blank, zero_infinity):
    return k.ctc_backward(grad_nll, None, log_probs, None, targets, offsets, in_len, tgt_len, nll,
                          log_alpha, max_len, blank, zero_infinity)


def _logits_forward(k, logits, targets, offsets, in_len, tgt_len, max_len, blank, zero_infinity):
    lse, neg_mean = k.ctc_logsumexp_rows(logits)
    nll, log_alpha = k.ctc_forward(logits, lse, targets, offsets, in_len, tgt_len, max_len, blank,
                                   zero_infinity)
    frames = torch.arange(logits.shape[0], device=logits.device)[:, None]
    valid_frames = frames < in_len[None]
    smooth = torch.where(valid_frames, neg_mean, 0.0).sum(0) / in_len.clamp(min=1).to(logits.dtype)
    return nll, smooth, log_alpha, lse


def _logits_backward(k, grad_nll, grad_smooth, logits, targets, offsets, in_len, tgt_len, nll,
                     log_alpha, lse, max_len, blank, zero_infinity):
    return k.ctc_backward(grad_nll, grad_smooth, logits, lse, targets, offsets, in_len, tgt_len,
                          nll, log_alpha, max_len, blank, zero_infinity)


def _best_alignment(k, scores, targets, offsets, in_len, tgt_len, max_len, blank):
    return k.ctc_best_alignment(scores, targets, offsets, in_len, tgt_len, max_len, blank)


def _greedy_decode(k, scores, in_len, blank):
    return k.ctc_greedy_decode(scores, in_len, blank)


def _greedy_draft(k, scores, in_len, class_map, blank, blank_penalty, bos, eos, pad, max_length):
    return k.ctc_greedy_draft(scores, in_len, class_map, blank, blank_penalty, bos, eos, pad, max_length)


define("ctc_loss_forward",
       f"(Tensor log_probs, {_BATCH_ARGS}, bool zero_infinity) -> (Tensor, Tensor)",
       _loss_forward, ctc_reference)
define("ctc_loss_backward",
       "(Tensor grad_nll, Tensor log_probs, Tensor targets, Tensor target_offsets, "
       "Tensor input_lengths, Tensor target_lengths, Tensor nll, Tensor log_alpha, "
       "int max_target_length, int blank, bool zero_infinity) -> Tensor",
       _loss_backward, ctc_reference)
define("ctc_logits_forward",
       f"(Tensor logits, {_BATCH_ARGS}, bool zero_infinity) -> (Tensor, Tensor, Tensor, Tensor)",
       _logits_forward, ctc_reference)
define("ctc_logits_backward",
       "(Tensor grad_nll, Tensor grad_smooth, Tensor logits, Tensor targets, "
       "Tensor target_offsets, Tensor input_lengths, Tensor target_lengths, Tensor nll, "
       "Tensor log_alpha, Tensor lse, int max_target_length, int blank, bool zero_infinity) "
       "-> Tensor",
       _logits_backward, ctc_reference)
define("ctc_best_alignment", f"(Tensor log_probs, {_BATCH_ARGS}) -> (Tensor, Tensor)",
       _best_alignment, ctc_reference)
define("ctc_greedy_decode", "(Tensor scores, Tensor input_lengths, int blank) -> (Tensor, Tensor)",
       _greedy_decode, ctc_reference)
define("ctc_greedy_draft",
       "(Tensor scores, Tensor input_lengths, Tensor class_map, int blank, float blank_penalty, int bos, "
       "int eos, int pad, int max_length) -> Tensor",
       _greedy_draft, ctc_reference)


def _alpha_numel(scores: Tensor, targets: Tensor) -> int:
    return scores.shape[0] * (2 * targets.numel() + scores.shape[1])


@torch.library.register_fake("pyprune::ctc_loss_forward")
def _(log_probs, targets, offsets, in_len, tgt_len, max_len, blank, zero_infinity):
    return (log_probs.new_empty(log_probs.shape[1]),
            log_probs.new_empty(_alpha_numel(log_probs, targets)))


@torch.library.register_fake("pyprune::ctc_loss_backward")
def _(grad_nll, log_probs, *rest):
    return torch.empty_like(log_probs)


@torch.library.register_fake("pyprune::ctc_logits_forward")
def _(logits, targets, offsets, in_len, tgt_len, max_len, blank, zero_infinity):
    T, N = logits.shape[0], logits.shape[1]
    return (logits.new_empty(N), logits.new_empty(N),
            logits.new_empty(_alpha_numel(logits, targets)), logits.new_empty(T, N))


@torch.library.register_fake("pyprune::ctc_logits_backward")
def _(grad_nll, grad_smooth, logits, *rest):
    return torch.empty_like(logits)


@torch.library.register_fake("pyprune::ctc_best_alignment")
def _(log_probs, targets, offsets, in_len, tgt_len, max_len, blank):
    T, N = log_probs.shape[0], log_probs.shape[1]
    return targets.new_empty(N, T, dtype=torch.long), log_probs.new_empty(N)


@torch.library.register_fake("pyprune::ctc_greedy_decode")
def _(scores, in_len, blank):
    T, N = scores.shape[0], scores.shape[1]
    return in_len.new_empty(N, T, dtype=torch.long), in_len.new_empty(N, dtype=torch.long)


@torch.library.register_fake("pyprune::ctc_greedy_draft")
def _(scores, in_len, class_map, blank, blank_penalty, bos, eos, pad, max_length):
    width = torch.library.get_ctx().new_dynamic_size(min=2)       # the longest row's: known after decoding
    return in_len.new_empty(scores.shape[1], width, dtype=torch.long)


def _setup_loss(ctx, inputs, output):
    log_probs, targets, offsets, in_len, tgt_len, max_len, blank, zero_infinity = inputs
    nll, log_alpha = output
    ctx.save_for_backward(log_probs, targets, offsets, in_len, tgt_len, nll, log_alpha)
    ctx.static = (max_len, blank, zero_infinity)


def _backward_loss(ctx, grad_nll, _grad_alpha):
    log_probs, targets, offsets, in_len, tgt_len, nll, log_alpha = ctx.saved_tensors
    grad = torch.ops.pyprune.ctc_loss_backward(grad_nll.contiguous(), log_probs, targets, offsets,
                                               in_len, tgt_len, nll, log_alpha, *ctx.static)
    return grad, None, None, None, None, None, None, None


def _setup_logits(ctx, inputs, output):
    logits, targets, offsets, in_len, tgt_len, max_len, blank, zero_infinity = inputs
    nll, _smooth, log_alpha, lse = output
    ctx.save_for_backward(logits, targets, offsets, in_len, tgt_len, nll, log_alpha, lse)
    ctx.static = (max_len, blank, zero_infinity)


def _backward_logits(ctx, grad_nll, grad_smooth, _grad_alpha, _grad_lse):
    logits, targets, offsets, in_len, tgt_len, nll, log_alpha, lse = ctx.saved_tensors
    if grad_nll is None:
        grad_nll = torch.zeros_like(nll)
    if grad_smooth is None:
        grad_smooth = torch.zeros_like(nll)
    grad = torch.ops.pyprune.ctc_logits_backward(
        grad_nll.contiguous(), grad_smooth.contiguous(), logits, targets, offsets, in_len, tgt_len,
        nll, log_alpha, lse, *ctx.static)
    return grad, None, None, None, None, None, None, None


torch.library.register_autograd("pyprune::ctc_loss_forward", _backward_loss, setup_context=_setup_loss)
torch.library.register_autograd("pyprune::ctc_logits_forward", _backward_logits,
                                setup_context=_setup_logits)

# --------------------------------------------------------------------------
# Public API


def ctc_loss(log_probs: Tensor, targets: Tensor, input_lengths: Lengths, target_lengths: Lengths,
             blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> Tensor:
    """Connectionist Temporal Classification loss; a drop-in for
    ``torch.nn.functional.ctc_loss`` with the same values and gradients.

    Args:
        log_probs: (T, N, C) or unbatched (T, C) log-probabilities (log_softmax
            output), float32/float64; float16/bfloat16 are computed in float32.
        targets: (N, S) padded or (sum(target_lengths),) concatenated labels,
            int32/int64, each in [0, C) and != blank; (S,) when unbatched.
        input_lengths, target_lengths: (N,) integer tensors or sequences.
        blank: the blank class. reduction: 'none' | 'mean' | 'sum'; 'mean'
            divides each loss by its target length (at least 1), then averages.
        zero_infinity: replace infinite losses (and their gradients) by zero.

    Returns:
        (N,) losses for 'none' (a scalar when unbatched), else a scalar; float32
        for half-precision inputs. Like torch, the gradient with respect to
        log_probs is exp(log_probs) - occupancy, which is the gradient with
        respect to the logits once it flows back through log_softmax.
    """
    _check_scores("log_probs", log_probs, allow_unbatched=True)
    _check_reduction(reduction)
    unbatched = log_probs.dim() == 2
    scores = _compute_dtype(log_probs.unsqueeze(1) if unbatched else log_probs)
    batch = _prepare(scores, targets, input_lengths, target_lengths, blank, unbatched, "log_probs")
    nll, _ = torch.ops.pyprune.ctc_loss_forward(scores, *batch[:4], batch.max_target_length, blank,
                                                bool(zero_infinity))
    loss = _reduce(nll, batch.target_lengths, reduction)
    return loss.squeeze(0) if unbatched and reduction == "none" else loss


def ctc_loss_from_logits(logits: Tensor, targets: Tensor, input_lengths: Lengths,
                         target_lengths: Lengths, blank: int = 0, reduction: str = "mean",
                         zero_infinity: bool = False, label_smoothing: float = 0.0,
                         batch_first: bool = False) -> Tensor:
    """log_softmax + CTC loss + label smoothing, fused.

    Equal to ``(1 - eps) * ctc_loss(log_softmax(logits), ...) + eps * smooth``
    where, per sample, smooth = -mean over its valid frames and all classes of
    log_softmax(logits), and the same reduction is applied to both terms
    ('mean' divides only the CTC term by the target length). Neither the
    log-probability tensor nor a log_softmax backward is materialised: the
    forward reads the logits once, the backward reads them once and writes the
    exact gradient with respect to the logits.

    Args:
        logits: (T, N, C), or (N, T, C) with batch_first=True; any float dtype
            (float16/bfloat16 computed in float32).
        Others: as in :func:`ctc_loss`. label_smoothing in [0, 1].
    """
    _check_scores("logits", logits, allow_unbatched=False)
    _check_reduction(reduction)
    if not 0.0 <= float(label_smoothing) <= 1.0:
        fail("label_smoothing", "a value in [0, 1]", label_smoothing)
    scores = _compute_dtype(logits.transpose(0, 1) if batch_first else logits)
    batch = _prepare(scores, targets, input_lengths, target_lengths, blank, False, "logits")
    nll, smooth, _, _ = torch.ops.pyprune.ctc_logits_forward(
        scores, *batch[:4], batch.max_target_length, blank, bool(zero_infinity))
    eps = float(label_smoothing)
    loss = _reduce(nll, batch.target_lengths, reduction)
    if eps == 0.0:
        return loss
    smooth_loss = smooth.sum() if reduction == "sum" else smooth.mean() if reduction == "mean" else smooth
    return (1.0 - eps) * loss + eps * smooth_loss


def _frame_lengths(input_lengths: Lengths, scores: Tensor) -> Tensor:
    """The greedy decoders' input lengths (one per sample of the (T, N, C) `scores`, each in [0, T] where
    readable on the host) as a contiguous int64 tensor on the scores' device."""
    T, N = scores.shape[0], scores.shape[1]
    lengths = _as_lengths("input_lengths", input_lengths, N, scores.device, False)
    host = _host_values(lengths)
    if host is not None and N > 0 and (int(host.min()) < 0 or int(host.max()) > T):
        fail("input_lengths", f"values in [0, {T}] (T of scores)", f"min {int(host.min())}, max {int(host.max())}")
    return lengths.to(device=scores.device, dtype=torch.long).contiguous()


def ctc_greedy_decode(scores: Tensor, input_lengths: Lengths, blank: int = 0,
                      batch_first: bool = False) -> tuple[Tensor, Tensor]:
    """Greedy CTC decoding of a batch, without a Python loop over it.

    Takes the best class of every frame (the first one on ties), merges
    repeats, drops blanks and left-packs the result.

    Args:
        scores: (T, N, C) (or (N, T, C) with batch_first) logits or
            log-probabilities; float16 and bfloat16 are decoded as their
            float32 values (the CPU kernel reads bfloat16 as it is).
        input_lengths: (N,) valid frames per sample.
    Returns:
        tokens: (N, T) int64, the decoded labels first, then ``blank``.
        lengths: (N,) int64 number of decoded labels.
    """
    _check_scores("scores", scores, allow_unbatched=False)
    scores = _compute_dtype(scores.transpose(0, 1) if batch_first else scores,
                            keep_bfloat16=scores.device.type == "cpu")     # the CPU kernel reads bfloat16
    _check_blank(blank, scores.shape[2])
    return torch.ops.pyprune.ctc_greedy_decode(scores, _frame_lengths(input_lengths, scores), blank)


def ctc_greedy_draft(scores: Tensor, input_lengths: Lengths, class_map: Tensor, *, bos: int, eos: int, pad: int,
                     blank: int = 0, blank_penalty: float = 0.0, max_length: Optional[int] = None,
                     batch_first: bool = False) -> Tensor:
    """Greedy CTC decoding straight to framed token rows: what a
    non-autoregressive generator hands on as its draft.

    Per sample: the greedy labels of ``ctc_greedy_decode`` (after subtracting
    `blank_penalty` from the blank's score, rounded as ``scores[..., blank] -=
    blank_penalty`` would leave it in the scores' dtype; a positive penalty
    gives longer outputs), each mapped to ``class_map[label]``, framed as
    ``[bos] tokens [eos]`` and padded with `pad`. The scores are not modified.

    Args:
        scores: (T, N, C) (or (N, T, C) with batch_first) logits or
            log-probabilities; float16 is decoded as its float32 values.
        input_lengths: (N,) valid frames per sample.
        class_map: (C,) int64 token id of each class (the blank's is unused).
        max_length: longest row, [bos] and [eos] included (rows are cut to it);
            None: no limit.
    Returns:
        (N, W) int64, W = 2 + the longest row's label count (after the cut).
    """
    _check_scores("scores", scores, allow_unbatched=False)
    given = scores.transpose(0, 1) if batch_first else scores
    scores = _compute_dtype(given, keep_bfloat16=scores.device.type == "cpu")   # the CPU kernel reads bfloat16
    T, C = scores.shape[0], scores.shape[2]
    _check_blank(blank, C)
    blank_penalty = finite_number("blank_penalty", blank_penalty)
    if blank_penalty and scores.dtype != given.dtype:     # widened for the kernel: subtract in the given dtype
        scores = _compute_dtype(ctc_reference.penalise_blank(given, blank, blank_penalty))
        blank_penalty = 0.0
    if not isinstance(class_map, Tensor) or class_map.dtype != torch.long or class_map.shape != (C,):
        fail("class_map", f"an int64 tensor of shape ({C},): a token id per class",
             type(class_map).__name__ if not isinstance(class_map, Tensor)
             else f"{class_map.dtype} {tuple(class_map.shape)}")
    if class_map.device != scores.device:
        fail("class_map", f"a tensor on {scores.device} like scores", f"a tensor on {class_map.device}")
    for name, value in (("bos", bos), ("eos", eos), ("pad", pad)):
        if isinstance(value, bool) or not isinstance(value, int):
            fail(name, "a token id (int)", type(value).__name__)
    if max_length is None:
        max_length = T + 2
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        fail("max_length", "an int >= 2 ([bos] and [eos]) or None", max_length)
    return torch.ops.pyprune.ctc_greedy_draft(scores, _frame_lengths(input_lengths, scores), class_map.contiguous(),
                                              blank, blank_penalty, bos, eos, pad, max_length)


def ctc_best_alignment(log_probs: Tensor, targets: Tensor, input_lengths: Lengths,
                       target_lengths: Lengths, blank: int = 0,
                       batch_first: bool = False) -> tuple[Tensor, Tensor]:
    """Most probable (Viterbi) CTC alignment of each sample to its targets.

    Args: as in :func:`ctc_loss` (3-D scores only). Raw logits give the same
        alignment as their log_softmax: the per-frame normaliser is shared by
        all paths.
    Returns:
        alignment: (N, T) int64, the label (or blank) emitted at each frame on
            the best path; blank past the input length and for samples whose
            targets cannot be aligned.
        log_prob: (N,) the best path's score, -inf where no alignment exists.
    Ties prefer staying in a state, then advancing by one, and ending on the
    final blank.
    """
    _check_scores("log_probs", log_probs, allow_unbatched=False)
    scores = _compute_dtype(log_probs.transpose(0, 1) if batch_first else log_probs)
    batch = _prepare(scores, targets, input_lengths, target_lengths, blank, False, "log_probs")
    return torch.ops.pyprune.ctc_best_alignment(scores, *batch[:4], batch.max_target_length, blank)
