"""Does a SIMPLE run keep SmolLM2's outlier hidden dimensions? (the diagnosis behind mask_lr = 0.1)

    python scripts/simple_hidden_outliers.py RUN_DIR [--chunks 8] [--ratio 1.2]

RUN_DIR is a ``pyprune simple`` directory with importance/<method>.pt. Prints
the hidden dimensions with the largest activations (RMS over tokens of each
layer's hidden states on test rows, max over layers), the rank each method's
scores give them (0 = most important of d), and the test perplexity of the
extracted sub-network before any fine-tuning: all components, and the
hidden dimension alone.
"""
import argparse
import copy
import os

import torch

from pyprune.data.austen import prepare_austen, read_split
from pyprune.pruning import PrunePlan, compact, extract, model_spec
from pyprune.simple.cli import _load
from pyprune.simple.pipeline import lm_chunks, perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=1.2)
    parser.add_argument("--top", type=int, default=6)
    args = parser.parse_args()
    model, tokenizer = _load("smollm2")
    test = lm_chunks(tokenizer, read_split(prepare_austen(), "test"), 128)[:args.chunks]
    with torch.no_grad():
        states = torch.stack(model(input_ids=test, output_hidden_states=True).hidden_states)
    rms = states.pow(2).mean((1, 2)).sqrt().max(0).values
    top = rms.topk(args.top)
    print(f"full model: perplexity {perplexity(model, test):.1f}; hidden RMS median {rms.median():.1f}")
    print("outlier dims:", ", ".join(f"{i} ({v:.0f})" for i, v in zip(top.indices.tolist(), top.values.tolist())))
    spec = model_spec(model)
    for name in sorted(os.listdir(os.path.join(args.run_dir, "importance"))):
        scores = torch.load(os.path.join(args.run_dir, "importance", name), weights_only=False)
        rank = scores.hidden.argsort(descending=True).argsort()
        plan = extract(spec, scores, args.ratio)
        ppl = {label: perplexity(compact(copy.deepcopy(model), p), test)
               for label, p in (("all", plan), ("hidden only", PrunePlan({}, {}, plan.hidden)))}
        print(f"{name[:-3]:>10}: ranks {rank[top.indices].tolist()} of {rms.numel()}; r={args.ratio:g} before "
              f"fine-tuning: all {ppl['all']:,.1f}, hidden only {ppl['hidden only']:,.1f}")


if __name__ == "__main__":
    main()
