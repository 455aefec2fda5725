"""Which part of a DEER edit iteration helps or hurts: BLEU of the CTC draft, of the draft after the
deletion pass only, after the insertion passes only (placeholders + fill), and after both (one iteration).

    python scripts/deer_edit_diagnosis.py RUN_DIR [--data default] [--split valid] [--limit 200] [--keep 1]

Prints the four BLEU figures (sacrebleu, lowercased, as ``pyprune deer evaluate``), how many draft tokens the
deletion classifier removes and how many placeholders the iteration inserts after it.
"""
import argparse

import torch

from pyprune.data.parallel import read_split
from pyprune.deer import Deer
from pyprune.deer.cli import _data_dir
from pyprune.deer.evaluate import bleu
from pyprune.deer.generate import _trim, ctc_draft, sorted_batches
from pyprune.ops import apply_del_words, apply_ins_masks, apply_ins_words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--data", default="default")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--keep", type=float, default=1.0)
    args = parser.parse_args()
    deer, state = Deer.load(args.run)
    pairs = read_split(_data_dir(args.data), args.split)[:args.limit]
    sources, references = deer.encode([s for s, _ in pairs]), [t for _, t in pairs]
    model = deer.sub_network(args.keep)
    c = model.config
    kinds = ("CTC draft", "deletion only", "insertion only", "one iteration")
    outputs = {k: [None] * len(sources) for k in kinds}
    counts = {"draft tokens": 0, "deleted": 0, "placeholders": 0}

    def delete(cache, tokens):
        decision = model.deletion_logits(model.decode_target(cache, tokens)).argmax(-1)
        editable = tokens.ne(c.pad_id) & tokens.ne(c.bos_id) & tokens.ne(c.eos_id)
        counts["deleted"] += int((decision.bool() & editable).sum())
        return _trim(apply_del_words(tokens, None, None, decision, c.pad_id, c.bos_id, c.eos_id)[0], c.pad_id)

    def insert(cache, tokens, count=True):
        gaps = model.placeholder_logits(model.decode_target(cache, tokens)).argmax(-1) * tokens[:, 1:].ne(c.pad_id)
        counts["placeholders"] += int(gaps.sum()) if count else 0
        width = min(model.max_positions, tokens.shape[1] + int(gaps.sum(1).max()))
        holes = _trim(apply_ins_masks(tokens, None, gaps, c.pad_id, c.mask_id, c.eos_id, max_length=width)[0],
                      c.pad_id)
        if not bool(holes.eq(c.mask_id).any()):
            return holes
        words = model.to_tokens(model.vocab_logits(model.decode_target(cache, holes))[..., 1:].argmax(-1) + 1)
        return apply_ins_words(holes, None, words, None, c.mask_id)[0]

    with torch.no_grad():
        for index, batch in sorted_batches(sources, 32, c.pad_id, model.output_bias.device):
            cache = model.encode_source(batch)
            draft = ctc_draft(model, cache, batch)
            counts["draft tokens"] += int(draft.ne(c.pad_id).sum()) - 2 * len(index)
            deleted = delete(cache, draft)
            results = dict(zip(kinds, (draft, deleted, insert(cache, draft, count=False), insert(cache, deleted))))
            for kind, tokens in results.items():
                for row, i in enumerate(index):
                    outputs[kind][i] = [int(t) for t in tokens[row] if int(t) not in (c.pad_id, c.bos_id, c.eos_id)]
    print(f"{args.run} (step {state.get('step')}), keep {args.keep:g}, {len(pairs)} {args.split} pairs")
    for kind in kinds:
        print(f"{kind:>15}: BLEU {bleu(deer.decode(outputs[kind]), references):.2f}")
    print(", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
