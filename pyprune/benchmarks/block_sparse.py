"""Block-sparse linear benchmark: forward + backward of Y = X W^T with W
masked in 32x32 blocks, against dense F.linear and masked dense (and torch's
BSR weights and the Triton kernels on a GPU), timed in the same run.

CPU: the automatic path must be no slower than masked dense at density 0.5.
Masks are random blocks, or structured (whole block rows pruned, as FFN
neuron pruning leaves them).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from pyprune.sparse import block_sparse_linear, choose_path, expand_mask, layout_for

from .common import cli, environment, median_ms

CPU_GRID = [(1024, 1024, 1024)]          # (M tokens, K in, N out)
GPU_GRID = [(m, k, k) for k in (768, 1024, 3072, 4096) for m in (1024, 4096, 16384)]
DENSITIES = (1.0, 0.75, 0.5, 0.25, 0.1)


def make_mask(N: int, K: int, density: float, structured: bool, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if structured:
        rows = torch.rand(N // 32, generator=generator) < density
        return rows[:, None].expand(N // 32, K // 32).contiguous().to(device)
    return (torch.rand(N // 32, K // 32, generator=generator) < density).to(device)


def _step(fn, x, w):
    def run():
        xg = x.detach().requires_grad_()
        wg = w.detach().requires_grad_()
        fn(xg, wg).sum().backward()
    return run


def run(device: str = "cpu", repeats: int = 15, dtype=torch.float32) -> dict:
    grid = GPU_GRID if device.startswith("cuda") else CPU_GRID
    rows = []
    for M, K, N in grid:
        x = torch.randn(M, K, device=device, dtype=dtype)
        w = torch.randn(N, K, device=device, dtype=dtype)
        dense_ms = median_ms(_step(lambda a, b: F.linear(a, b), x, w), device, repeats=repeats)
        for structured in (False, True):
            for density in DENSITIES:
                mask = make_mask(N, K, density, structured, device)
                masked = median_ms(_step(lambda a, b: F.linear(a, b * expand_mask(mask).to(b.dtype)), x, w),
                                   device, repeats=repeats)
                auto = median_ms(_step(lambda a, b: block_sparse_linear(a, b, None, mask), x, w),
                                 device, repeats=repeats)
                row = {"M": M, "K": K, "N": N, "mask": "rows" if structured else "random",
                       "density": density, "dense_ms": dense_ms, "masked_dense_ms": masked,
                       "auto_ms": auto, "auto_path": choose_path(layout_for(mask), M, x.device).path}
                if device.startswith("cuda"):
                    row["block_sparse_ms"] = median_ms(
                        _step(lambda a, b: block_sparse_linear(a, b, None, mask, path="block_sparse"), x, w),
                        device, repeats=repeats)
                rows.append(row)
    return {"environment": environment(device), "dtype": str(dtype), "rows": rows}


def format_table(result: dict) -> str:
    env = result["environment"]
    gpu = "block_sparse_ms" in result["rows"][0]
    head = ["| M x K x N | mask | density | dense ms | masked dense ms | auto ms (path) | auto / masked |"]
    if gpu:
        head = ["| M x K x N | mask | density | dense ms | masked dense ms | auto ms (path) | auto / masked | triton ms |"]
    lines = [f"{env['date']} | {env['device']} | torch {env['torch']} | pyprune {env['pyprune']} [{env['backends']}] | "
             f"{result['dtype']}, forward + backward", "", *head,
             "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "")]
    for r in result["rows"]:
        line = (f"| {r['M']}x{r['K']}x{r['N']} | {r['mask']} | {r['density']} | {r['dense_ms']:.1f} | "
                f"{r['masked_dense_ms']:.1f} | {r['auto_ms']:.1f} ({r['auto_path']}) | "
                f"{r['auto_ms'] / r['masked_dense_ms']:.2f} |")
        if gpu:
            line += f" {r['block_sparse_ms']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    return cli("block_sparse", __doc__, argv, run, format_table)
