"""What running the last layer only on the rows whose states are used gives DEER.

    python scripts/deer_last_layer_ab.py RUN_DIR [--sentences 30] [--rounds 3] [--dtype bfloat16]

A layer's output for a row feeds only the next layer, so the last layer needs
every row's keys and values but the queries, attention, output and FFN of
the used rows alone: in the CTC pass the target rows (not the source's), in
a fill pass and training's insertion pass the placeholders.

First training's insertion pass on the first 32 training pairs, float32
(timed after the source pass: the reference with random deletions and
placeholders, forward and backward through the insertion loss): vocabulary
logits at every position and the loss picked at the placeholders (the
anchor) against the last layer and the logits at the placeholders only
(``decode_target(rows=...)``); median of ``--rounds`` interleaved steps.

Then decoding of the first test sentences one at a time at keep 1 and the
smallest keep with 0 (CTC only), 1 and 2 edit iterations (the packed
sub-networks, as ``generate`` decodes), with the last layer over every row
(the anchor, written out below as the model computed it before) and over
the used rows, interleaved in one process. Prints the median ms per
sentence, the ratio, and how many outputs stay the same (the rows'
arithmetic is the same; a GEMM over fewer rows may round differently, which
can flip a greedy choice).
"""
import time

import torch
import torch.nn.functional as F

import pyprune.deer.model as deer_model
from _deer_ab import deer_decoders, median, print_ab, setup, switched
from pyprune.data.parallel import read_split
from pyprune.deer.cli import _data_dir
from pyprune.deer.generate import pad_rows
from pyprune.deer.losses import random_deletion
from pyprune.deer.model import DeerModel, SourceCache, _layer_kv
from pyprune.ops import get_ins_targets

USED_ROWS = DeerModel.encode_with_target, deer_model._layer_on_rows


def every_row_encode_with_target(self, sources, targets):
    S = sources.shape[1]
    source_valid = sources.ne(self.config.pad_id)
    mask = torch.cat([source_valid, targets.ne(self.config.pad_id)], 1)[:, None, None, :]
    h = torch.cat([self._embed(sources, 0), self._embed(targets, self.target_type)], 1)
    keys, values = [], []
    for layer in self.encoder.encoder.layer:
        h, k, v = _layer_kv(layer, h, h, None, mask, source_rows=S)
        keys.append(k[:, :, :S])
        values.append(v[:, :, :S])
    return SourceCache(keys, values, source_valid), h[:, S:]


def every_row_layer(layer, h, rows, prefix, mask):
    return _layer_kv(layer, h, h, prefix, mask)[0][rows]


def use_rows(on: bool) -> None:
    DeerModel.encode_with_target, deer_model._layer_on_rows = (
        USED_ROWS if on else (every_row_encode_with_target, every_row_layer))


def training_table(deer, rounds: int) -> None:
    model, c = deer.model.train(), deer.model.config
    pairs = read_split(_data_dir("default"), "train")[:32]
    sources = pad_rows(deer.encode([s for s, _ in pairs]), c.pad_id)
    targets = pad_rows(deer.encode([t for _, t in pairs], name="targets"), c.pad_id)
    y_del = random_deletion(targets, model, torch.Generator().manual_seed(0))
    masked, masked_tokens, _ = get_ins_targets(y_del, targets, c.pad_id, c.mask_id)
    words = model.to_output(targets[masked]) - 1

    def step(used_rows: bool) -> float:
        cache, matrix = model.encode_source(sources), model.output_matrix()
        start = time.perf_counter()
        if used_rows:
            loss = F.cross_entropy(model.vocab_logits(model.decode_target(cache, masked_tokens, rows=masked),
                                                      matrix)[:, 1:], words)
        else:
            loss = F.cross_entropy(model.vocab_logits(model.decode_target(cache, masked_tokens), matrix)[masked][:, 1:],
                                   words)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return 1e3 * (time.perf_counter() - start)

    times = {False: [], True: []}
    for _ in range(rounds):
        for used_rows in times:
            times[used_rows].append(step(used_rows))
    a, b = median(times[False]), median(times[True])
    print(f"training's insertion pass, batch 32 ({int(masked.sum())} placeholders in "
          f"{int(targets.ne(c.pad_id).sum())} tokens), float32, ms per step, median of {rounds} interleaved rounds")
    print("| every position ms | placeholders only ms | speed-up |\n|---:|---:|---:|")
    print(f"| {a:.0f} | {b:.0f} | {a / b:.2f}x |")
    model.eval()


def main() -> None:
    args, deer, sources = setup(__doc__, dtype_option=True)
    training_table(deer, args.rounds)
    keeps = (max(deer.keep_ratios), min(deer.keep_ratios))
    decoders = deer_decoders(deer, sources, args.dtype, keeps, (0, 1, 2))
    with torch.inference_mode():
        times, outputs = switched(decoders, use_rows, args.rounds, len(sources))
    print_ab(list(decoders), (False, True), times, outputs, ("every row", "used rows"), dtype=args.dtype)


if __name__ == "__main__":
    main()
