"""Where DEER's decoding time goes: torch's profiler over ``generate_ids``.

    python scripts/deer_profile.py RUN_DIR [--sentences 30] [--keep 1] [--iterations 1]
                                   [--batch-size 1] [--dtype float32] [--rows 25] [--shapes]
                                   [--rounds 3] [--autoregressive]

Decodes the first --sentences test sentences as ``pyprune deer evaluate``
does (the packed sub-network of --keep, its penalties), once to warm up,
--rounds times timed, once under the profiler; prints ms per sentence, how
many target passes over the encoder an edit iteration ran (each sentence
also runs one CTC pass), and the profiler's table of operators by self CPU
time (--shapes: one line per operator and input shapes). The profiler's own
overhead inflates the total; read the shares, not the absolute times.

The timed decodings run without the profiler: their wall time split into
the time inside the extension's encoder-layer and packed-linear calls
(``pyprune_C::bert_layer``, ``pyprune_C::bsr_linear``, timed by wrapping
them) and the rest (Python and the small torch ops between them), the
median of --rounds decodings; --autoregressive: the same split for RUN_DIR's
autoregressive baseline on the packed kernel in --dtype (its attention
kernel's calls, ``pyprune_C::masked_attention``, counted apart too).
"""
import time
from unittest import mock

import torch
from torch.profiler import profile

from _deer_ab import ar_baseline, setup
from pyprune.deer.generate import generate_ids
from pyprune.deer.model import DeerModel


def count_passes(decode) -> list:
    """(target length, whether only some rows' states were asked for) of every ``decode_target`` pass that
    `decode()` runs: the edit iterations' passes (the fill pass runs its last layer on the placeholders)."""
    passes, real = [], DeerModel.decode_target

    def counted(model, cache, targets, rows=None):
        passes.append((targets.shape[1], rows is not None))
        return real(model, cache, targets, rows)
    with mock.patch.object(DeerModel, "decode_target", counted):
        decode()
    return passes


# The extension's ops that hold a decoding's arithmetic; the split times every call of each.
HEAVY_OPS = ("bert_layer", "bsr_linear", "masked_attention")


def split_time(decode, rounds: int) -> dict:
    """{"total", *HEAVY_OPS, "rest"}: seconds of one `decode()` (the round with the median total of
    `rounds`), in all and inside each of ``HEAVY_OPS``' calls, and the rest."""
    inside = dict.fromkeys(HEAVY_OPS, 0.0)

    def timed(name, op):
        def call(*args):
            start = time.perf_counter()
            try:
                return op(*args)
            finally:
                inside[name] += time.perf_counter() - start
        return call

    namespace = torch.ops.pyprune_C
    patches = [mock.patch.object(namespace, name, timed(name, getattr(namespace, name))) for name in HEAVY_OPS]
    splits = []
    for _ in range(rounds):
        inside.update(dict.fromkeys(HEAVY_OPS, 0.0))
        for patch in patches:
            patch.start()
        try:
            start = time.perf_counter()
            decode()
            total = time.perf_counter() - start
        finally:
            for patch in patches:
                patch.stop()
        splits.append({"total": total, **inside, "rest": total - sum(inside.values())})
    return sorted(splits, key=lambda split: split["total"])[len(splits) // 2]


def options(parser) -> None:
    parser.add_argument("--keep", type=float, default=1.0)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rows", type=int, default=25, help="table rows")
    parser.add_argument("--shapes", action="store_true")
    parser.add_argument("--autoregressive", action="store_true", help="split the AR baseline's decoding too")


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
        passes = count_passes(decode)
        fill = sum(only_rows for _, only_rows in passes)
        rows = sum(length for length, _ in passes) / max(len(passes), 1)
        print(f"edit passes per sentence: {(len(passes) - fill) / len(sources):.2f} over every target row, "
              f"{fill / len(sources):.2f} filling placeholders; {rows:.1f} target tokens per pass")
        with profile(record_shapes=args.shapes) as prof:
            decode()
    print(prof.key_averages(group_by_input_shape=args.shapes).table(sort_by="self_cpu_time_total",
                                                                    row_limit=args.rows))


if __name__ == "__main__":
    main()
