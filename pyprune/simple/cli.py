"""``pyprune simple learn-masks | extract | finetune | evaluate | quick``.

Every stage writes its result under ``--out`` atomically and is skipped when
that result already exists, so an interrupted run resumes where it stopped:

    out/importance/<method>.pt      scores (SIMPLE's learned masks, or a baseline's)
    out/plans/<method>-<ratio>.json the extracted sub-network
    out/models/<method>-<ratio>/    the fine-tuned, compacted model (save_pretrained)
    out/test_ids.pt                 the scored test rows (for the plain-transformers check)
    out/results.md, results.json    the evaluation table; results.png the perplexity-vs-parameters plot
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from ..io import atomic_torch_save, atomic_write_text
from ..pruning import PrunePlan, count_parameters, extract, model_spec, save_pretrained
from ..pruning.plan import check_ratio
from ..report import markdown_table, save_plot
from .pipeline import METHODS, SimpleConfig, baseline_importance, finetune, latency_ms, learn_masks, \
    lm_chunks, pair_rows, perplexity, scored_tokens, take

# Short runs need a larger fine-tuning step than the paper's long ones.
QUICK = dict(mask_steps=40, finetune_steps=10, batch_size=2, eval_chunks=24, lr=3e-4)


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
        self.out = args.out
        self.task = args.task
        self.config = SimpleConfig(batch_size=args.batch_size, mask_steps=args.mask_steps, mask_lr=args.mask_lr,
                                   finetune_steps=args.finetune_steps, lr=args.lr, lm_weight=args.lm_weight,
                                   mode=args.mode, relu=args.relu)
        found = self._manifest()
        if found is not None and found["task"] != self.task:          # before training a teacher into it
            raise SystemExit(f"--out: {self.out} holds a run of the {found['task']} task, not {self.task}: "
                             f"use another --out")
        if args.task == "austen":
            from ..data.austen import prepare_austen, read_split
            self.model, self.tokenizer = _load(args.model)
            data = prepare_austen()
            self.train = lm_chunks(self.tokenizer, read_split(data, "train"), self.config.seq_len)
            self.test = lm_chunks(self.tokenizer, read_split(data, "test"), self.config.seq_len)
        else:
            self._bible_task(args.teacher_steps)
        self.test = take(self.test, slice(0, args.eval_chunks))
        self.teacher = self.model          # weights are never changed in place: the original is the teacher
        self._check_manifest()

    def _manifest(self):
        path = self.path("run.json")
        if not os.path.exists(path):
            return None
        with open(path) as file:
            return json.load(file)

    def _check_manifest(self) -> None:
        """Stage outputs only resume the run that wrote them: out/run.json names the task and the model."""
        import hashlib
        config = self.model.config.to_dict()
        for key in ("transformers_version", "_name_or_path"):
            config.pop(key, None)
        manifest = {"task": self.task, "model_type": config.get("model_type"),
                    "model_config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str)
                                                          .encode()).hexdigest()}
        path = self.path("run.json")
        found = self._manifest()
        if found is not None:
            if found != manifest:
                raise SystemExit(f"--out: {self.out} holds a run of another task or model ({found['task']}, "
                                 f"{found['model_type']}, config {found['model_config_sha256'][:12]}); this one is "
                                 f"{self.task}, {manifest['model_type']}, config "
                                 f"{manifest['model_config_sha256'][:12]}: use another --out")
        else:
            atomic_write_text(path, json.dumps(manifest, indent=2))

    def _bible_task(self, teacher_steps: int) -> None:
        """A small BART trained here (cached under out/teacher) on the vendored es -> en verses."""
        import transformers
        from ..data.parallel import read_split, vendored_corpus
        from .seq2seq import small_bart, train_teacher, word_tokenizer
        splits = {name: read_split(vendored_corpus("bible-es-en-short"), name) for name in ("train", "test")}
        path = self.path("teacher")
        if not os.path.isdir(path):
            tokenizer = word_tokenizer([text for pair in splits["train"] for text in pair])
            model = small_bart(tokenizer)
            train_teacher(model, pair_rows(tokenizer, splits["train"]), teacher_steps)
            save_pretrained(model, path, tokenizer=tokenizer)
        self.model = transformers.AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.train = pair_rows(self.tokenizer, splits["train"])
        self.test = pair_rows(self.tokenizer, splits["test"])

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


def plain_perplexity(model_dir: str, ids_path: str) -> float:
    """Perplexity of an export loaded by plain transformers in a fresh process that never imports pyprune."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plain_perplexity.py")
    done = subprocess.run([sys.executable, script, model_dir, ids_path], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"plain transformers could not score {model_dir}:\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["pyprune_imported"]:
        raise RuntimeError(f"the plain-transformers check of {model_dir} imported pyprune")
    return report["perplexity"]


def evaluate(run: Run, methods, ratios) -> dict:
    rows = []
    vocab = run.model.config.vocab_size
    ids_path = run.path("test_ids.pt")
    atomic_torch_save(run.test, ids_path)
    full_ms = latency_ms(run.model, vocab, repeats=5)
    rows.append({"method": "full model", "ratio": 1.0, "params": count_parameters(run.model),
                 "perplexity": perplexity(run.model, run.test), "plain_perplexity": None,
                 "latency_ms": full_ms, "speedup": 1.0})
    for ratio in ratios:
        for method in methods:
            model = run.compacted(method, ratio)
            ms = latency_ms(model, vocab, repeats=5)
            plain = None
            if not getattr(model.config, "pyprune", None):         # uniform exports load without pyprune
                plain = plain_perplexity(run.path("models", f"{method}-{ratio:g}"), ids_path)
            rows.append({"method": method, "ratio": ratio, "params": count_parameters(model),
                         "perplexity": perplexity(model, run.test), "plain_perplexity": plain,
                         "latency_ms": ms, "speedup": full_ms / ms})
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
            "task": run.task,
            "test_tokens": scored_tokens(run.test), "config": vars(run.config), "rows": rows}


def format_table(result: dict) -> str:
    cfg = result["config"]
    task, rows = {"austen": ("next tokens of Austen's novels", f"{cfg['batch_size']} x {cfg['seq_len']} tokens"),
                  "bible-es-en": ("target tokens of Spanish -> English Bible verses",
                                  f"{cfg['batch_size']} verse pairs")}[result.get("task", "austen")]

    def cells(r: dict) -> list[str]:
        plain = "-" if r.get("plain_perplexity") is None else f"{r['plain_perplexity']:.2f}"
        return [r["method"], f"{r['ratio']:g}", f"{r['params'] / 1e6:.1f}M", f"{r['perplexity']:.2f}", plain,
                f"{r['latency_ms']:.0f}", f"{r['speedup']:.2f}x"]
    lines = [f"{result['date']} | CPU, {result['threads']} threads | test perplexity on {result['test_tokens']} "
             f"{task} | {cfg['mask_steps']} mask steps, {cfg['finetune_steps']} fine-tuning "
             f"steps of {rows} | {cfg['mode']} extraction", ""]
    lines += markdown_table(["method", "ratio", "parameters", "test perplexity", "same, plain transformers",
                             "latency 8x128 (ms)", "speedup"], map(cells, result["rows"]))
    return "\n".join(lines)


def plot(result: dict, path: str) -> bool:
    """Test perplexity (log scale) against parameters, one line per method; False without matplotlib."""
    def draw(axis) -> None:
        pruned = [r for r in result["rows"] if r["method"] != "full model"]
        for method in dict.fromkeys(r["method"] for r in pruned):
            rows = sorted((r for r in pruned if r["method"] == method), key=lambda r: r["params"])
            axis.plot([r["params"] / 1e6 for r in rows], [r["perplexity"] for r in rows], marker="o", label=method)
        for r in result["rows"]:
            if r["method"] == "full model":
                axis.scatter([r["params"] / 1e6], [r["perplexity"]], marker="*", s=120, color="black",
                             label="full model")
        axis.set_yscale("log")
    return save_plot(path, draw, "SIMPLE and baselines: perplexity vs size", "parameters (millions)",
                     "test perplexity")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pyprune simple", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["learn-masks", "extract", "finetune", "evaluate", "quick"])
    parser.add_argument("--task", default="austen", choices=["austen", "bible-es-en"],
                        help="austen: language modelling of Austen's novels with --model; bible-es-en: a small "
                             "BART trained here on the vendored Spanish -> English verses (sequence to sequence)")
    parser.add_argument("--model", default="smollm2", help="'smollm2' (packaged) or a local model directory "
                        "(austen task)")
    parser.add_argument("--teacher-steps", type=int, default=1500, help="training steps of the bible-es-en BART")
    parser.add_argument("--out", default="simple-run", help="pipeline directory (resumes from what is there)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.2, 1.5, 2.0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--mode", default="uniform", choices=["uniform", "global"])
    parser.add_argument("--relu", action="store_true", help="swap FFN activations for ReLU when fine-tuning")
    parser.add_argument("--mask-steps", type=int, default=200)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=SimpleConfig.lr, help="fine-tuning learning rate")
    parser.add_argument("--mask-lr", type=float, default=SimpleConfig.mask_lr, help="mask-learning rate")
    parser.add_argument("--lm-weight", type=float, default=0.0, help="weight of the language-model loss")
    parser.add_argument("--eval-chunks", type=int, default=200,
                        help="test rows to score (128-token chunks, or verse pairs)")
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
        if plot(result, run.path("results.png")):
            print(f"plot: {run.path('results.png')}")
    return 0
