"""CUDA Levenshtein labels against the CPU kernel; the one-thread-per-pair
anchor too; no host synchronisation. Skipped without a CUDA device."""
import random

import pytest
import torch

import pyprune
from pyprune.benchmarks.levenshtein import make_pairs
from pyprune.ops import get_edit_targets
from pyprune.ops import levenshtein_reference as ref

pytestmark = pytest.mark.gpu
PAD, UNK = 1, 3


@pytest.mark.parametrize("vocab", [3, 50, 30000])
@pytest.mark.parametrize("length", [20, 60, 63, 64, 65, 256, 700])
def test_labels_match_cpu(vocab, length):
    if not pyprune.backends.has_kernel("lev_edit_targets", "CUDA"):
        pytest.fail("a CUDA device is present but the CUDA Levenshtein kernel is not built")
    x, y, _, _ = make_pairs(64, max(length - 10, 0), length, vocab, seed=length + vocab)
    x[:, 3] = PAD  # padding inside rows too
    expected = get_edit_targets(x, y, PAD, UNK)
    got = torch.ops.pyprune.lev_edit_targets(x.cuda(), y.cuda(), PAD, UNK)
    anchor = torch.ops.pyprune_C.lev_edit_targets_per_thread(x.cuda(), y.cuda(), PAD, UNK)
    for g, a, e in zip(got, anchor, expected):
        assert torch.equal(g.cpu(), e)
        assert torch.equal(a.cpu(), e)


def test_tie_heavy_against_reference():
    rng = random.Random(0)
    rows = [[0] + [4 + rng.randrange(2) for _ in range(rng.randrange(90))] + [2] for _ in range(200)]
    width = max(map(len, rows))
    x = torch.full((100, width), PAD)
    y = torch.full((100, width), PAD)
    for b in range(100):
        x[b, : len(rows[2 * b])] = torch.tensor(rows[2 * b])
        y[b, : len(rows[2 * b + 1])] = torch.tensor(rows[2 * b + 1])
    got = torch.ops.pyprune.lev_edit_targets(x.cuda(), y.cuda(), PAD, UNK)
    for g, e in zip(got, ref.lev_edit_targets(x, y, PAD, UNK)):
        assert torch.equal(g.cpu(), e)


def test_no_host_synchronisation():
    x, y, _, _ = make_pairs(256, 30, 60, 30000, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.ops.pyprune.lev_edit_targets(x, y, PAD, UNK)
    finally:
        torch.cuda.set_sync_debug_mode("default")
