"""What reusing a deletion-only iteration's states gives two edit iterations at batch 1.

    python scripts/deer_state_reuse_ab.py RUN_DIR [--sentences 30] [--rounds 3]

When an edit iteration deletes and inserts nothing, its placeholder pass ran
on exactly the tokens the next iteration starts from, and ``generate_ids``
hands those states on instead of running the next iteration's first pass
again. This decodes the first test sentences one at a time at every keep
ratio with two edit iterations (the packed-kernel sub-networks, as
``generate`` decodes), with the states recomputed and reused, interleaved
in one process (every configuration both ways, then again), checks both
give the same output and counts the encoder passes. Prints the median ms per
sentence and the ratio.
"""
import time

import pyprune.deer.generate as generate
from _deer_ab import median, setup

REUSING = generate._edit


def recomputing(*args):
    return REUSING(*args)[0], None


def main() -> None:
    args, deer, sources = setup(__doc__)
    times, outputs, passes = {}, {}, {}
    for round_ in range(args.rounds):
        for reuse in (False, True):
            generate._edit = REUSING if reuse else recomputing
            for keep in deer.keep_ratios:
                model, penalties = deer.sub_network(keep, packed=True), deer.decoding(keep)
                if round_ == 0:
                    count = []
                    decode = model.decode_target
                    model.decode_target = (lambda cache, tokens, decode=decode, **rows:
                                           count.append(1) or decode(cache, tokens, **rows))
                    outputs[reuse, keep] = generate.generate_ids(model, sources, max_iter=2, batch_size=1, **penalties)
                    passes[reuse, keep] = len(count)
                    del model.decode_target
                start = time.perf_counter()
                generate.generate_ids(model, sources, max_iter=2, batch_size=1, **penalties)
                times.setdefault((reuse, keep), []).append(1e3 * (time.perf_counter() - start) / len(sources))
    generate._edit = REUSING
    print("| keep | edit passes recomputed / reused | recomputed ms | reused ms | speed-up | same output |")
    print("|---:|---:|---:|---:|---:|---|")
    for keep in deer.keep_ratios:
        before, after = (median(times[r, keep]) for r in (False, True))
        print(f"| {keep:g} | {passes[False, keep]} / {passes[True, keep]} | {before:.2f} | {after:.2f} | "
              f"{before / after:.2f}x | {outputs[False, keep] == outputs[True, keep]} |")


if __name__ == "__main__":
    main()
