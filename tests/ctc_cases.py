"""Random CTC problems and plain-Python references for the tests."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Case:
    log_probs: torch.Tensor      # (T, N, C)
    targets: torch.Tensor        # (N, S) padded
    input_lengths: torch.Tensor  # (N,)
    target_lengths: torch.Tensor

    def concatenated(self) -> torch.Tensor:
        return torch.cat([row[:n] for row, n in zip(self.targets, self.target_lengths.tolist())])


def random_case(T, N, C, S, *, blank=0, dtype=torch.float64, min_input=None, vocab=None,
                generator=None) -> Case:
    """Targets avoid `blank`; input lengths vary in [min_input, T]."""
    labels = [c for c in range(C) if c != blank][: vocab or C]
    pick = torch.randint(len(labels), (N, S), generator=generator)
    targets = torch.tensor(labels)[pick]
    target_lengths = torch.randint(0, S + 1, (N,), generator=generator)
    low = T // 2 if min_input is None else min_input
    input_lengths = torch.randint(low, T + 1, (N,), generator=generator)
    log_probs = torch.randn(T, N, C, dtype=dtype, generator=generator).mul(2).log_softmax(-1)
    return Case(log_probs, targets, input_lengths, target_lengths)


def min_frames(target) -> int:
    """Fewest frames that can emit `target`: one per label, plus a blank
    between each pair of equal neighbours."""
    repeats = sum(1 for a, b in zip(target, target[1:]) if a == b)
    return len(target) + repeats


def greedy_decode_python(scores, input_lengths, blank):
    """scores: (T, N, C); returns a list of decoded lists."""
    out = []
    for n in range(scores.shape[1]):
        decoded, previous = [], None
        for t in range(int(input_lengths[n])):
            row = scores[t, n].tolist()
            best = row.index(max(row))
            if best != blank and best != previous:
                decoded.append(best)
            previous = best
        out.append(decoded)
    return out


def viterbi_python(log_probs, target, input_length, blank):
    """Best CTC path for one sample, with pyprune's tie rule: stay, then
    advance by one, then skip; end on the final blank unless the last label
    scores strictly higher. Returns (labels per frame, score)."""
    ext = [blank]
    for label in target:
        ext += [label, blank]
    W, T = len(ext), input_length
    if T == 0:
        return [], (0.0 if W == 1 else -math.inf)
    neg = -math.inf
    score = [[neg] * W for _ in range(T)]
    back = [[0] * W for _ in range(T)]
    score[0][0] = float(log_probs[0, ext[0]])
    if W > 1:
        score[0][1] = float(log_probs[0, ext[1]])
    for t in range(1, T):
        for s in range(W):
            best, step = score[t - 1][s], 0
            if s >= 1 and score[t - 1][s - 1] > best:
                best, step = score[t - 1][s - 1], 1
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2] and score[t - 1][s - 2] > best:
                best, step = score[t - 1][s - 2], 2
            score[t][s] = best + float(log_probs[t, ext[s]])
            back[t][s] = step
    state = W - 1
    if W > 1 and score[T - 1][W - 2] > score[T - 1][W - 1]:
        state = W - 2
    total = score[T - 1][state]
    if total == neg:
        return [blank] * T, neg
    path = [0] * T
    for t in range(T - 1, -1, -1):
        path[t] = ext[state]
        state -= back[t][state]
    return path, total


def collapse(path, blank):
    out, previous = [], None
    for label in path:
        if label != blank and label != previous:
            out.append(label)
        previous = label
    return out
