"""What running each packed encoder layer as one C++ call (``pyprune_C::bert_layer``) gives DEER and its AR
baseline at batch 1.

    python scripts/deer_fused_layer_ab.py RUN_DIR [--sentences 30] [--rounds 3] [--dtype bfloat16]

Whole decoding of the first test sentences one at a time on the packed
sub-networks, every encoder layer run as Python ops (``_layer``: packed linears,
the attention kernel, LayerNorms; the anchor) against one ``bert_layer`` call
per layer (the same ops in C++, in the same order; where every layer of a model
fuses, one ``bert_layers`` call a pass), interleaved in one process:
DEER at keep 1 and the smallest keep with 0 (CTC only) and 1 edit iteration,
and the AR baseline of RUN_DIR (whose encoder pass is the only part that
changes). Prints median ms per sentence, the ratio, and how many outputs stay
the same (all should: the results are the same bits).
"""
import pyprune.deer.model as deer_model
from _deer_ab import decoders_with_baseline, setup, switch_ab

FUSED = deer_model._fused_weights


def use_fused(on: bool) -> None:
    deer_model._fused_weights = FUSED if on else (lambda *args: None)


def main() -> None:
    args, deer, sources = setup(__doc__, dtype_option=True)
    decoders = decoders_with_baseline(args, deer, sources, (0, 1))
    switch_ab(args, decoders, use_fused, len(sources), ("Python layers", "fused layers"))


if __name__ == "__main__":
    main()
