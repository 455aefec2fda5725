"""What the decoding attention kernel gives DEER and its AR baseline at batch 1.

    python scripts/deer_attention_ab.py RUN_DIR [--sentences 30] [--rounds 3] [--dtype bfloat16]

Decodes the first test sentences one at a time, every linear layer on the
packed-blocks kernel (``inference_copy``), with torch's attention
(``F.scaled_dot_product_attention``, the path before the kernel) and with
``pyprune_C::masked_attention``, interleaved in one process (every
configuration both ways, then again): DEER at keep 1 and the smallest keep
with 0 (CTC only), 1 and 2 edit iterations, and the AR baseline of RUN_DIR.
Prints the median ms per sentence, the ratio, and how many outputs stay the
same (the two attentions round differently, which can flip a greedy choice).
"""
import time

import torch

import pyprune.ops.attention as attention
from _deer_ab import median, setup
from pyprune.deer.cli import _load_baseline
from pyprune.deer.generate import generate_ids
from pyprune.deer.model import inference_copy


def use_kernel(on: bool, usable=attention.kernel_usable) -> None:
    # DEER's layers and the AR's attention look the switch up in the module at each call.
    attention.kernel_usable = usable if on else (lambda *tensors: False)


def main() -> None:
    args, deer, sources = setup(__doc__, lambda parser: parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16")))
    dtype = getattr(torch, args.dtype)
    baseline = _load_baseline(args.run, deer)
    decoders = {}
    for keep in (max(deer.keep_ratios), min(deer.keep_ratios)):
        model, penalties = deer.sub_network(keep, dtype, packed=True), deer.decoding(keep)
        for iterations in (0, 1, 2):
            decoders[f"DEER keep {keep:g}, {iterations} iter."] = (
                lambda m=model, p=penalties, k=iterations: generate_ids(m, sources, max_iter=k, batch_size=1, **p))
    if baseline is not None:
        ar = inference_copy(baseline, dtype)
        decoders["autoregressive"] = lambda m=ar: m.generate_ids(sources, batch_size=1)
    times, outputs = {}, {}
    with torch.inference_mode():
        for round_ in range(args.rounds):
            for name, decode in decoders.items():
                for kernel in (False, True):
                    use_kernel(kernel)
                    start = time.perf_counter()
                    out = decode()
                    times.setdefault((name, kernel), []).append(1e3 * (time.perf_counter() - start) / len(sources))
                    outputs[name, kernel] = out
    use_kernel(True)
    print(f"{dtype}, batch 1, ms per sentence over {len(sources)} test sentences, median of {args.rounds} "
          "interleaved rounds")
    print("| decoding | torch attention ms | kernel ms | speed-up | outputs unchanged |")
    print("|---|---:|---:|---:|---:|")
    for name in decoders:
        before, after = (median(times[name, kernel]) for kernel in (False, True))
        same = sum(a == b for a, b in zip(outputs[name, False], outputs[name, True]))
        print(f"| {name} | {before:.2f} | {after:.2f} | {before / after:.2f}x | {same}/{len(sources)} |")


if __name__ == "__main__":
    main()
