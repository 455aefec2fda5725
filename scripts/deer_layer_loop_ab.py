"""What running each encoder pass as one ``pyprune_C::bert_layers`` call, on weights gathered once per
decoding call, gives DEER's decoding and the AR baseline's at batch 1, against one ``bert_layer`` call per
layer, each finding its layer's packed weights (``_fused_weights``).

    python scripts/deer_layer_loop_ab.py RUN_DIR [--sentences 30] [--rounds 3] [--dtype bfloat16]

Decodes the first test sentences one at a time on the packed sub-networks
(keep 1 and the smallest keep, CTC only and one edit iteration) and with
RUN_DIR's AR baseline (its encoder pass), two ways interleaved in one
process: layer by layer (``fused_layers`` switched off, so every pass
takes the per-layer path) and as the library runs. Both run the same layer
op on the same inputs, so the outputs must be the same. Prints median ms
per sentence, the ratio and how many outputs stay the same.
"""
import pyprune.deer.baseline as baseline_module
import pyprune.deer.model as deer_model
from _deer_ab import decoders_with_baseline, setup, switch_ab

LIBRARY = deer_model.fused_layers


def use_passes(on: bool) -> None:
    for module in (deer_model, baseline_module):
        module.fused_layers = LIBRARY if on else (lambda *args: None)


def main() -> None:
    args, deer, sources = setup(__doc__, dtype_option=True)
    decoders = decoders_with_baseline(args, deer, sources, (0, 1))
    switch_ab(args, decoders, use_passes, len(sources), ("layer by layer", "one call a pass"))


if __name__ == "__main__":
    main()
