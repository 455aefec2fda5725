"""CTC benchmark: pyprune's kernels against PyTorch in the same run.

Providers per shape (forward + backward, median wall time):
    ctc_loss             pyprune.ops.ctc_loss vs F.ctc_loss on log-probabilities
    ctc_loss_from_logits pyprune's fused loss vs log_softmax + F.ctc_loss with
                         the same label smoothing, plus peak memory of each
On CUDA the anchor is torch's native CTC kernel (cuDNN disabled), and the
gradients of two runs are compared bit for bit.

Run as ``pyprune bench ctc`` (see --help); bench/ wraps the same cases in
pytest-benchmark.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pyprune.ops import ctc_loss, ctc_loss_from_logits

from .common import cli, copy_bandwidth_gbs, environment, median_ms
from .common import max_rss_bytes  # noqa: F401  (used by the peak-memory subprocess as ctc.max_rss_bytes)

LABEL_SMOOTHING = 0.1


@dataclass(frozen=True)
class Shape:
    N: int
    T: int
    S: int
    C: int

    def __str__(self) -> str:
        return f"N={self.N} T={self.T} S={self.S} C={self.C}"

    @property
    def id(self) -> str:
        """A test id without spaces or '=' (usable with pytest -k)."""
        return f"N{self.N}-T{self.T}-S{self.S}-C{self.C}"


# The CPU grid, and NAT-sized shapes for GPUs.
CPU_SHAPES = [Shape(32, 128, 50, 32000), Shape(8, 256, 100, 32000), Shape(32, 128, 50, 1000)]
QUICK_SHAPES = [Shape(8, 128, 50, 32000), Shape(32, 128, 50, 1000)]
GPU_SHAPES = [Shape(64, 60, 25, 32000), Shape(128, 200, 80, 32000), Shape(256, 400, 160, 32000),
              Shape(256, 120, 50, 32000)]


def make_inputs(shape: Shape, device: str, seed: int = 0):
    """Random logits (T, N, C) float32, padded targets, full-length inputs and
    target lengths in [S/2, S]."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape.T, shape.N, shape.C, generator=generator).to(device)
    targets = torch.randint(1, shape.C, (shape.N, shape.S), generator=generator).to(device)
    input_lengths = torch.full((shape.N,), shape.T, dtype=torch.long).to(device)
    target_lengths = torch.randint(shape.S // 2, shape.S + 1, (shape.N,), generator=generator).to(device)
    return logits, targets, input_lengths, target_lengths


def _torch_smoothed(logits, targets, input_lengths, target_lengths):
    log_probs = logits.log_softmax(-1)
    ctc = F.ctc_loss(log_probs, targets, input_lengths, target_lengths)
    smooth = -log_probs.mean(-1).mean()  # every frame is valid in these inputs
    return (1 - LABEL_SMOOTHING) * ctc + LABEL_SMOOTHING * smooth


def _pyprune_smoothed(logits, targets, input_lengths, target_lengths):
    return ctc_loss_from_logits(logits, targets, input_lengths, target_lengths,
                                label_smoothing=LABEL_SMOOTHING)


LOSSES = {
    ("ctc_loss", "torch"): lambda lp, *rest: F.ctc_loss(lp, *rest),
    ("ctc_loss", "pyprune"): lambda lp, *rest: ctc_loss(lp, *rest),
    ("ctc_loss_from_logits", "torch"): _torch_smoothed,
    ("ctc_loss_from_logits", "pyprune"): _pyprune_smoothed,
}


def _step(op: str, provider: str, inputs):
    logits, *rest = inputs
    source = logits.log_softmax(-1) if op == "ctc_loss" else logits

    def run():
        x = source.detach().requires_grad_()
        loss = LOSSES[op, provider](x, *rest)
        loss.backward()
        return x.grad

    return run


def peak_memory_mb(op: str, provider: str, shape: Shape) -> float:
    """Peak extra host memory of one forward+backward, measured in a fresh
    subprocess (ru_maxrss after minus before the step; inputs excluded)."""
    code = (
        "import json, torch; from pyprune.benchmarks import ctc; "
        f"torch.set_num_threads({torch.get_num_threads()}); "
        f"shape = ctc.Shape(**{shape.__dict__!r}); inputs = ctc.make_inputs(shape, 'cpu'); "
        f"step = ctc._step({op!r}, {provider!r}, inputs); "
        "before = ctc.max_rss_bytes(); step(); "
        "print(json.dumps((ctc.max_rss_bytes() - before) / 2**20))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env=dict(os.environ))
    return float(out.stdout.strip().splitlines()[-1])


def gradients_bit_identical(op: str, inputs) -> bool:
    first = _step(op, "pyprune", inputs)()
    second = _step(op, "pyprune", inputs)()
    return bool(torch.equal(first, second))


def run(device: str = "cpu", shapes=None, repeats: int = 5, memory: bool = True) -> dict:
    shapes = shapes or (GPU_SHAPES if device.startswith("cuda") else CPU_SHAPES)
    bandwidth = copy_bandwidth_gbs(device)
    rows = []
    for shape in shapes:
        inputs = make_inputs(shape, device)
        # Minimal traffic of forward+backward: read the scores once, write the
        # gradient once (the fused loss reads the logits once more for the
        # log-sum-exp).
        score_bytes = shape.T * shape.N * shape.C * 4
        for op in ("ctc_loss", "ctc_loss_from_logits"):
            timings = {}
            for provider in ("torch", "pyprune"):
                if device.startswith("cuda") and provider == "torch":
                    with torch.backends.cudnn.flags(enabled=False):
                        timings[provider] = median_ms(_step(op, provider, inputs), device, repeats=repeats)
                else:
                    timings[provider] = median_ms(_step(op, provider, inputs), device, repeats=repeats)
            passes = 2 if op == "ctc_loss" else 3
            row = {
                "op": op, "shape": str(shape), "torch_ms": timings["torch"],
                "pyprune_ms": timings["pyprune"], "speedup": timings["torch"] / timings["pyprune"],
                "floor_ms": passes * score_bytes / (bandwidth * 1e6),
            }
            if memory and op == "ctc_loss_from_logits" and device == "cpu":
                row["torch_peak_mb"] = peak_memory_mb(op, "torch", shape)
                row["pyprune_peak_mb"] = peak_memory_mb(op, "pyprune", shape)
            if device.startswith("cuda"):
                row["bit_identical_grads"] = gradients_bit_identical(op, inputs)
            rows.append(row)
        del inputs
    return {"environment": environment(device), "bandwidth_gbs": bandwidth, "rows": rows,
            "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", "0")}


def format_table(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"{env['date']} | {env['device']} | torch {env['torch']} (CUDA {env['cuda']}) | "
        f"pyprune {env['pyprune']} [{env['backends']}] | THP_MEM_ALLOC_ENABLE={result['thp_mem_alloc']} | "
        f"copy bandwidth {result['bandwidth_gbs']:.1f} GB/s",
        "",
        "| op | shape | torch ms | pyprune ms | speedup | floor ms | peak MB torch / pyprune | grads bit-identical |",
        "|---|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in result["rows"]:
        memory = (f"{row['torch_peak_mb']:.0f} / {row['pyprune_peak_mb']:.0f}"
                  if "torch_peak_mb" in row else "")
        identical = {True: "yes", False: "NO"}.get(row.get("bit_identical_grads"), "")
        lines.append(f"| {row['op']} | {row['shape']} | {row['torch_ms']:.1f} | {row['pyprune_ms']:.1f} | "
                     f"{row['speedup']:.2f}x | {row['floor_ms']:.1f} | {memory} | {identical} |")
    return "\n".join(lines)


def _arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="two small shapes, 3 repeats")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")


def main(argv=None) -> int:
    return cli("ctc", __doc__, argv, run, format_table, _arguments,
               lambda args: {"shapes": QUICK_SHAPES if args.quick else None,
                             "repeats": 3 if args.quick else 5, "memory": not args.no_memory})
