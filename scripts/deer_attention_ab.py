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
import torch

import pyprune.ops.attention as attention
from _deer_ab import decoders_with_baseline, print_ab, setup, switched


def use_kernel(on: bool, usable=attention.kernel_usable) -> None:
    # DEER's layers and the AR's attention look the switch up in the module at each call.
    attention.kernel_usable = usable if on else (lambda *tensors: False)


def main() -> None:
    args, deer, sources = setup(__doc__, dtype_option=True)
    decoders = decoders_with_baseline(args, deer, sources, (0, 1, 2))
    with torch.inference_mode():
        times, outputs = switched(decoders, use_kernel, args.rounds, len(sources))
    print_ab(list(decoders), (False, True), times, outputs, ("torch attention", "kernel"), dtype=args.dtype)


if __name__ == "__main__":
    main()
