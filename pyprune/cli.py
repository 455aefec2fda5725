"""The ``pyprune`` command line."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="pyprune", description="pyprune command line")
    commands = parser.add_subparsers(dest="command", required=True)
    # add_help=False: --help goes on to the benchmark's own parser.
    bench = commands.add_parser("bench", help="run a benchmark against the PyTorch anchor", add_help=False)
    bench.add_argument("name", choices=["attention", "block_sparse", "ctc", "deer", "levenshtein", "pruning"], help="which benchmark")
    commands.add_parser("info", help="show which backends are built and enabled")
    commands.add_parser("simple", help="SIMPLE pipeline: learn-masks | extract | finetune | evaluate | quick",
                        add_help=False)
    commands.add_parser("deer", help="DEER: prepare-data | train | generate | evaluate", add_help=False)
    commands.add_parser("demo", help="train DEER briefly on CPU and print its quality/latency table",
                        add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        import pyprune
        print(f"pyprune {pyprune.__version__}")
        for name, enabled in pyprune.backends.summary().items():
            extra = f" (CPU kernels: {pyprune.backends.cpu_isa()})" if name == "cpp" and enabled else ""
            print(f"  {name:7s} {'enabled' if enabled else 'off'}{extra}")
        if pyprune.backends.extension_error():
            print(f"  extension error: {pyprune.backends.extension_error()}")
        return 0
    if args.command == "simple":
        from pyprune.simple.cli import main as simple_main
        return simple_main(rest)
    if args.command == "deer":
        from pyprune.deer.cli import main as deer_main
        return deer_main(rest)
    if args.command == "demo":
        from pyprune.deer.cli import demo
        return demo(rest)
    if args.command == "bench":
        import importlib
        return importlib.import_module(f"pyprune.benchmarks.{args.name}").main(rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
