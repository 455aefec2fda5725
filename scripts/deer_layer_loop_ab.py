"""What the Python around each fused encoder layer costs DEER's decoding at batch 1: an upper bound on what
running a pass's layers as one call (with their packed weights gathered once) could give.

    python scripts/deer_layer_loop_ab.py RUN_DIR [--sentences 30] [--rounds 3] [--dtype bfloat16]

Decodes the first test sentences one at a time on the packed sub-networks
(keep 1 and the smallest keep, CTC only and one edit iteration) two ways,
interleaved in one process: as the library does (per layer: ``_layer_kv``,
``_fused_weights`` finding the layer's packed weights and checking them, the
mask's key-padding row, one ``pyprune_C::bert_layer`` call), and with the
CTC pass (``encode_with_target``) and every full target pass
(``decode_target`` without rows) replaced by a bare loop of ``bert_layer``
calls on weights gathered once per sub-network (a prototype: it checks
nothing, and is no path of the library). Both call the same op on the same
inputs, so the outputs must be the same. Prints median ms per sentence, the
ratio and how many outputs stay the same.
"""
import torch

import pyprune.deer.model as deer_model
from _deer_ab import deer_decoders, print_ab, setup, switched

LIBRARY = deer_model.DeerModel.decode_target, deer_model.DeerModel.encode_with_target
GATHERED = {}                            # id(model) -> (model, [(weights, heads, eps) per layer])


def layer_weights(model) -> list:
    if id(model) not in GATHERED:
        probe = torch.zeros(1, 1, model.encoder.config.hidden_size, dtype=model.output_bias.dtype)
        mask = torch.ones(1, 1, 1, 1, dtype=torch.bool)
        fused = [deer_model._fused_weights(layer, probe, mask) for layer in model.encoder.encoder.layer]
        if any(f is None for f in fused):
            raise SystemExit("the fused layer cannot run this model's layers (is the extension built?)")
        GATHERED[id(model)] = model, fused
    return GATHERED[id(model)][1]


def decode_target(model, cache, targets, rows=None):
    if rows is not None:
        return LIBRARY[0](model, cache, targets, rows)
    valid = torch.cat([cache.mask, targets.ne(model.config.pad_id)], 1)
    h = model._embed(targets, model.target_type)
    for fused, keys, values in zip(layer_weights(model), cache.keys, cache.values):
        h = torch.ops.pyprune_C.bert_layer(h, h, keys, values, valid, 0, *fused)[0]
    return h


def encode_with_target(model, sources, targets):
    S = sources.shape[1]
    source_valid = sources.ne(model.config.pad_id)
    valid = torch.cat([source_valid, targets.ne(model.config.pad_id)], 1)
    h = torch.cat([model._embed(sources, 0), model._embed(targets, model.target_type)], 1)
    layers = layer_weights(model)
    keys, values = [], []
    for i, fused in enumerate(layers):
        last = i + 1 == len(layers)
        h, k, v = torch.ops.pyprune_C.bert_layer(h, h[:, S:] if last else h, None, None, valid,
                                                 0 if last else S, *fused)
        keys.append(k[:, :, :S])
        values.append(v[:, :, :S])
    return deer_model.SourceCache(keys, values, source_valid), h


def use_loop(on: bool) -> None:
    owner = deer_model.DeerModel
    owner.decode_target, owner.encode_with_target = (decode_target, encode_with_target) if on else LIBRARY


def main() -> None:
    args, deer, sources = setup(__doc__, dtype_option=True)
    keeps = (max(deer.keep_ratios), min(deer.keep_ratios))
    decoders = deer_decoders(deer, sources, args.dtype, keeps, (0, 1))
    try:
        with torch.inference_mode():
            for decode in decoders.values():                  # warm-up, both ways
                for on in (True, False):
                    use_loop(on)
                    decode()
            times, outputs = switched(decoders, use_loop, args.rounds, len(sources))
    finally:
        use_loop(False)
    print_ab(list(decoders), (False, True), times, outputs, ("as the library runs", "bare layer loop"),
             dtype=args.dtype)


if __name__ == "__main__":
    main()
