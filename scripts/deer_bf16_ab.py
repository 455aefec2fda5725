"""What bfloat16 on the packed kernel gives DEER and its AR baseline at batch 1.

    python scripts/deer_bf16_ab.py RUN_DIR [--sentences 30] [--rounds 3]

Decodes the first test sentences one at a time with every linear layer on
the packed-blocks kernel (``pack_for_inference``), the model in float32 and
in bfloat16, interleaved in one process (every configuration in both
dtypes, then again): DEER at every keep ratio with 0 (CTC only), 1 and 2
edit iterations, and the AR baseline of RUN_DIR. Prints the median ms per
sentence, the ratio, and how many outputs bfloat16 leaves unchanged (its
rounding can flip a greedy choice; ``pyprune deer evaluate --dtype
bfloat16`` gives the BLEU).
"""
import time

import torch

from _deer_ab import median, setup
from pyprune.deer.cli import _load_baseline
from pyprune.deer.generate import generate_ids
from pyprune.deer.model import inference_copy

DTYPES = (torch.float32, torch.bfloat16)


def main() -> None:
    args, deer, sources = setup(__doc__)
    baseline = _load_baseline(args.run, deer)
    decoders = {}
    for dtype in DTYPES:
        for keep in deer.keep_ratios:
            model, penalties = deer.sub_network(keep, dtype, packed=True), deer.decoding(keep)
            for iterations in (0, 1, 2):
                decoders[f"DEER keep {keep:g}, {iterations} iter.", dtype] = (
                    lambda m=model, p=penalties, k=iterations: generate_ids(m, sources, max_iter=k, batch_size=1, **p))
        if baseline is not None:
            ar = inference_copy(baseline, dtype)
            if ar.output_layer is None:
                raise SystemExit("the packed kernel does not run here (is the cpp extension built?)")
            decoders["autoregressive", dtype] = lambda m=ar: m.generate_ids(sources, batch_size=1)
    names = list(dict.fromkeys(name for name, _ in decoders))
    times, outputs = {}, {}
    with torch.inference_mode():
        for round_ in range(args.rounds):
            for name in names:
                for dtype in DTYPES:
                    start = time.perf_counter()
                    out = decoders[name, dtype]()
                    times.setdefault((name, dtype), []).append(1e3 * (time.perf_counter() - start) / len(sources))
                    outputs[name, dtype] = out
    print(f"batch 1, ms per sentence over {len(sources)} test sentences, median of {args.rounds} interleaved rounds")
    print("| decoding | float32 ms | bfloat16 ms | speed-up | outputs unchanged |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        before, after = (median(times[name, dtype]) for dtype in DTYPES)
        same = sum(a == b for a, b in zip(outputs[name, DTYPES[0]], outputs[name, DTYPES[1]]))
        print(f"| {name} | {before:.2f} | {after:.2f} | {before / after:.2f}x | {same}/{len(sources)} |")


if __name__ == "__main__":
    main()
