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
import torch
import torch.nn.functional as F
from torch import nn

from _deer_ab import ar_baseline, deer_decoders, interleaved, per_call_us, print_ab, setup
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
        calls = [lambda: F.gelu(plain(x)), lambda: fused(x)]
        for call in calls:                                                   # warm-up
            call()
        a, b = per_call_us(calls, 200, 7)
        print(f"| {rows} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


def main() -> None:
    args, deer, sources = setup(__doc__, dtype_option=True)
    dtype = args.dtype
    with torch.inference_mode():
        layer_table(dtype)
    ar = ar_baseline(args.run, deer, dtype)
    keeps = (max(deer.keep_ratios), min(deer.keep_ratios))
    decoders = deer_decoders(deer, sources, dtype, keeps, (0, 1), ar)
    models = {name: deer.sub_network(keep, dtype, packed=True)          # cached: the decoders' own models
              for keep in keeps for name in decoders if name.startswith(f"DEER keep {keep:g},")}
    sites = {name: fused_gelus(models.get(name, ar)) for name in decoders}
    if not any(sites.values()):
        raise SystemExit("nothing was fused (is the cpp extension built?)")
    with torch.inference_mode():
        times, outputs = interleaved(lambda name, fused: set_fused(sites[name], fused) or decoders[name](),
                                     list(decoders), (False, True), args.rounds, len(sources))
    print_ab(list(decoders), (False, True), times, outputs, ("separate GELU", "fused"),
             ("GELUs fused", {name: len(found) for name, found in sites.items()}), dtype)


if __name__ == "__main__":
    main()
