"""What the packed-blocks CPU kernel gives a trained DEER model's pruned sub-networks at batch 1.

    python scripts/deer_packed_ab.py RUN_DIR [--sentences 30] [--rounds 3]

Decodes the first test sentences one at a time at every keep ratio and 0/1/2
edit iterations, with the path choice before the kernel (no packed path, no
per-call cost: the compacted path at a few tokens) and with it, interleaved in
one process (every configuration both ways, then again), and checks both give
the same output. Prints the median ms per sentence and the ratio.
"""
import time

import pyprune.sparse.linear as linear
from _deer_ab import median, setup
from pyprune.deer.generate import generate_ids
from pyprune.sparse import layout as layouts


def use_packed(on: bool, usable=linear.packed_usable, call_cost=linear.CPU_CALL_COST) -> None:
    linear.packed_usable = usable if on else (lambda *args: False)
    linear.CPU_CALL_COST = call_cost if on else 0.0
    for _, _, layout in list(layouts._cache.values()):
        layout.path_choices.clear()                      # choices are memoised per layout


def main() -> None:
    args, deer, sources = setup(__doc__)
    configs = [(keep, iters) for keep in deer.keep_ratios for iters in (0, 1, 2)]
    times, outputs = {}, {}
    for round_ in range(args.rounds):
        for packed in (False, True):
            use_packed(packed)
            for keep, iters in configs:
                model, penalties = deer.sub_network(keep), deer.decoding(keep)
                if round_ == 0:
                    generate_ids(model, sources[:2], max_iter=iters, batch_size=1, **penalties)   # warm-up
                start = time.perf_counter()
                out = generate_ids(model, sources, max_iter=iters, batch_size=1, **penalties)
                times.setdefault((packed, keep, iters), []).append(1e3 * (time.perf_counter() - start) / len(sources))
                outputs[packed, keep, iters] = out
    use_packed(True)
    print("| keep | edit iterations | before ms | packed ms | speed-up | same output |")
    print("|---:|---:|---:|---:|---:|---|")
    for keep, iters in configs:
        before, after = (median(times[p, keep, iters]) for p in (False, True))
        print(f"| {keep:g} | {iters} | {before:.2f} | {after:.2f} | {before / after:.2f}x | "
              f"{outputs[False, keep, iters] == outputs[True, keep, iters]} |")


if __name__ == "__main__":
    main()
