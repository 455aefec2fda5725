"""Which part of a DEER edit iteration helps or hurts: BLEU of the CTC draft, of the draft after the
deletion pass only, after the insertion passes only (placeholders + fill), and after both (one iteration).

    python scripts/deer_edit_diagnosis.py RUN_DIR [--data default] [--split valid] [--limit 200] [--keep 1]
                                          [--blank-penalty P] [--deletion-penalty D] [--insertion-penalty I]

Prints the four BLEU figures (sacrebleu, lowercased, as ``pyprune deer evaluate``), how many draft tokens the
deletion classifier removes and how many tokens the iteration inserts after it.
"""
import argparse

import torch

from pyprune.data.parallel import read_split
from pyprune.deer import Deer
from pyprune.deer.cli import _data_dir
from pyprune.deer.evaluate import bleu
from pyprune.deer.generate import ctc_draft, delete_words, insert_words, sorted_batches, words_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--data", default="default")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--keep", type=float, default=1.0)
    for name in ("blank", "deletion", "insertion"):
        parser.add_argument(f"--{name}-penalty", type=float, default=None, help="default: the trained one of the keep")
    args = parser.parse_args()
    deer, state = Deer.load(args.run)
    pairs = read_split(_data_dir(args.data), args.split)[:args.limit]
    sources, references = deer.encode([s for s, _ in pairs]), [t for _, t in pairs]
    model = deer.sub_network(args.keep)
    p = deer.decoding(args.keep, args.blank_penalty, args.deletion_penalty, args.insertion_penalty)
    c = model.config
    kinds = ("CTC draft", "deletion only", "insertion only", "one iteration")
    outputs = {k: [None] * len(sources) for k in kinds}
    with torch.no_grad():
        for index, batch in sorted_batches(sources, 32, c.pad_id, model.output_bias.device):
            cache, draft = ctc_draft(model, batch, p["blank_penalty"])
            deleted = delete_words(model, draft, model.decode_target(cache, draft), p["deletion_penalty"])
            results = (draft, deleted, insert_words(model, cache, draft, penalty=p["insertion_penalty"]),
                       insert_words(model, cache, deleted, penalty=p["insertion_penalty"]))
            for kind, tokens in zip(kinds, results):
                for row, i in enumerate(index):
                    outputs[kind][i] = words_of(tokens[row], c)
    print(f"{args.run} (step {state.get('step')}), keep {args.keep:g}, blank / deletion / insertion penalty "
          f"{p['blank_penalty']:.2f} / {p['deletion_penalty']:g} / {p['insertion_penalty']:g}, "
          f"{len(pairs)} {args.split} pairs")
    for kind in kinds:
        print(f"{kind:>15}: BLEU {bleu(deer.decode(outputs[kind]), references):.2f}")
    length = {kind: sum(map(len, outputs[kind])) for kind in kinds}
    print(f"draft tokens {length['CTC draft']}, deleted {length['CTC draft'] - length['deletion only']}, "
          f"inserted after the deletions {length['one iteration'] - length['deletion only']}")


if __name__ == "__main__":
    main()
