"""One DEER decoding at batch 1, over and over, for a sampling profiler outside Python.

    python scripts/deer_decode_loop.py RUN_DIR [--keep 1] [--iterations 1] [--rounds 80] [--dtype bfloat16]

Loads RUN_DIR, decodes the first --sentences test sentences once to warm up,
prints "decoding" with the seconds spent so far (loading), then decodes them
--rounds times more and prints the ms per sentence. Under Linux perf, started
after the loading so that only decoding is sampled, for example:

    perf record -D 10000 -F 999 -o deer.perf -- python scripts/deer_decode_loop.py ar-run --dtype bfloat16
    perf report -i deer.perf -s pid,dso --stdio

splits the samples of the main thread (the Python side and the kernels'
share of the work) from those of the kernels' second thread (its share of
the work, and libgomp's waiting between parallel regions), by library.
"""
import time

import torch

from _deer_ab import deer_decoders, setup


def main() -> None:
    start = time.perf_counter()

    def configure(parser):
        parser.add_argument("--keep", type=float, default=1.0)
        parser.add_argument("--iterations", type=int, default=1)
        parser.set_defaults(rounds=80)
    args, deer, sources = setup(__doc__, configure, dtype_option=True)
    (decode,) = deer_decoders(deer, sources, args.dtype, (args.keep,), (args.iterations,)).values()
    with torch.inference_mode():
        decode()
        print(f"decoding after {time.perf_counter() - start:.1f} s", flush=True)
        begin = time.perf_counter()
        for _ in range(args.rounds):
            decode()
    ms = 1e3 * (time.perf_counter() - begin) / (args.rounds * len(sources))
    print(f"keep {args.keep:g}, {args.iterations} iterations, {args.dtype}: {ms:.2f} ms per sentence")


if __name__ == "__main__":
    main()
