"""What summing the embedding tables directly (``_plain_embeddings``) instead of calling the backbone's
embedding module gives DEER at batch 1.

    python scripts/deer_embeddings_ab.py RUN_DIR [--sentences 30] [--rounds 3] [--dtype bfloat16]

First one embedding call over a test sentence's CTC slots (2 x its source
length), the module against the direct sums (median of 7 interleaved loops of
300 calls; both must give the same bits). Then whole decoding of the first test
sentences one at a time on the packed sub-networks, with the module (the
anchor) and the direct sums, interleaved in one process: DEER at keep 1 and the
smallest keep with 0 (CTC only) and 1 edit iteration (each decoding embeds the
source and the slots, and the target once per edit pass). Prints median ms per
sentence, the ratio, and how many outputs stay the same (all should).
"""
import torch

import pyprune.deer.model as deer_model
from _deer_ab import call_pair, deer_decoders, setup, switch_ab

PLAIN = deer_model.PLAIN_EMBEDDINGS


def use_plain(on: bool) -> None:
    deer_model.PLAIN_EMBEDDINGS = PLAIN if on else ()


def call_table(deer, sources, dtype) -> None:
    model = deer.sub_network(1.0, dtype, packed=True)
    source = torch.tensor([sources[0]])
    slots = model.ctc_slots(source, source.ne(model.config.pad_id).sum(1))

    def way(on: bool):
        def run():
            use_plain(on)
            try:
                return model._embed(slots, model.target_type)
            finally:
                use_plain(True)
        return run
    same, module, plain = call_pair(way(False), way(True))
    print(f"one embedding call, {tuple(slots.shape)} slots, {dtype}: module {module:.1f} us, direct sums "
          f"{plain:.1f} us ({module / plain:.2f}x), same bits: {same}")


def main() -> None:
    args, deer, sources = setup(__doc__, dtype_option=True)
    keeps = (max(deer.keep_ratios), min(deer.keep_ratios))
    decoders = deer_decoders(deer, sources, args.dtype, keeps, (0, 1))
    switch_ab(args, decoders, use_plain, len(sources), ("embedding module", "direct sums"),
              before=lambda: call_table(deer, sources, args.dtype))


if __name__ == "__main__":
    main()
