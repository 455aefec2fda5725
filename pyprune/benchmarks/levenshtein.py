"""Levenshtein label benchmark: batched get_ins_targets + get_del_targets.

Pairs as Levenshtein training makes them: a reference of 30-60 tokens and a
draft made by deleting each of its tokens with probability 0.3. Reported per
pair, against rapidfuzz's bit-parallel ``Indel.editops`` (one Python call per
pair, as a per-pair labeller is used) and the straightforward Python
reference, timed in the same run.
"""
from __future__ import annotations

import random

import torch

from pyprune.ops import get_del_targets, get_edit_targets, get_ins_targets, levenshtein_reference

from .common import cli, environment, environment_line, median_ms

PAD, UNK, BOS, EOS = 1, 3, 0, 2


def make_pairs(batch: int, low: int, high: int, vocab: int, seed: int = 0, device: str = "cpu"):
    """(in_tokens, out_tokens, in_lists, out_lists) with random-deletion drafts."""
    rng = random.Random(seed)
    outs, ins = [], []
    for _ in range(batch):
        length = rng.randint(low, high)
        reference = [BOS] + [4 + rng.randrange(vocab) for _ in range(length)] + [EOS]
        draft = [BOS] + [t for t in reference[1:-1] if rng.random() > 0.3] + [EOS]
        outs.append(reference)
        ins.append(draft)

    def pad(rows, width):
        out = torch.full((len(rows), width), PAD, dtype=torch.long)
        for b, row in enumerate(rows):
            out[b, : len(row)] = torch.tensor(row)
        return out.to(device)

    width = max(len(r) for r in outs)
    return pad(ins, width), pad(outs, width), ins, outs


def providers(x, y, xs, ys):
    def separate():
        get_ins_targets(x, y, PAD, UNK)
        get_del_targets(x, y, PAD)

    def fused():
        get_edit_targets(x, y, PAD, UNK)

    calls = {"pyprune get_ins_targets + get_del_targets": separate,
             "pyprune get_edit_targets (both, one pass)": fused}
    try:
        from rapidfuzz.distance import Indel

        def rapidfuzz_editops():
            for a, b in zip(xs, ys):
                Indel.editops(a, b)

        calls["rapidfuzz Indel.editops, per pair"] = rapidfuzz_editops
    except ImportError:
        pass
    return calls


def run_gpu(device: str, batch: int = 256, repeats: int = 21) -> dict:
    """Warp-per-pair kernel against the one-thread-per-pair anchor, same GPU."""
    rows = []
    for length in (60, 256):
        x, y, _, _ = make_pairs(batch, length, length, 30000, device=device)
        calls = {
            "pyprune warp per pair": lambda: torch.ops.pyprune.lev_edit_targets(x, y, PAD, UNK),
            "one thread per pair (full DP matrix)":
                lambda: torch.ops.pyprune_C.lev_edit_targets_per_thread(x, y, PAD, UNK),
        }
        for name, call in calls.items():
            ms = median_ms(call, device, warmup=3, repeats=repeats)
            rows.append({"vocab": length, "provider": name, "us_per_pair": 1e3 * ms / batch})
    return {"environment": environment(device), "batch": batch, "rows": rows}


def run(device: str = "cpu", batch: int = 256, repeats: int = 11) -> dict:
    if device.startswith("cuda"):
        return run_gpu(device, batch)
    rows = []
    for vocab in (30000, 50):
        x, y, xs, ys = make_pairs(batch, 30, 60, vocab, device=device)
        for name, call in providers(x, y, xs, ys).items():
            ms = median_ms(call, device, warmup=2, repeats=repeats)
            rows.append({"vocab": vocab, "provider": name, "us_per_pair": 1e3 * ms / batch})
        subset = 16  # the Python reference is slow: time a slice
        ms = median_ms(lambda: levenshtein_reference.lev_edit_targets(x[:subset].cpu(), y[:subset].cpu(), PAD, UNK),
                       "cpu", warmup=0, repeats=3)
        rows.append({"vocab": vocab, "provider": "Python reference (libnat rule, full DP)",
                     "us_per_pair": 1e3 * ms / subset})
    return {"environment": environment(device), "batch": batch, "rows": rows}


def format_table(result: dict) -> str:
    env = result["environment"]
    gpu = result["rows"][0]["provider"].startswith("pyprune warp")
    key, anchor_name = ("length", "one thread") if gpu else ("vocab", "rapidfuzz")
    shapes = "lengths 60 and 256, vocab 30000" if gpu else "lengths 30-60"
    lines = [f"{environment_line(env)} | B={result['batch']}, {shapes}, 30% random deletions", "",
             f"| {key} | provider | us / pair | vs {anchor_name} |", "|---:|---|---:|---:|"]
    for vocab in sorted({r["vocab"] for r in result["rows"]}, reverse=True):
        group = [r for r in result["rows"] if r["vocab"] == vocab]
        anchor = next((r["us_per_pair"] for r in group if r["provider"].startswith(anchor_name)), None)
        for r in group:
            ratio = f"{anchor / r['us_per_pair']:.3g}x" if anchor else ""
            lines.append(f"| {vocab} | {r['provider']} | {r['us_per_pair']:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return cli("levenshtein", __doc__, argv, run, format_table)
