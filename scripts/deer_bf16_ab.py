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
import torch

from _deer_ab import deer_decoders, interleaved, print_ab, setup
from pyprune.deer.cli import _load_baseline
from pyprune.deer.model import inference_copy

DTYPES = (torch.float32, torch.bfloat16)


def main() -> None:
    args, deer, sources = setup(__doc__)
    baseline = _load_baseline(args.run, deer)
    decoders = {}
    for dtype in DTYPES:
        ar = None if baseline is None else inference_copy(baseline, dtype)
        if ar is not None and ar.output_layer is None:
            raise SystemExit("the packed kernel does not run here (is the cpp extension built?)")
        decoders[dtype] = deer_decoders(deer, sources, dtype, deer.keep_ratios, (0, 1, 2), ar)
    names = list(decoders[DTYPES[0]])
    with torch.inference_mode():
        times, outputs = interleaved(lambda name, dtype: decoders[dtype][name](), names, DTYPES, args.rounds,
                                     len(sources))
    print_ab(names, DTYPES, times, outputs, ("float32", "bfloat16"))


if __name__ == "__main__":
    main()
