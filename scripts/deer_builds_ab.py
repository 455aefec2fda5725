"""Decoding on two builds of pyprune: a change with no Python switch (inside the C++ kernels, or in the
decoding loop itself).

    python scripts/deer_builds_ab.py RUN_DIR --base TREE [--dtype bfloat16] [--rounds 5]
                                     [--sentences 30] [--keeps 1 0.75] [--iterations 0 1]
                                     [--batch-size 1]

TREE is another checkout with its extension built in place (for example
``git worktree add TREE HEAD~1 && cd TREE && PYPRUNE_BUILD_EXT=1 python
setup.py build_ext --inplace``). Each round runs one fresh process per build,
the two in turn (base first, then this tree), with PYTHONPATH pointing at
the build; a process decodes the first --sentences test sentences once to
warm up, then once timed per decoding: DEER's packed sub-networks at --keeps
x --iterations and RUN_DIR's AR baseline, all in --dtype on 2 threads, in
batches of --batch-size, as ``pyprune deer evaluate`` times them. Prints the
median ms per sentence of each build, the speed-up, and how many outputs the
two builds share.
"""
import argparse
import json
import os
import subprocess
import sys

from _deer_ab import print_ab

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(HERE)

CHILD = r"""
import json, sys
config = json.loads(sys.argv[1])
sys.path.insert(0, config["scripts"])
import torch
import pyprune
from _deer_ab import ar_baseline, deer_decoders, interleaved
from pyprune.data.parallel import read_split
from pyprune.deer.api import Deer
from pyprune.deer.cli import _data_dir
torch.set_num_threads(2)
dtype = getattr(torch, config["dtype"])
deer, _ = Deer.load(config["run"])
sources = deer.encode([s for s, _ in read_split(_data_dir("default"), "test")])[:config["sentences"]]
decoders = deer_decoders(deer, sources, dtype, config["keeps"], config["iterations"],
                         ar_baseline(config["run"], deer, dtype), config["batch_size"])
for decode in decoders.values():                          # warm-up
    decode()
times, outputs = interleaved(lambda name, _: decoders[name](), list(decoders), (None,), 1, len(sources))
print(json.dumps({"module": pyprune.__file__, "times": {name: ms for (name, _), (ms,) in times.items()},
                  "outputs": {name: ids for (name, _), ids in outputs.items()}}))
"""


def child(tree: str, args) -> dict:
    config = {"scripts": HERE, "dtype": args.dtype, "run": os.path.abspath(args.run), "sentences": args.sentences,
              "keeps": args.keeps, "iterations": args.iterations, "batch_size": args.batch_size}
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], env=env, cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    expected = os.path.join(os.path.realpath(tree), "pyprune")
    if not os.path.realpath(result["module"]).startswith(expected):
        sys.exit(f"deer_builds_ab: the process for {tree} imported {result['module']}, not that tree's build")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--base", required=True, help="the other checkout, its extension built in place")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=30)
    parser.add_argument("--keeps", type=float, nargs="+", default=[1.0, 0.75])
    parser.add_argument("--iterations", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    builds = {"base": args.base, "this tree": TREE}
    times, outputs = {}, {}
    for _ in range(args.rounds):
        for build, tree in builds.items():
            result = child(tree, args)
            for name, ms in result["times"].items():
                times.setdefault((name, build), []).append(ms)
                outputs[name, build] = result["outputs"][name]
    names = list(dict.fromkeys(name for name, _ in times))
    print_ab(names, list(builds), times, outputs, ("base", "this tree"), dtype=args.dtype,
             batch=args.batch_size)


if __name__ == "__main__":
    main()
