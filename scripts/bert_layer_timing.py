"""One packed encoder layer of DEER at decoding's shapes: ``pyprune_C::bert_layer`` against the same layer
as Python ops, per call.

    python scripts/bert_layer_timing.py RUN_DIR [--dtype bfloat16] [--rounds 7] [--calls 300]
                                        [--source 21] [--target 17]

The first layer of RUN_DIR's keep-1 packed sub-network, on random rows, in
the two shapes decoding gives it: an edit pass (--target query rows against
--source cached keys and values plus their own) and the CTC pass (--source +
2 x --source rows, the source rows seeing only the source). Each way runs
--calls times per timing, the two ways interleaved over --rounds rounds; prints
median us per call and the ratio, and checks both ways give the same bits.
A second table times ``bert_layer`` on the first layer called once per layer
of the model (six for MiniLM) in a row against every layer once, in turn, as
a pass runs them: the first finds the layer's weights in cache, the second
reads them from wherever the other layers left them (all six do not fit this
CPU's caches), so the gap is what reading the weights costs a pass.
To compare two builds, run it with PYTHONPATH set to each in turn.
"""
import argparse

import torch

import pyprune.deer.model as deer_model
from _deer_ab import call_pair, per_call_us
from pyprune.deer.api import Deer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--source", type=int, default=21)
    parser.add_argument("--target", type=int, default=17)
    args = parser.parse_args()
    torch.set_num_threads(2)
    dtype = getattr(torch, args.dtype)
    deer, _ = Deer.load(args.run)
    layers = deer.sub_network(1.0, dtype, packed=True).encoder.encoder.layer
    hidden = layers[0].attention.output.LayerNorm.normalized_shape[0]
    torch.manual_seed(0)
    S, T = args.source, args.target
    source = torch.randn(1, S, hidden).to(dtype)
    edit_rows, joint_rows = torch.randn(1, T, hidden).to(dtype), torch.randn(1, 3 * S, hidden).to(dtype)
    fused_weights = deer_model._fused_weights
    with torch.inference_mode():
        source_mask = torch.ones(1, 1, 1, S, dtype=torch.bool)
        caches = [deer_model._layer_kv(each, source, source, None, source_mask)[1:] for each in layers]
        # The two shapes, as (layer index) -> that layer's output rows.
        passes = {
            f"edit pass: {T} rows, {S} cached keys": lambda i: deer_model._layer_kv(
                layers[i], edit_rows, edit_rows, caches[i], torch.ones(1, 1, 1, S + T, dtype=torch.bool))[0],
            f"CTC pass: {3 * S} rows, {S} of them source": lambda i: deer_model._layer_kv(
                layers[i], joint_rows, joint_rows, None, torch.ones(1, 1, 1, 3 * S, dtype=torch.bool),
                source_rows=S)[0],
        }

        def way(fused: bool, call):
            def run():
                deer_model._fused_weights = fused_weights if fused else (lambda *a: None)
                try:
                    return call()
                finally:
                    deer_model._fused_weights = fused_weights
            return run

        print(f"{args.dtype}, 2 threads, us per layer call, median of {args.rounds} interleaved rounds of {args.calls}")
        print("| shape | Python ops us | bert_layer us | speed-up | same bits |")
        print("|---|---:|---:|---:|---:|")
        for name, call in passes.items():
            same, python, fused = call_pair(way(False, lambda: call(0)), way(True, lambda: call(0)), args.calls,
                                            args.rounds)
            print(f"| {name} | {python:.1f} | {fused:.1f} | {python / fused:.2f}x | {same} |")

        n = len(layers)
        print(f"\nbert_layer, us per layer call: the first layer {n} times in a row against the {n} layers in "
              f"turn, median of {args.rounds} interleaved rounds of {args.calls // n}")
        print("| shape | one layer repeated us | layers in turn us | ratio |")
        print("|---|---:|---:|---:|")
        for name, call in passes.items():
            repeated = lambda: [call(0) for _ in range(n)]
            in_turn = lambda: [call(i) for i in range(n)]
            repeated(), in_turn()                                 # warm-up
            us = [t / n for t in per_call_us([repeated, in_turn], args.calls // n, args.rounds)]
            print(f"| {name} | {us[0]:.1f} | {us[1]:.1f} | {us[1] / us[0]:.2f}x |")


if __name__ == "__main__":
    main()
