"""What the DEER A/B scripts share: their arguments, the trained model and its first test sentences."""
import argparse

import torch

from pyprune.data.parallel import read_split
from pyprune.deer.api import Deer
from pyprune.deer.cli import _data_dir


def setup(doc: str, configure=None):
    """(arguments, the ``Deer`` of RUN_DIR, the first --sentences test sources as token ids), on 2 threads;
    `configure(parser)` adds a script's own arguments."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--sentences", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    if configure is not None:
        configure(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    deer, _ = Deer.load(args.run)
    sources = deer.encode([s for s, _ in read_split(_data_dir("default"), "test")])[:args.sentences]
    return args, deer, sources


def median(values: list) -> float:
    return sorted(values)[len(values) // 2]
