"""Pure-PyTorch references of the CTC kernels, on any device.

Each function has the signature and outputs of the compiled kernel op of the
same name (``torch.ops.pyprune_C.<name>``), so either can stand in for the
other. Written for clarity: recursions loop over time and are vectorised over
the batch and the extended-label states. See csrc/ctc/ctc_core.h for the
buffer layouts.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class _Lattice(NamedTuple):
    ext: Tensor        # (N, W) extended labels: blank, l1, blank, l2, ..., blank
    skip: Tensor       # (N, W) bool: the transition s-2 -> s is allowed
    width: Tensor      # (N,) 2 * S_n + 1
    emissions: Tensor  # (T, N, W) score of each state's label at each frame
    valid: Tensor      # (N,) bool: lengths and labels in range


def _sample_valid(targets, offsets, input_lengths, target_lengths, max_target_length, blank, T, C):
    n = offsets.numel()
    ok = (input_lengths >= 0) & (input_lengths <= T)
    ok &= (target_lengths >= 0) & (target_lengths <= max_target_length)
    ok &= (offsets >= 0) & (offsets + target_lengths <= targets.numel())
    if not 0 <= blank < C:
        return torch.zeros(n, dtype=torch.bool, device=offsets.device)
    S = int(target_lengths.clamp(min=0).max()) if n else 0
    positions = torch.arange(S, device=offsets.device)
    inside = (positions[None] < target_lengths[:, None]) & ok[:, None]
    index = (offsets[:, None] + positions[None]).clamp(0, max(targets.numel() - 1, 0))
    labels = targets[index] if targets.numel() else torch.zeros_like(index)
    bad_label = inside & ((labels < 0) | (labels >= C) | (labels == blank))
    return ok & ~bad_label.any(dim=1)


def _lattice(scores, row_shift, targets, offsets, input_lengths, target_lengths,
             max_target_length, blank) -> _Lattice:
    T, N, C = scores.shape
    valid = _sample_valid(targets, offsets, input_lengths, target_lengths, max_target_length,
                          blank, T, C)
    lengths = torch.where(valid, target_lengths, 0)
    S = int(lengths.max()) if N else 0
    W = 2 * S + 1
    positions = torch.arange(S, device=scores.device)
    inside = positions[None] < lengths[:, None]
    index = (offsets[:, None] + positions[None]).clamp(0, max(targets.numel() - 1, 0))
    labels = targets[index] if targets.numel() else torch.zeros_like(index)
    labels = torch.where(inside, labels, blank)
    ext = torch.full((N, W), blank, dtype=torch.long, device=scores.device)
    ext[:, 1::2] = labels
    skip = torch.zeros((N, W), dtype=torch.bool, device=scores.device)
    if S > 1:
        skip[:, 3::2] = labels[:, 1:] != labels[:, :-1]
    safe_blank = min(max(blank, 0), max(C - 1, 0))
    gather_index = torch.where(valid[:, None], ext, safe_blank)
    emissions = scores.gather(2, gather_index[None].expand(T, N, W))
    if row_shift is not None:
        emissions = emissions - row_shift[..., None]
    return _Lattice(ext, skip, 2 * lengths + 1, emissions, valid)


def _logsumexp3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    m = torch.maximum(a, torch.maximum(b, c))
    shift = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    return shift + torch.log((a - shift).exp() + (b - shift).exp() + (c - shift).exp())


def _shift_states(x: Tensor, by: int) -> Tensor:
    """x[..., s - by] with -inf where s - by < 0 (by > 0) or s - by >= W (by < 0)."""
    out = torch.full_like(x, float("-inf"))
    if by > 0:
        out[..., by:] = x[..., :-by]
    else:
        out[..., :by] = x[..., -by:]
    return out


def _alphas(lat: _Lattice) -> Tensor:
    T, N, W = lat.emissions.shape
    neg_inf = torch.tensor(float("-inf"), dtype=lat.emissions.dtype, device=lat.emissions.device)
    alpha = torch.full_like(lat.emissions, float("-inf"))
    if T == 0:
        return alpha
    alpha[0, :, 0] = lat.emissions[0, :, 0]
    if W > 1:
        alpha[0, :, 1] = lat.emissions[0, :, 1]
    for t in range(1, T):
        prev = alpha[t - 1]
        jump = torch.where(lat.skip, _shift_states(prev, 2), neg_inf)
        alpha[t] = _logsumexp3(prev, _shift_states(prev, 1), jump) + lat.emissions[t]
    return alpha


def _final_log_likelihood(alpha: Tensor, lat: _Lattice, input_lengths: Tensor) -> Tensor:
    T, N, W = alpha.shape
    batch = torch.arange(N, device=alpha.device)
    last = (input_lengths - 1).clamp(min=0, max=max(T - 1, 0))
    if T == 0:
        ll = torch.full((N,), float("-inf"), dtype=alpha.dtype, device=alpha.device)
    else:
        end_blank = alpha[last, batch, lat.width - 1]
        end_label = torch.where(lat.width > 1, alpha[last, batch, (lat.width - 2).clamp(min=0)],
                                float("-inf"))
        ll = torch.logaddexp(end_blank, end_label)
    empty_input = input_lengths == 0
    ll = torch.where(empty_input & (lat.width == 1), 0.0, ll)
    return torch.where(empty_input & (lat.width > 1), float("-inf"), ll)


def _alpha_offsets(offsets: Tensor, T: int) -> Tensor:
    return T * (2 * offsets + torch.arange(offsets.numel(), device=offsets.device))


def ctc_forward(scores: Tensor, row_shift: Optional[Tensor], targets: Tensor, target_offsets: Tensor,
                input_lengths: Tensor, target_lengths: Tensor, max_target_length: int, blank: int,
                zero_infinity: bool) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood per sample, and the packed forward variables."""
    T, N, _ = scores.shape
    lat = _lattice(scores, row_shift, targets, target_offsets, input_lengths, target_lengths,
                   max_target_length, blank)
    alpha = _alphas(lat)
    nll = -_final_log_likelihood(alpha, lat, input_lengths)
    if zero_infinity:
        nll = torch.where(torch.isinf(nll), 0.0, nll)
    nll = torch.where(lat.valid, nll, float("nan"))
    packed = torch.full((T * (2 * targets.numel() + N),), float("-inf"), dtype=scores.dtype,
                        device=scores.device)
    starts = _alpha_offsets(target_offsets, T).tolist()
    for n in range(N):
        steps, width = int(input_lengths[n]), int(lat.width[n])
        if bool(lat.valid[n]) and steps > 0:
            block = alpha[:steps, n, :width].reshape(-1)
            packed[starts[n]:starts[n] + block.numel()] = block
    return nll, packed


def ctc_backward(grad_nll: Tensor, grad_smooth: Optional[Tensor], scores: Tensor,
                 row_shift: Optional[Tensor], targets: Tensor, target_offsets: Tensor,
                 input_lengths: Tensor, target_lengths: Tensor, nll: Tensor, log_alpha: Tensor,
                 max_target_length: int, blank: int, zero_infinity: bool) -> Tensor:
    """Gradient with respect to the scores (see ctc_core.h: backward_cpu).

    Recomputes the forward variables instead of unpacking log_alpha.
    """
    T, N, C = scores.shape
    lat = _lattice(scores, row_shift, targets, target_offsets, input_lengths, target_lengths,
                   max_target_length, blank)
    alpha = _alphas(lat)
    ll = _final_log_likelihood(alpha, lat, input_lengths)
    W = lat.emissions.shape[2]
    states = torch.arange(W, device=scores.device)
    frames = torch.arange(T, device=scores.device)[:, None]
    is_last = frames == (input_lengths - 1)[None]      # (T, N)
    before_last = frames < (input_lengths - 1)[None]
    end_states = (states[None] == (lat.width - 1)[:, None]) | (states[None] == (lat.width - 2)[:, None])
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    beta = torch.full_like(alpha, float("-inf"))
    following = torch.full_like(alpha[0], float("-inf"))
    for t in reversed(range(T)):
        jump = torch.where(_shift_states(lat.skip, -2), _shift_states(following, -2), neg_inf)
        recursion = _logsumexp3(following, _shift_states(following, -1), jump) + lat.emissions[t]
        start = torch.where(end_states, lat.emissions[t], neg_inf)
        beta[t] = torch.where(is_last[t][:, None], start,
                              torch.where(before_last[t][:, None], recursion, neg_inf))
        following = beta[t]

    impossible = ll == float("-inf")
    g = torch.where(impossible & zero_infinity, 0.0, grad_nll.to(scores.dtype))
    steps = input_lengths.clamp(min=1).to(scores.dtype)
    h = grad_smooth.to(scores.dtype) / steps if grad_smooth is not None else torch.zeros_like(g)
    log_gamma = alpha + beta - lat.emissions - ll[None, :, None]
    gamma = torch.where(impossible[None, :, None], 0.0, log_gamma.exp())
    occupancy = torch.zeros_like(scores).scatter_add_(2, lat.ext[None].expand(T, N, W), gamma)
    shift = row_shift[..., None] if row_shift is not None else 0.0
    probs = (scores - shift).exp()
    grad = (g + h)[None, :, None] * probs - (h / C)[None, :, None] - g[None, :, None] * occupancy
    grad = torch.where((impossible & ~torch.tensor(zero_infinity))[None, :, None], float("nan"), grad)
    in_range = frames < input_lengths[None]
    grad = torch.where(in_range[..., None], grad, 0.0)
    return torch.where(lat.valid[None, :, None], grad, float("nan"))


def ctc_logsumexp_rows(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Per-frame log-sum-exp (T, N) and -mean(log_softmax) over classes (T, N)."""
    lse = torch.logsumexp(logits, dim=-1)
    return lse, lse - logits.mean(dim=-1)


def ctc_best_alignment(scores: Tensor, targets: Tensor, target_offsets: Tensor,
                       input_lengths: Tensor, target_lengths: Tensor, max_target_length: int,
                       blank: int) -> tuple[Tensor, Tensor]:
    """Viterbi path labels (N, T) and path scores (N,); ties as in ctc_core.h."""
    T, N, _ = scores.shape
    lat = _lattice(scores, None, targets, target_offsets, input_lengths, target_lengths,
                   max_target_length, blank)
    W = lat.emissions.shape[2]
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    best = torch.full((N, W), float("-inf"), dtype=scores.dtype, device=scores.device)
    steps = torch.zeros((T, N, W), dtype=torch.long, device=scores.device)
    batch = torch.arange(N, device=scores.device)
    history = []
    if T > 0:
        best[:, 0] = lat.emissions[0, :, 0]
        if W > 1:
            best[:, 1] = lat.emissions[0, :, 1]
    history.append(best)
    for t in range(1, T):
        stay, advance = best, _shift_states(best, 1)
        jump = torch.where(lat.skip, _shift_states(best, 2), neg_inf)
        step = torch.zeros_like(steps[t])
        top = stay
        step = torch.where(advance > top, 1, step)
        top = torch.maximum(top, advance)
        step = torch.where(jump > top, 2, step)
        top = torch.maximum(top, jump)
        steps[t] = step
        best = top + lat.emissions[t]
        history.append(best)
    last = (input_lengths - 1).clamp(min=0, max=max(T - 1, 0))
    alignment = torch.full((N, T), blank, dtype=torch.long, device=scores.device)
    score = torch.full((N,), float("-inf"), dtype=scores.dtype, device=scores.device)
    if T > 0:
        final = torch.stack(history)[last, batch]                     # (N, W)
        end_blank = final[batch, lat.width - 1]
        end_label = torch.where(lat.width > 1, final[batch, (lat.width - 2).clamp(min=0)], neg_inf)
        state = torch.where(end_label > end_blank, lat.width - 2, lat.width - 1)
        score = torch.maximum(end_blank, end_label)
        for t in reversed(range(T)):
            active = t <= last
            label = lat.ext[batch, state]
            alignment[:, t] = torch.where(active, label, alignment[:, t])
            state = torch.where(active, state - steps[t, batch, state], state)
    empty_input = input_lengths == 0
    score = torch.where(empty_input, torch.where(lat.width == 1, 0.0, float("-inf")), score)
    possible = (score > float("-inf"))[:, None] & (torch.arange(T, device=scores.device)[None] < input_lengths[:, None])
    alignment = torch.where(possible, alignment, blank)
    alignment = torch.where(lat.valid[:, None], alignment, -1)
    return alignment, torch.where(lat.valid, score, float("nan"))


def ctc_greedy_decode(scores: Tensor, input_lengths: Tensor, blank: int) -> tuple[Tensor, Tensor]:
    """Best class per frame, repeats merged, blanks dropped, left-packed (N, T)."""
    T, N, _ = scores.shape
    best = scores.argmax(dim=-1).T                                     # (N, T)
    previous = torch.cat([torch.full_like(best[:, :1], -1), best[:, :-1]], dim=1)
    frames = torch.arange(T, device=scores.device)[None]
    keep = (best != blank) & (best != previous) & (frames < input_lengths[:, None])
    position = keep.cumsum(dim=1) - 1
    tokens = torch.full((N, T), blank, dtype=torch.long, device=scores.device)
    rows = torch.arange(N, device=scores.device)[:, None].expand(N, T)
    tokens[rows[keep], position[keep]] = best[keep]
    return tokens, keep.sum(dim=1)


def ctc_greedy_draft(scores: Tensor, input_lengths: Tensor, class_map: Tensor, blank: int, blank_penalty: float,
                     bos: int, eos: int, pad: int, max_length: int) -> Tensor:
    """[bos] class_map[label]... [eos] rows of the greedy decoding, padded with `pad`, each row's labels cut to
    `max_length` - 2; `blank_penalty` is subtracted from the blank's score first, in the scores' dtype."""
    labels, lengths = ctc_greedy_decode(penalise_blank(scores, blank, blank_penalty), input_lengths, blank)
    lengths = lengths.clamp(max=max_length - 2)
    N = labels.shape[0]
    width = int(lengths.max()) + 2 if N else 2
    pos = torch.arange(width, device=labels.device)[None].expand(N, width)
    body = class_map[labels.gather(1, (pos - 1).clamp(0, max(labels.shape[1] - 1, 0)))] if labels.shape[1] \
        else torch.full_like(pos, pad)
    out = torch.where(pos == 0, bos, torch.where(pos <= lengths[:, None], body, pad))
    return out.masked_fill(pos == lengths[:, None] + 1, eos)


def penalise_blank(scores: Tensor, blank: int, penalty: float) -> Tensor:
    """`scores` with `penalty` subtracted from the blank's score in their own dtype (in a copy; `scores` itself
    where the penalty is 0)."""
    if not penalty:
        return scores
    scores = scores.clone()
    scores[..., blank] -= penalty
    return scores
