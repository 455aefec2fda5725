"""Block-sparse linear benchmark: forward + backward of Y = X W^T with W
masked in 32x32 blocks, against dense F.linear and masked dense (and torch's
BSR weights and the Triton kernels on a GPU), timed in the same run.

CPU: the automatic path must be no slower than masked dense at density 0.5.
Masks are random blocks, or structured (whole block rows pruned, as FFN
neuron pruning leaves them).

``--inference``: forward only without autograd at decoding's token counts,
on the layer shapes of the DEER demo's backbone (MiniLM: 384 hidden, 1536
FFN), random masks. Each timed pass runs enough copies of the layer to
overflow the last-level cache (64 MB of weights), as a model's layers do in
sequence; times are per layer call. Providers: dense ``F.linear`` (the
anchor), the compacted dense path with its weight kept, the packed-blocks
kernel and ``BlockSparseLinear`` under ``no_grad`` (auto).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from pyprune.nn import BlockSparseLinear
from pyprune.sparse import block_sparse_linear, choose_path, expand_mask, layout_for
from pyprune.sparse.linear import compact_dense, compact_weight
from pyprune.sparse.packed import pack_blocks, packed_block_linear

from .common import cli, environment, environment_line, interleaved_median_ms, median_ms

CPU_GRID = [(1024, 1024, 1024)]          # (M tokens, K in, N out)
GPU_GRID = [(m, k, k) for k in (768, 1024, 3072, 4096) for m in (1024, 4096, 16384)]
DENSITIES = (1.0, 0.75, 0.5, 0.25, 0.1)
INFERENCE_SHAPES = [(384, 384), (384, 1536), (1536, 384)]     # (K in, N out)
INFERENCE_TOKENS = (1, 14, 45, 480)      # batch-1 decoding pass, CTC pass, batch 32
INFERENCE_DENSITIES = (1.0, 0.75, 0.5, 0.25)
INFERENCE_WEIGHT_BYTES = 64 << 20


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


@torch.no_grad()
def run_inference(device: str = "cpu", repeats: int = 7, dtype=torch.float32) -> dict:
    rows = []
    for K, N in INFERENCE_SHAPES:
        copies = max(1, INFERENCE_WEIGHT_BYTES // (K * N * torch.finfo(dtype).bits // 8))
        for density in INFERENCE_DENSITIES:
            mask = make_mask(N, K, density, False, device)
            layers = [BlockSparseLinear.from_dense(torch.nn.Linear(K, N, device=device, dtype=dtype), mask)
                      for _ in range(copies)]
            layout = layout_for(mask)
            kept = [(layer.weight, layer.bias, compact_weight(layer.weight, layout),
                     pack_blocks(layer.weight, mask)) for layer in layers]
            for M in INFERENCE_TOKENS:
                x = torch.randn(M, K, device=device, dtype=dtype)
                providers = {
                    "dense": lambda: [F.linear(x, w, b) for w, b, _, _ in kept],
                    "compact_dense": lambda: [compact_dense(x, w, b, layout, sub) for w, b, sub, _ in kept],
                    "packed_blocks": lambda: [packed_block_linear(x, packed, b) for _, b, _, packed in kept],
                    "auto": lambda: [layer(x) for layer in layers]}
                for fn in providers.values():
                    fn()                                     # warm-up (and the auto path's kept copies)
                times = interleaved_median_ms(list(providers.values()), device, repeats)
                row = {"M": M, "K": K, "N": N, "density": density, "copies": copies,
                       "auto_path": layers[0].explain(M).path}
                row.update({f"{name}_us": 1e3 * ms / copies for name, ms in zip(providers, times)})
                rows.append(row)
    return {"environment": environment(device), "dtype": str(dtype), "rows": rows, "inference": True}


def format_inference_table(result: dict) -> str:
    env = result["environment"]
    lines = [f"{environment_line(env)} | {result['dtype']}, forward without autograd, us per layer call, "
             f"weights cycled through {INFERENCE_WEIGHT_BYTES >> 20} MB", "",
             "| tokens | K x N | density | dense us | compact dense us | packed blocks us | auto us (path) "
             "| dense / packed | dense / auto |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['M']} | {r['K']}x{r['N']} | {r['density']} | {r['dense_us']:.1f} | "
                     f"{r['compact_dense_us']:.1f} | {r['packed_blocks_us']:.1f} | {r['auto_us']:.1f} "
                     f"({r['auto_path']}) | {r['dense_us'] / r['packed_blocks_us']:.2f} | "
                     f"{r['dense_us'] / r['auto_us']:.2f} |")
    return "\n".join(lines)


def run(device: str = "cpu", repeats: int = 15, dtype=torch.float32, inference: bool = False) -> dict:
    if inference:
        return run_inference(device, dtype=dtype)
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
    if result.get("inference"):
        return format_inference_table(result)
    env = result["environment"]
    gpu = "block_sparse_ms" in result["rows"][0]
    head = ["| M x K x N | mask | density | dense ms | masked dense ms | auto ms (path) | auto / masked |"]
    if gpu:
        head = ["| M x K x N | mask | density | dense ms | masked dense ms | auto ms (path) | auto / masked | triton ms |"]
    lines = [f"{environment_line(env)} | "
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
    def arguments(parser):
        parser.add_argument("--inference", action="store_true",
                            help="forward without autograd at decoding's token counts")
        parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                            help="weights and inputs (default float32; the packed kernel runs float32 and bfloat16)")
    return cli("block_sparse", __doc__, argv, run, format_table, arguments,
               lambda args: {"inference": args.inference, "dtype": getattr(torch, args.dtype)})
