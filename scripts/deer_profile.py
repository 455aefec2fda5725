"""Where DEER's decoding time goes: torch's profiler over ``generate_ids``.

    python scripts/deer_profile.py RUN_DIR [--sentences 30] [--keep 1] [--iterations 1]
                                   [--batch-size 1] [--dtype float32] [--rows 25] [--shapes]
                                   [--rounds 3] [--autoregressive] [--glue]

Decodes the first --sentences test sentences as ``pyprune deer evaluate``
does (the packed sub-network of --keep, its penalties), once to warm up,
--rounds times timed, once under the profiler; prints ms per sentence, how
many target passes over the encoder the edit iterations ran and how many
target positions they computed (each sentence also runs one CTC pass), and
the profiler's table of operators by self CPU time (--rows 0: none;
--shapes: one line per operator and input shapes). The profiler's own
overhead inflates the total; read the shares, not the absolute times.

The timed decodings run without the profiler: their wall time split into
the time inside the extension's encoder-layer and packed-linear calls
(``pyprune_C::bert_layers``, a whole pass, ``pyprune_C::bert_layer``, one
layer, ``pyprune_C::bsr_linear``, timed by wrapping them) and the rest
(Python and the small torch ops between them), the median of --rounds
decodings; --autoregressive: the same split for RUN_DIR's
autoregressive baseline on the packed kernel in --dtype (its decoding
steps' calls, ``pyprune_C::decoder_step``, and where they do not fuse its
attention kernel's, ``pyprune_C::masked_attention``, counted apart too).

--glue: the rest by function: each of DEER's decoding steps between the
kernels (``GLUE``) timed by wrapping it, without the time of the wrapped
functions it calls (the median round; the wrappers' own time makes that
decoding slower than the split's), and what a small step costs where
decoding runs it: one embedding call (``DeerModel._embed`` on a draft) timed
alone, call after call, against right after a target pass over the encoder
(the pass reads six layers of weights through the caches in between).
"""
import importlib
import time
from unittest import mock

import torch
from torch.profiler import profile

from _deer_ab import ar_baseline, median, setup
from pyprune.deer.generate import ctc_draft, generate_ids
from pyprune.deer.model import DeerModel


def count_passes(decode) -> list:
    """(batch rows, target length, whether only some positions' states were asked for) of every
    ``decode_target`` pass that `decode()` runs: the edit iterations' passes (the fill pass runs its last
    layer on the placeholders)."""
    passes, real = [], DeerModel.decode_target

    def counted(model, cache, targets, rows=None):
        passes.append((*targets.shape, rows is not None))
        return real(model, cache, targets, rows)
    with mock.patch.object(DeerModel, "decode_target", counted):
        decode()
    return passes


# The extension's ops that hold a decoding's arithmetic; the split times every call of each.
HEAVY_OPS = ("bert_layers", "bert_layer", "decoder_step", "bsr_linear", "masked_attention")


def median_round(decode, patches, rounds: int, inside: dict) -> dict:
    """`decode()` `rounds` times with `patches` (which add each wrapped call's seconds to `inside`) in place:
    {"total": seconds, **inside} of the round with the median total (`inside` is emptied before each)."""
    seen = []
    for _ in range(rounds):
        inside.clear()
        for patch in patches:
            patch.start()
        try:
            start = time.perf_counter()
            decode()
            total = time.perf_counter() - start
        finally:
            for patch in patches:
                patch.stop()
        seen.append({"total": total, **inside})
    return sorted(seen, key=lambda seconds: seconds["total"])[len(seen) // 2]


def split_time(decode, rounds: int) -> dict:
    """{"total", *HEAVY_OPS, "rest"}: seconds of one `decode()` (the round with the median total of
    `rounds`), in all and inside each of ``HEAVY_OPS``' calls, and the rest."""
    inside = {}

    def timed(name, op):
        def call(*args):
            start = time.perf_counter()
            try:
                return op(*args)
            finally:
                inside[name] = inside.get(name, 0.0) + time.perf_counter() - start
        return call

    namespace = torch.ops.pyprune_C
    patches = [mock.patch.object(namespace, name, timed(name, getattr(namespace, name))) for name in HEAVY_OPS]
    split = {"total": 0.0, **dict.fromkeys(HEAVY_OPS, 0.0)}
    split.update(median_round(decode, patches, rounds, inside))
    return {**split, "rest": split["total"] - sum(split[name] for name in HEAVY_OPS)}


# DEER's decoding steps between the kernels, by module: (module, owner's name or None, function names).
GLUE = (
    ("pyprune.deer.model", "DeerModel", ("check_sources", "num_slots", "ctc_slots", "_embed", "_check_targets",
                                         "vocab_logits", "deletion_logits", "placeholder_logits")),
    ("pyprune.deer.model", None, ("fused_layers", "_fused_weights")),
    ("pyprune.deer.model", "SourceCache", ("select",)),
    ("pyprune.deer.generate", None, ("ctc_draft_tokens", "apply_del_words", "apply_ins_masks", "apply_ins_words",
                                     "_trim", "_same", "words_of", "pad_rows")),
)


def glue_time(decode, rounds: int) -> dict:
    """{step: seconds} of one `decode()` (the round with the median total of `rounds`) inside each of ``GLUE``'s
    steps and ``HEAVY_OPS``' calls, each without the time of the other wrapped calls it makes, and "total"."""
    inside, nested = {}, [0.0]

    def timed(name, fn):
        def call(*args, **kwargs):
            nested.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inside[name] = inside.get(name, 0.0) + elapsed - nested.pop()
                nested[-1] += elapsed
        return call

    targets = [(torch.ops.pyprune_C, name) for name in HEAVY_OPS]
    for module, owner, names in GLUE:
        module = importlib.import_module(module)
        targets += [(getattr(module, owner) if owner else module, name) for name in names]
    patches = [mock.patch.object(owner, name, timed(name, getattr(owner, name))) for owner, name in targets]
    return median_round(decode, patches, rounds, inside)


def print_glue(decode, model, sources, rounds: int) -> None:
    seconds = glue_time(decode, rounds)
    total, n = seconds.pop("total"), len(sources)
    print(f"DEER by step, us per sentence, each without the wrapped steps it calls (of {1e3 * total / n:.2f} ms):")
    for name, value in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {name:20s} {1e6 * value / n:8.1f}")
    print(f"  {'(unwrapped)':20s} {1e6 * (total - sum(seconds.values())) / n:8.1f}")
    draft = ctc_draft(model, torch.tensor([sources[0]]))[1]

    def embed():
        return model._embed(draft, model.target_type)

    source = model.encode_source(torch.tensor([sources[0]]))
    alone, after = [], []
    for _ in range(200):
        embed()
        start = time.perf_counter()
        embed()
        alone.append(time.perf_counter() - start)
        model.decode_target(source, draft)
        start = time.perf_counter()
        embed()
        after.append(time.perf_counter() - start)
    print(f"one embedding call over {draft.shape[1]} draft tokens, median of 200: {1e6 * median(alone):.1f} us "
          f"after itself, {1e6 * median(after):.1f} us right after a target pass")


def options(parser) -> None:
    parser.add_argument("--keep", type=float, default=1.0)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rows", type=int, default=25, help="table rows (0: no profiler table)")
    parser.add_argument("--shapes", action="store_true")
    parser.add_argument("--autoregressive", action="store_true", help="split the AR baseline's decoding too")
    parser.add_argument("--glue", action="store_true", help="time DEER's steps between the kernels one by one")


def print_split(label: str, decode, rounds: int, sentences: int) -> None:
    split = split_time(decode, rounds)
    print(f"{label} split, ms per sentence: " + ", ".join(
        f"{name} {1e3 * seconds / sentences:.2f} ({100 * seconds / split['total']:.0f}%)"
        for name, seconds in split.items() if name != "total" and (seconds or name == "rest"))
        + f" of {1e3 * split['total'] / sentences:.2f}")


def main() -> None:
    args, deer, sources = setup(__doc__, options, dtype_option=True)
    model, penalties = deer.sub_network(args.keep, args.dtype, packed=True), deer.decoding(args.keep)

    def decode():
        return generate_ids(model, sources, max_iter=args.iterations, batch_size=args.batch_size, **penalties)

    with torch.inference_mode():
        decode()                                                          # warm-up
        print(f"keep {args.keep:g}, {args.iterations} iterations, batch {args.batch_size}, {args.dtype}, "
              f"{len(sources)} sentences")
        print_split("DEER", decode, args.rounds, len(sources))
        if args.autoregressive:
            ar = ar_baseline(args.run, deer, args.dtype)
            if ar is None:
                raise SystemExit(f"{args.run} has no autoregressive baseline (baseline.pt)")
            ar.generate_ids(sources[:1], batch_size=1)                   # warm-up
            print_split("autoregressive", lambda: ar.generate_ids(sources, batch_size=args.batch_size), args.rounds,
                        len(sources))
        if args.glue:
            print_glue(decode, model, sources, args.rounds)
        passes = count_passes(decode)
        fill = sum(only_some for *_, only_some in passes)
        tokens = sum(rows * length for rows, length, _ in passes) / len(sources)
        print(f"edit passes per sentence: {(len(passes) - fill) / len(sources):.2f} computing every position, "
              f"{fill / len(sources):.2f} filling placeholders (a pass over a batch counts once); {tokens:.1f} "
              f"target positions through the encoder a sentence (padding included)")
        if args.rows == 0:
            return
        with profile(record_shapes=args.shapes) as prof:
            decode()
    print(prof.key_averages(group_by_input_shape=args.shapes).table(sort_by="self_cpu_time_total",
                                                                    row_limit=args.rows))


if __name__ == "__main__":
    main()
