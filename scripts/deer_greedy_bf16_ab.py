"""What reading bfloat16 CTC logits in the greedy decoder (no float32 copy) gives DEER's batched decoding.

    python scripts/deer_greedy_bf16_ab.py RUN_DIR [--sentences 96] [--batch-size 32] [--rounds 3]

Until this change ``ctc_greedy_decode`` copied bfloat16 scores to float32
before its kernel ran; the CPU kernel now reads them as they are (the same
decisions: a bfloat16 widens to float32 exactly). First the op alone on
DEER-shaped logits (batch 32, 54 frames, 5,327 classes narrowed from a row of
5,344, batch-first, as the packed output layer leaves them): the float32 copy
then the kernel (the anchor) against the kernel on the bfloat16 logits, median
of 7 interleaved loops. Then whole decoding in bfloat16 of the first
--sentences test sentences at --batch-size on the packed sub-networks, the
draft's decoder (now ``ctc_greedy_draft``, the same kernel) switched between
reading a float32 copy and reading the logits, interleaved in one process: DEER at
keep 1 and 0.25, CTC only and one edit iteration. Prints median ms per
sentence, the ratio, and how many outputs stay the same (all should).
"""
import torch

from _deer_ab import interleaved, per_call_us, print_ab, setup
import pyprune.deer.losses as losses
from pyprune.deer.generate import generate_ids
from pyprune.ops import ctc_greedy_decode, ctc_greedy_draft


def float32_first(scores, input_lengths, blank=0, batch_first=False):
    """The anchor: what the op did before, a float32 copy decoded."""
    return ctc_greedy_decode(scores.float(), input_lengths, blank, batch_first)


def draft_from_float32(scores, input_lengths, class_map, blank_penalty=0.0, **frame):
    """The anchor of whole decoding: the draft decoded from a float32 copy (the blank penalty subtracted in
    bfloat16 first, so the decisions are the same)."""
    scores = scores.clone()
    scores[..., frame.get("blank", 0)] -= blank_penalty
    return ctc_greedy_draft(scores.float(), input_lengths, class_map, **frame)


def op_table() -> None:
    logits = torch.randn(32, 54, 5344).to(torch.bfloat16)[..., :5327]
    lengths = torch.full((32,), 54)
    calls = {"copy": lambda: float32_first(logits, lengths, batch_first=True),
             "direct": lambda: ctc_greedy_decode(logits, lengths, batch_first=True)}
    a, b = (call() for call in calls.values())                        # (also the warm-up)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    before, after = (us / 1e3 for us in per_call_us(list(calls.values()), 10, 7))
    print("ctc_greedy_decode, bfloat16 logits (32, 54, 5327) batch-first, ms per call, median of 7 loops of 10")
    print("| float32 copy, then the kernel | the kernel on bfloat16 | speed-up |\n|---:|---:|---:|")
    print(f"| {before:.2f} | {after:.2f} | {before / after:.2f}x |")


def main() -> None:
    args, deer, sources = setup(__doc__, lambda p: p.add_argument("--batch-size", type=int, default=32))
    op_table()
    decoders = {}
    for keep in (1.0, 0.25):
        model, penalties = deer.sub_network(keep, torch.bfloat16, packed=True), deer.decoding(keep)
        for k in (0, 1):
            decoders[f"DEER keep {keep:g}, {k} iter."] = (
                lambda m=model, p=penalties, k=k: generate_ids(m, sources, max_iter=k, batch_size=args.batch_size,
                                                               **p))

    def run(name, direct):
        losses.ctc_greedy_draft = ctc_greedy_draft if direct else draft_from_float32
        return decoders[name]()

    with torch.inference_mode():
        try:
            for name in decoders:                       # warm-up
                run(name, True)
            times, outputs = interleaved(run, list(decoders), (False, True), args.rounds, len(sources))
        finally:
            losses.ctc_greedy_draft = ctc_greedy_draft
    print_ab(list(decoders), (False, True), times, outputs, ("float32 copy", "bfloat16 read"), dtype=torch.bfloat16,
             batch=args.batch_size)


if __name__ == "__main__":
    main()
