"""``pyprune simple learn-masks | extract | finetune | evaluate | quick``.

Every stage writes its result under ``--out`` atomically and is skipped when
that result already exists, so an interrupted run resumes where it stopped:

    out/importance/<method>.pt      scores (SIMPLE's learned masks, or a baseline's)
    out/plans/<method>-<ratio>.json the extracted sub-network
    out/models/<method>-<ratio>/    the fine-tuned, compacted model (save_pretrained)
    out/results.md, results.json    the evaluation table
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ..io import atomic_torch_save, atomic_write_text
from ..pruning import PrunePlan, count_parameters, extract, model_spec, save_pretrained
from ..pruning.plan import check_ratio
from .pipeline import METHODS, SimpleConfig, baseline_importance, finetune, latency_ms, learn_masks, lm_chunks, \
    perplexity

QUICK = dict(mask_steps=40, finetune_steps=10, batch_size=2, eval_chunks=24)


def _load(name: str):
    import transformers
    from ..models import smollm2_path
    path = smollm2_path() if name == "smollm2" else name
    if not os.path.isdir(path):
        raise SystemExit(f"--model: expected 'smollm2' or a local model directory, got {name!r}")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)


class Run:
    """The state of one pipeline directory: model, teacher, data, and stage outputs."""

    def __init__(self, args) -> None:
        from ..data.austen import prepare_austen, read_split
        self.out = args.out
        self.config = SimpleConfig(batch_size=args.batch_size, mask_steps=args.mask_steps,
                                   finetune_steps=args.finetune_steps, mode=args.mode, relu=args.relu)
        self.model, self.tokenizer = _load(args.model)
        self.teacher = self.model          # weights are never changed in place: the original is the teacher
        data = prepare_austen()
        self.train = lm_chunks(self.tokenizer, read_split(data, "train"), self.config.seq_len)
        self.test = lm_chunks(self.tokenizer, read_split(data, "test"), self.config.seq_len)[:args.eval_chunks]

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def importance(self, method: str):
        path = self.path("importance", f"{method}.pt")
        if not os.path.exists(path):
            if method == "simple":
                scores = learn_masks(self.model, self.teacher, self.train, self.config)
            else:
                scores = baseline_importance(method, self.model, self.train, self.config)
            atomic_torch_save(scores, path)
        return torch.load(path, weights_only=False)

    def plan(self, method: str, ratio: float) -> PrunePlan:
        path = self.path("plans", f"{method}-{ratio:g}.json")
        if not os.path.exists(path):
            plan = extract(model_spec(self.model), self.importance(method), ratio, self.config.mode)
            atomic_write_text(path, json.dumps(plan.to_dict()))
        with open(path) as file:
            return PrunePlan.from_dict(json.load(file))

    def compacted(self, method: str, ratio: float):
        path = self.path("models", f"{method}-{ratio:g}")
        if not os.path.isdir(path):
            self.plan(method, ratio)
            small = finetune(self.model, self.teacher, self.importance(method), ratio, self.train, self.config)
            save_pretrained(small, path, tokenizer=self.tokenizer)
        from ..pruning import from_pretrained
        return from_pretrained(path)


def evaluate(run: Run, methods, ratios) -> dict:
    rows = []
    vocab = run.model.config.vocab_size
    full_ms = latency_ms(run.model, vocab)
    rows.append({"method": "full model", "ratio": 1.0, "params": count_parameters(run.model),
                 "perplexity": perplexity(run.model, run.test), "latency_ms": full_ms, "speedup": 1.0})
    for ratio in ratios:
        for method in methods:
            model = run.compacted(method, ratio)
            ms = latency_ms(model, vocab)
            rows.append({"method": method, "ratio": ratio, "params": count_parameters(model),
                         "perplexity": perplexity(model, run.test), "latency_ms": ms, "speedup": full_ms / ms})
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
            "test_tokens": int(run.test.numel()), "config": vars(run.config), "rows": rows}


def format_table(result: dict) -> str:
    cfg = result["config"]
    lines = [f"{result['date']} | CPU, {result['threads']} threads | test perplexity on {result['test_tokens']} "
             f"tokens of Austen's novels | {cfg['mask_steps']} mask steps, {cfg['finetune_steps']} fine-tuning "
             f"steps of batch {cfg['batch_size']} x {cfg['seq_len']} | {cfg['mode']} extraction", "",
             "| method | ratio | parameters | test perplexity | latency 8x128 (ms) | speedup |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['ratio']:g} | {r['params'] / 1e6:.1f}M | {r['perplexity']:.2f} | "
                     f"{r['latency_ms']:.0f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pyprune simple", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["learn-masks", "extract", "finetune", "evaluate", "quick"])
    parser.add_argument("--model", default="smollm2", help="'smollm2' (packaged) or a local model directory")
    parser.add_argument("--out", default="simple-run", help="pipeline directory (resumes from what is there)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.2, 1.5, 2.0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--mode", default="uniform", choices=["uniform", "global"])
    parser.add_argument("--relu", action="store_true", help="swap FFN activations for ReLU when fine-tuning")
    parser.add_argument("--mask-steps", type=int, default=200)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-chunks", type=int, default=200, help="test rows of 128 tokens to score")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.stage == "quick":
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    for ratio in args.ratios:
        try:
            check_ratio(ratio, "--ratios")
        except ValueError as error:
            parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(args)
    if args.stage == "learn-masks":
        run.importance("simple")
    elif args.stage == "extract":
        for method in args.methods:
            for ratio in args.ratios:
                run.plan(method, ratio)
    elif args.stage == "finetune":
        for method in args.methods:
            for ratio in args.ratios:
                run.compacted(method, ratio)
    else:
        result = evaluate(run, args.methods, args.ratios)
        table = format_table(result)
        atomic_write_text(run.path("results.json"), json.dumps(result, indent=2, default=str))
        atomic_write_text(run.path("results.md"), table + "\n")
        print(table)
    return 0
