"""What the C++ apply kernels give DEER's edit iterations at batch 1.

    python scripts/deer_apply_ab.py RUN_DIR [--sentences 30] [--rounds 5] [--dtype bfloat16]

First the two ops alone on one 21-token row (us per call, median of 7
interleaved loops of 500 calls): ``apply_del_words`` and ``apply_ins_masks``
on ``pyprune_C::lev_apply_*`` and on their reference composition (the prefix
sums and scatters that ran on the CPU before the kernels, now behind the same
op). Then whole decoding of the first test sentences one at a time, every
linear packed, with the kernels and with the composition, interleaved in one
process: DEER at keep 1 and the smallest keep with 1 and 2 edit iterations
(CTC-only decoding never applies an edit). Prints median ms, the ratio and
how many outputs stay the same (all should: the kernels are exact).
"""

import torch

from _deer_ab import deer_decoders, median, print_ab, setup, switched
from pyprune import backends
from pyprune.ops import apply_del_words, apply_ins_masks

KERNELS = ("lev_apply_del_words", "lev_apply_ins_masks")


def use_kernels(on: bool, has_kernel=backends.has_kernel) -> None:
    # The op layer looks has_kernel up in the backends module at each call.
    backends.has_kernel = has_kernel if on else (lambda op, key: op not in KERNELS and has_kernel(op, key))


def op_table() -> None:
    pad, bos, eos, unk = 0, 101, 102, 103
    tokens = torch.randint(1000, 2000, (1, 21), generator=torch.Generator().manual_seed(0))
    tokens[0, 0], tokens[0, -1] = bos, eos
    flags = torch.zeros_like(tokens)
    flags[0, 5] = 1
    counts = torch.zeros(1, 20, dtype=torch.long)
    counts[0, 3] = 2
    calls = {"apply_del_words": lambda: apply_del_words(tokens, None, None, flags, pad, bos, eos),
             "apply_ins_masks": lambda: apply_ins_masks(tokens, None, counts, pad, unk, eos, max_length=24)}
    loops = {name: lambda call=call: [call() for _ in range(500)] for name, call in calls.items()}
    times, _ = switched(loops, use_kernels, 7, 500)
    print("one row of 21 tokens, us per call, median of 7 interleaved loops of 500 calls")
    print("| op | composition us | kernel us | speed-up |")
    print("|---|---:|---:|---:|")
    for name in calls:
        before, after = (1e3 * median(times[name, on]) for on in (False, True))
        print(f"| {name} | {before:.1f} | {after:.1f} | {before / after:.2f}x |")


def main() -> None:
    args, deer, sources = setup(__doc__, dtype_option=True)
    if not all(backends.has_kernel(op, "CPU") for op in KERNELS):
        raise SystemExit("the apply kernels are not built (is the cpp extension built?)")
    with torch.inference_mode():
        op_table()
        keeps = (max(deer.keep_ratios), min(deer.keep_ratios))
        decoders = deer_decoders(deer, sources, args.dtype, keeps, (1, 2))
        times, outputs = switched(decoders, use_kernels, args.rounds, len(sources))
    print_ab(list(decoders), (False, True), times, outputs, ("composition", "kernels"), dtype=args.dtype)


if __name__ == "__main__":
    main()
