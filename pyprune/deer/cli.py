"""``pyprune deer prepare-data | train | generate | evaluate`` and ``pyprune demo``.

A run directory holds everything: ``checkpoint.pt`` (model, movement scores,
optimiser, schedule, step; written atomically, resumed automatically),
``tokenizer/``, ``baseline.pt`` (the autoregressive baseline), and the
evaluation's ``results.md``, ``results.json`` and ``results.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ..io import atomic_torch_save, atomic_write_text

# "default": vendored short KJV -> WEB verses; "bible-short": vendored short es -> en verses; the others are
# built from Debian packages on first use: "bible" (es -> en), "kjv-web" (archaic -> modern English), "ding" (de -> en).
CORPORA = ("default", "bible-short", "bible", "kjv-web", "ding")
_BUILT = {"bible": ("bible-es-en", "es-en"), "kjv-web": ("bible-kjv-web", "kjv-web")}


def _data_dir(name: str, cache: str | None = None) -> str:
    from ..data import parallel
    from ..models import cache_dir
    if name == "default":
        return parallel.default_corpus()
    if name == "bible-short":
        return parallel.vendored_corpus("bible-es-en-short")
    if name in _BUILT:
        folder, pair = _BUILT[name]
        return parallel.prepare_bible(os.path.join(cache or cache_dir(), folder), pair=pair)
    if name == "ding":
        return parallel.prepare_ding(os.path.join(cache or cache_dir(), "ding-de-en"))
    if os.path.isdir(name):
        return name
    raise SystemExit(f"--data: expected one of {CORPORA} or a directory with train/valid/test .tsv/.jsonl, "
                     f"got {name!r}")


def _backbone(name: str) -> str:
    from ..models import minilm_path
    path = minilm_path() if name == "minilm" else name
    if not os.path.isdir(path):
        raise SystemExit(f"--backbone: expected 'minilm' or a local BERT/RoBERTa/XLM-R directory, got {name!r}")
    return path


def _load_baseline(run: str, deer):
    import transformers
    from .baseline import AutoregressiveBaseline
    path = os.path.join(run, "baseline.pt")
    if not os.path.isfile(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    encoder = transformers.AutoModel.from_config(deer.model.encoder.config, add_pooling_layer=False)
    model = AutoregressiveBaseline(encoder, state["vocab"], **state["ids"], layers=state["layers"],
                                   max_length=state["max_length"])
    model.load_state_dict(state["model"])
    return model.eval()


def cmd_prepare(args) -> int:
    directory = _data_dir(args.corpus)
    from ..data.parallel import SPLITS, read_split
    for split in SPLITS:
        print(f"{split}: {len(read_split(directory, split))} pairs")
    print(directory)
    return 0


def cmd_train(args) -> int:
    from ..data.parallel import read_split
    from .api import CHECKPOINT, Deer
    from .losses import LossConfig
    from .train import TrainConfig, _distributed, encode_pairs, target_vocabulary, train
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    directory = _data_dir(args.data)
    pairs = read_split(directory, "train")
    resume = None
    if os.path.isfile(os.path.join(args.out, CHECKPOINT)):
        deer, resume = Deer.load(args.out)
        print(f"resuming {args.out} at step {resume.get('step', 0)}", file=sys.stderr)
    else:
        import transformers
        backbone = _backbone(args.backbone)
        vocab = target_vocabulary(transformers.AutoTokenizer.from_pretrained(backbone), [t for _, t in pairs])
        deer = Deer.from_backbone(backbone, vocab=vocab, prune=not args.no_prune,
                                  keep_ratios=args.keep_ratios, alpha=args.alpha, slots=args.slots)
    encoded = encode_pairs(deer, pairs)
    print(f"{len(encoded)} of {len(pairs)} training pairs fit the model; output vocabulary "
          f"{deer.model.num_classes - 1} tokens", file=sys.stderr)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, checkpoint_every=args.checkpoint_every,
                         time_limit=args.time_limit, dropout=args.dropout, seed=args.seed)
    summary = train(deer, encoded, args.out, config, LossConfig(draft_prob=args.draft_prob), resume=resume)
    if summary["losses"]:
        print(f"DEER: {summary['step']} steps in {summary['seconds']:.0f} s, last losses {summary['losses']}",
              file=sys.stderr)
    else:
        print(f"DEER: already at step {summary['step']} of --steps {args.steps}; nothing to train", file=sys.stderr)
    if _distributed()[0] != 0:          # under torchrun, rank 0 alone calibrates and trains the baseline
        return 0
    if args.calibrate_sentences:
        calibrate(deer, directory, args.out, args.calibrate_sentences)
    if args.baseline_steps:
        train_ar(deer, encoded, args.out, args.baseline_steps, args.batch_size, args.lr, args.seed,
                 args.baseline_time_limit)
    return 0


def calibrate(deer, directory: str, out: str, limit: int) -> None:
    """Choose the editor's penalties per keep ratio on the first `limit` valid pairs; save them to `out`."""
    from ..data.parallel import read_split
    from .calibrate import calibrate_edits
    try:
        valid = read_split(directory, "valid")[:limit]
    except FileNotFoundError:
        print("no valid split: the editor's penalties stay as they were", file=sys.stderr)
        return
    scores = calibrate_edits(deer, valid)
    for keep, bleus in scores.items():
        chosen = deer.edit_penalty[keep]
        print(f"keep {keep:g}: deletion / insertion penalty {chosen[0]:g} / {chosen[1]:g} "
              f"({bleus[chosen]:.2f} BLEU with one edit iteration on {len(valid)} valid pairs, "
              f"{bleus[0.0, 0.0]:.2f} without)", file=sys.stderr)
    deer.save_penalties(out)


def train_ar(deer, encoded, out: str, steps: int, batch_size: int, lr: float, seed: int, time_limit=None) -> None:
    import transformers
    from .baseline import AutoregressiveBaseline, train_baseline
    path = os.path.join(out, "baseline.pt")
    if os.path.isfile(path):
        return
    c = deer.model.config
    # The pretrained backbone afresh (not DEER's fine-tuned encoder).
    encoder = transformers.AutoModel.from_pretrained(deer.model.encoder.config.name_or_path, add_pooling_layer=False)
    torch.manual_seed(seed)
    ids = dict(pad_id=c.pad_id, bos_id=c.bos_id, eos_id=c.eos_id)
    model = AutoregressiveBaseline(encoder, deer.model.restricted_vocab(), **ids, layers=3,
                                   max_length=deer.model.max_positions)
    summary = train_baseline(model, encoded, steps, batch_size=batch_size, lr=lr, seed=seed, time_limit=time_limit)
    print(f"AR baseline: {summary['step']} steps in {summary['seconds']:.0f} s, last loss {summary['loss']:.3f}",
          file=sys.stderr)
    atomic_torch_save({"model": model.state_dict(), "vocab": deer.model.restricted_vocab(), "ids": ids,
                       "layers": len(model.blocks), "max_length": model.max_length, "steps": summary["step"]}, path)


def cmd_generate(args) -> int:
    from .api import Deer
    deer, _ = Deer.load(args.model)
    lines = [line.strip() for line in (open(args.input) if args.input else sys.stdin) if line.strip()]
    for start in range(0, len(lines), args.batch_size):
        chunk = lines[start:start + args.batch_size]
        for out in deer.generate(chunk, max_iter=args.iterations, keep=args.keep, batch_size=args.batch_size,
                                 blank_penalty=args.blank_penalty, dtype=_dtype(args.dtype),
                                 deletion_penalty=args.deletion_penalty, insertion_penalty=args.insertion_penalty,
                                 packed=args.kernels == "pyprune"):
            print(out)
    return 0


def _dtype(name):
    return None if name is None else getattr(torch, name)


def run_evaluation(run: str, data: str, split: str, keeps, iterations, latency_sentences: int, limit=None,
                   out=None, **options) -> str:
    """Evaluate run directory `run`; the table, JSON and plot go to `out` (default: `run`); `options`: more
    arguments of ``evaluate`` (penalties, dtype, packed)."""
    from ..data.parallel import read_split
    from .api import Deer
    from .evaluate import evaluate, format_table, plot
    deer, state = Deer.load(run)
    pairs = read_split(_data_dir(data), split)[:limit]
    result = evaluate(deer, pairs, keeps=keeps, iterations=iterations, baseline=_load_baseline(run, deer),
                      latency_sentences=latency_sentences, **options)
    result["train_steps"] = state.get("step")
    table = format_table(result)
    out = out or run
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "results.json"), json.dumps(result, indent=2))
    atomic_write_text(os.path.join(out, "results.md"), table + "\n")
    if not plot(result, os.path.join(out, "results.png")):
        print("(no plot: pip install matplotlib to get results.png)", file=sys.stderr)
    return table


def cmd_evaluate(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    print(run_evaluation(args.model, args.data, args.split, args.keeps, args.iterations, args.latency_sentences,
                         args.limit, args.out, blank_penalty=args.blank_penalty, dtype=_dtype(args.dtype),
                         deletion_penalty=args.deletion_penalty, insertion_penalty=args.insertion_penalty,
                         packed=args.kernels == "pyprune"))
    return 0


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _train_arguments(parser) -> None:
    parser.add_argument("--data", default="default", help=f"{'|'.join(CORPORA)} or a directory of splits")
    parser.add_argument("--backbone", default="minilm", help="'minilm' (packaged) or a local model directory")
    parser.add_argument("--out", default="deer-run", help="run directory (resumes from its checkpoint)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--slots", choices=["unk", "copy"], default="unk")
    parser.add_argument("--keep-ratios", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    parser.add_argument("--no-prune", action="store_true", help="train without dynamic block pruning")
    parser.add_argument("--draft-prob", type=float, default=0.0,
                        help="chance per step of training the editor on the model's own CTC drafts")
    parser.add_argument("--dropout", type=float, default=None,
                        help="the encoder's dropout while training (default: the backbone's own)")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds of DEER training at most")
    parser.add_argument("--calibrate-sentences", type=_count, default=400,
                        help="after training, choose the editor's penalties on this many valid pairs (0: don't)")
    parser.add_argument("--baseline-steps", type=_count, default=0, help="also train the autoregressive baseline")
    parser.add_argument("--baseline-time-limit", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)


def _edit_penalty_arguments(parser) -> None:
    for name, logit in (("deletion", "the editor's delete logit"),
                        ("insertion", "the editor's logits of inserting one or more tokens")):
        parser.add_argument(f"--{name}-penalty", type=float, default=None,
                            help=f"subtract this from {logit} (default: the penalty calibrated for the keep)")


def _kernels_argument(parser, layers: str) -> None:
    parser.add_argument("--kernels", choices=["pyprune", "torch"], default="pyprune",
                        help=f"{layers} on pyprune's packed-blocks CPU kernel (where it runs: float32 or bfloat16 on the CPU) "
                             "or on torch's")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pyprune deer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare-data", help="build a corpus's fixed train/valid/test splits")
    prepare.add_argument("corpus", choices=CORPORA)
    _train_arguments(commands.add_parser("train", help="train DEER (and optionally the AR baseline)"))
    gen = commands.add_parser("generate", help="generate for each line of --input (or stdin)")
    gen.add_argument("--model", required=True, help="run directory")
    gen.add_argument("--input", default=None)
    gen.add_argument("--keep", type=float, default=1.0)
    gen.add_argument("--iterations", type=int, default=2)
    gen.add_argument("--batch-size", type=int, default=32)
    penalty_help = "subtract this from the CTC blank's logit for every draft (default: the trained penalty of the keep)"
    gen.add_argument("--blank-penalty", type=float, default=None, help=penalty_help)
    _edit_penalty_arguments(gen)
    dtypes = ["float32", "bfloat16", "float16"]
    gen.add_argument("--dtype", choices=dtypes, default=None, help="compute in this type (default: the model's)")
    _kernels_argument(gen, "linear layers")
    ev = commands.add_parser("evaluate", help="BLEU and latency per keep ratio x iterations (+ AR baseline)")
    ev.add_argument("--model", required=True, help="run directory")
    ev.add_argument("--data", default="default")
    ev.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ev.add_argument("--keeps", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    ev.add_argument("--iterations", type=int, nargs="+", default=[0, 1, 2])
    ev.add_argument("--latency-sentences", type=_count, default=50)
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N pairs")
    ev.add_argument("--threads", type=int, default=None)
    ev.add_argument("--blank-penalty", type=float, default=None, help=penalty_help)
    _edit_penalty_arguments(ev)
    ev.add_argument("--dtype", choices=dtypes, default=None, help="DEER and the AR baseline compute in this type")
    _kernels_argument(ev, "DEER's and the AR baseline's linear layers")
    ev.add_argument("--out", default=None, help="write results.md/.json/.png here (default: the run directory)")
    args = parser.parse_args(argv)
    return {"prepare-data": cmd_prepare, "train": cmd_train, "generate": cmd_generate,
            "evaluate": cmd_evaluate}[args.command](args)


# Step counts sized to the time limits on a 2-core CPU (about 1.2 s per DEER step of 16 pairs without
# dropout, 0.5 s per baseline step, by the demo's progress bars), so the warm-up/decay schedule and the
# glancing anneal run to their end; the limits stop a slower machine early (the schedule is then cut short).
# Slots copy the source (the task is archaic -> modern English) and the editor learns on the model's own CTC
# drafts: of the settings tried on the valid split (README), these gave the best CTC draft and the smallest
# loss from editing. No dropout: 450 steps of 16 pairs is about one epoch, and dropout costs time each step.
# The baseline gets a short run: in 150 steps it learns nothing usable and serves as the latency anchor
# (trained 2,400 steps, 19 minutes, it reaches 54.6 BLEU, above the demo's DEER: README).
DEMO = dict(steps=450, batch_size=16, time_limit=600.0, baseline_steps=150, baseline_time_limit=100.0,
            lr=2e-4, slots="copy", draft_prob=1.0, dropout=0.0)


def demo(argv=None) -> int:
    """``pyprune demo``: train DEER briefly on the vendored KJV -> WEB verses with MiniLM on CPU, then print
    the table."""
    parser = argparse.ArgumentParser(prog="pyprune demo", description=demo.__doc__)
    parser.add_argument("--out", default="deer-demo")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    train_args = ["train", "--out", args.out]
    for key, value in DEMO.items():            # every DEMO key is a `pyprune deer train` option
        train_args += ["--" + key.replace("_", "-"), str(value)]
    if args.threads:
        train_args += ["--threads", str(args.threads)]
    main(train_args)
    table = run_evaluation(args.out, "default", "test", [1.0, 0.75, 0.5, 0.25], [0, 1, 2], 30)
    print(table)
    print(f"\n(demo took {(time.perf_counter() - started) / 60:.1f} min; results in {args.out}/)")
    return 0
