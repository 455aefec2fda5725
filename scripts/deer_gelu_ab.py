"""What moving the FFN's GELU into the packed kernel's epilogue gives DEER and its AR baseline at batch 1.

    python scripts/deer_gelu_ab.py RUN_DIR [--sentences 30] [--rounds 3] [--dtype bfloat16]

First one FFN layer (384 -> 1536 on the packed kernel, every block live) at 1, 21
and 63 token rows: the layer then torch's GELU against the layer with the GELU
in its epilogue (median of 7 loops of 200 calls, interleaved). Then whole
decoding of the first test sentences one at a time, every linear packed
(``pack_for_inference``, which fuses the GELUs), with each fused GELU moved back
out to a separate ``nn.GELU`` and in, interleaved in one process: DEER at keep
1 and the smallest keep with 0 (CTC only) and 1 edit iteration, and the AR
baseline of RUN_DIR. Prints median ms, the ratio, and how many outputs stay the
same (bfloat16 rounds the fused output once instead of twice, which can flip a
greedy choice).
"""
import time

import torch
import torch.nn.functional as F
from torch import nn

from _deer_ab import median, setup
from pyprune.deer.cli import _load_baseline
from pyprune.deer.generate import generate_ids
from pyprune.deer.model import inference_copy
from pyprune.nn import PackedLinear
from pyprune.nn.packed import activation_slots


def fused_gelus(model: nn.Module) -> list:
    """(owner, attribute, layer) of every GELU that ``fuse_gelu`` moved into a packed layer."""
    return [(owner, name, layer) for owner, name, layer in activation_slots(model) if layer.activation == "gelu"]


def set_fused(sites: list, fused: bool) -> None:
    for owner, name, layer in sites:
        layer.activation = "gelu" if fused else "none"
        setattr(owner, name, nn.Identity() if fused else nn.GELU())


def layer_table(dtype: torch.dtype) -> None:
    weight, bias = torch.randn(1536, 384).to(dtype), torch.randn(1536).to(dtype)
    plain, fused = PackedLinear(weight, bias), PackedLinear(weight, bias, activation="gelu")
    print(f"FFN layer 384 -> 1536, {dtype}, us per call, median of 7 interleaved loops of 200 calls")
    print("| rows | layer + torch GELU | GELU in the epilogue | speed-up |")
    print("|---:|---:|---:|---:|")
    for rows in (1, 21, 63):
        x = torch.randn(rows, 384).to(dtype)
        calls = {"separate": lambda: F.gelu(plain(x)), "fused": lambda: fused(x)}
        times = {}
        for _ in range(7):
            for name, call in calls.items():
                call()
                start = time.perf_counter()
                for _ in range(200):
                    call()
                times.setdefault(name, []).append(1e6 * (time.perf_counter() - start) / 200)
        a, b = median(times["separate"]), median(times["fused"])
        print(f"| {rows} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


def main() -> None:
    args, deer, sources = setup(__doc__, lambda parser: parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16")))
    dtype = getattr(torch, args.dtype)
    with torch.inference_mode():
        layer_table(dtype)
    decoders = {}
    for keep in (max(deer.keep_ratios), min(deer.keep_ratios)):
        model, penalties = deer.sub_network(keep, dtype, packed=True), deer.decoding(keep)
        for iterations in (0, 1):
            decoders[f"DEER keep {keep:g}, {iterations} iter."] = (
                lambda m=model, p=penalties, k=iterations: generate_ids(m, sources, max_iter=k, batch_size=1, **p),
                fused_gelus(model))
    baseline = _load_baseline(args.run, deer)
    if baseline is not None:
        ar = inference_copy(baseline, dtype)
        decoders["autoregressive"] = (lambda m=ar: m.generate_ids(sources, batch_size=1), fused_gelus(ar))
    if not any(sites for _, sites in decoders.values()):
        raise SystemExit("nothing was fused (is the cpp extension built?)")
    times, outputs = {}, {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, (decode, sites) in decoders.items():
                for fused in (False, True):
                    set_fused(sites, fused)
                    start = time.perf_counter()
                    outputs[name, fused] = decode()
                    times.setdefault((name, fused), []).append(1e3 * (time.perf_counter() - start) / len(sources))
    print(f"\n{dtype}, batch 1, ms per sentence over {len(sources)} test sentences, median of {args.rounds} "
          "interleaved rounds")
    print("| decoding | GELUs fused | separate GELU ms | fused ms | speed-up | outputs unchanged |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (_, sites) in decoders.items():
        before, after = (median(times[name, fused]) for fused in (False, True))
        same = sum(a == b for a, b in zip(outputs[name, False], outputs[name, True]))
        print(f"| {name} | {len(sites)} | {before:.2f} | {after:.2f} | {before / after:.2f}x | {same}/{len(sources)} |")


if __name__ == "__main__":
    main()
