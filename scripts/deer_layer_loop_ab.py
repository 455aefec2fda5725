"""What finding each fused encoder layer's packed weights on every call costs DEER's decoding at batch 1: an
upper bound on what gathering them once per model could give.

    python scripts/deer_layer_loop_ab.py RUN_DIR [--sentences 30] [--rounds 3] [--dtype bfloat16]

Decodes the first test sentences one at a time on the packed sub-networks
(keep 1 and the smallest keep, CTC only and one edit iteration) two ways,
interleaved in one process: as the library does (each ``_layer_kv`` call
runs ``_fused_weights``, which finds the layer's packed weights and checks
them and the inputs, then calls ``pyprune_C::bert_layer``), and with
``_layer_kv`` swapped for a bare ``bert_layer`` call on the weights gathered
once per layer (a prototype: it checks nothing, and is no path of the
library). Both call the same op on the same inputs, so the outputs must be
the same. Prints median ms per sentence, the ratio and how many outputs stay
the same.
"""
import torch

import pyprune.deer.model as deer_model
from _deer_ab import deer_decoders, print_ab, setup, switched

LIBRARY = deer_model._layer_kv
GATHERED = {}                            # id(layer) -> (layer, (weights, heads, eps)); the layer kept alive


def gathered_layer_kv(layer, kv_in, q_in, prefix, mask, source_rows=0):
    if id(layer) not in GATHERED:
        fused = deer_model._fused_weights(layer, q_in, mask)
        if fused is None:
            raise SystemExit("the fused layer cannot run this model's layers (is the extension built?)")
        GATHERED[id(layer)] = layer, fused
    prefix_k, prefix_v = prefix if prefix is not None else (None, None)
    return torch.ops.pyprune_C.bert_layer(kv_in, q_in, prefix_k, prefix_v, mask[:, 0, 0], source_rows,
                                          *GATHERED[id(layer)][1])


def use_gathered(on: bool) -> None:
    deer_model._layer_kv = gathered_layer_kv if on else LIBRARY


def main() -> None:
    args, deer, sources = setup(__doc__, dtype_option=True)
    keeps = (max(deer.keep_ratios), min(deer.keep_ratios))
    decoders = deer_decoders(deer, sources, args.dtype, keeps, (0, 1))
    try:
        with torch.inference_mode():
            for decode in decoders.values():                  # warm-up, both ways
                for on in (True, False):
                    use_gathered(on)
                    decode()
            times, outputs = switched(decoders, use_gathered, args.rounds, len(sources))
    finally:
        use_gathered(False)
    print_ab(list(decoders), (False, True), times, outputs, ("as the library runs", "weights gathered once"),
             dtype=args.dtype)


if __name__ == "__main__":
    main()
