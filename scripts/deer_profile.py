"""Where DEER's decoding time goes: torch's profiler over ``generate_ids``.

    python scripts/deer_profile.py RUN_DIR [--sentences 30] [--keep 1] [--iterations 1]
                                   [--batch-size 1] [--dtype float32] [--rows 25] [--shapes]

Decodes the first --sentences test sentences as ``pyprune deer evaluate``
does (the packed sub-network of --keep, its penalties), once to warm up,
once timed, once under the profiler; prints ms per sentence, how many
target passes over the encoder an edit iteration ran (each sentence also
runs one CTC pass), and the profiler's table of operators by self CPU time
(--shapes: one line per operator and input shapes). The profiler's own
overhead inflates the total; read the shares, not the absolute times.
"""
import time
from unittest import mock

import torch
from torch.profiler import profile

from _deer_ab import setup
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


def options(parser) -> None:
    parser.add_argument("--keep", type=float, default=1.0)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rows", type=int, default=25, help="table rows")
    parser.add_argument("--shapes", action="store_true")


def main() -> None:
    args, deer, sources = setup(__doc__, options, dtype_option=True)
    model, penalties = deer.sub_network(args.keep, args.dtype, packed=True), deer.decoding(args.keep)

    def decode():
        return generate_ids(model, sources, max_iter=args.iterations, batch_size=args.batch_size, **penalties)

    with torch.inference_mode():
        decode()
        start = time.perf_counter()
        decode()
        print(f"keep {args.keep:g}, {args.iterations} iterations, batch {args.batch_size}, {args.dtype}: "
              f"{1e3 * (time.perf_counter() - start) / len(sources):.2f} ms per sentence over {len(sources)}")
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
