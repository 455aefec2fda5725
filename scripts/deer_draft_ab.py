"""What making the CTC draft one op (``ctc_greedy_draft``: logits in, framed token rows out) gives DEER at
batch 1.

    python scripts/deer_draft_ab.py RUN_DIR [--sentences 30] [--rounds 3] [--dtype bfloat16]

The anchor is the draft as it was built before: the blank penalty subtracted
in place, ``ctc_greedy_decode``, the output classes mapped to token ids and
framed as [bos] tokens [eos] by torch ops. First one draft from a test
sentence's CTC logits, the two ways (median of 7 interleaved loops of 300
calls; the first calls must give the same rows; the anchor's later calls
lower the blank again, which changes their rows, not their cost). Then whole decoding of the first test
sentences one at a time on the packed sub-networks, the two ways interleaved
in one process: DEER at keep 1 and the smallest keep with 0 (CTC only) and 1
edit iteration, and the AR baseline (which makes no draft: a control). Prints
median ms per sentence, the ratio, and how many outputs stay the same (all
should).
"""
import torch

import pyprune.deer.generate as generate
from _deer_ab import call_pair, decoders_with_baseline, setup, switch_ab
from pyprune.deer.losses import ctc_draft_tokens
from pyprune.ops import ctc_greedy_decode


def composed_draft(model, logits, n_slots, blank_penalty=0.0):
    """The anchor: the draft as torch ops around the greedy decoder (the logits are the caller's to
    overwrite, as ``ctc_draft`` handed them over)."""
    c = model.config
    if blank_penalty:
        logits[..., 0] -= blank_penalty
    classes, lengths = ctc_greedy_decode(logits, n_slots, blank=0, batch_first=True)
    tokens = model.to_tokens(classes)
    lengths = lengths.clamp(max=model.max_positions - 2)
    width = int(lengths.max()) + 2
    pos = torch.arange(width)[None].expand(len(lengths), width)
    body = tokens.gather(1, (pos - 1).clamp(min=0, max=tokens.shape[1] - 1))
    out = torch.where(pos == 0, c.bos_id, torch.where(pos <= lengths[:, None], body, c.pad_id))
    return out.masked_fill(pos == lengths[:, None] + 1, c.eos_id)


def use_op(on: bool) -> None:
    generate.ctc_draft_tokens = ctc_draft_tokens if on else composed_draft


def call_table(deer, sources, dtype) -> None:
    model = deer.sub_network(1.0, dtype, packed=True)
    penalty = deer.decoding(1.0)["blank_penalty"]
    source = torch.tensor([sources[0]])
    lengths = source.ne(model.config.pad_id).sum(1)
    n = model.num_slots(lengths)
    _, h = model.encode_with_target(source, model.ctc_slots(source, lengths))
    logits = model.vocab_logits(h)
    scratch = logits.clone()           # the anchor subtracts the penalty in place: every call on this copy
    same, composed, op = call_pair(lambda: composed_draft(model, scratch, n, penalty),
                                   lambda: ctc_draft_tokens(model, logits, n, penalty))
    print(f"one draft from {tuple(logits.shape)} logits, {dtype}, blank penalty {penalty:g}: torch ops "
          f"{composed:.1f} us, one op {op:.1f} us ({composed / op:.2f}x), same rows: {same}")


def main() -> None:
    args, deer, sources = setup(__doc__, dtype_option=True)
    decoders = decoders_with_baseline(args, deer, sources, (0, 1))
    switch_ab(args, decoders, use_op, len(sources), ("torch ops", "one op"),
              before=lambda: call_table(deer, sources, args.dtype))


if __name__ == "__main__":
    main()
