"""What the DEER A/B scripts share: their arguments, the trained model and its first test sentences, the
interleaved timing loops and their table."""
import argparse
import time

import torch

from pyprune.benchmarks.common import interleaved_median_ms
from pyprune.data.parallel import read_split
from pyprune.deer.api import Deer
from pyprune.deer.cli import _data_dir


def setup(doc: str, configure=None, dtype_option: bool = False):
    """(arguments, the ``Deer`` of RUN_DIR, the first --sentences test sources as token ids), on 2 threads;
    `configure(parser)` adds a script's own arguments; `dtype_option`: a --dtype (float32 or bfloat16), given
    back as the torch dtype."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--sentences", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    if dtype_option:
        parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    if configure is not None:
        configure(parser)
    args = parser.parse_args()
    if dtype_option:
        args.dtype = getattr(torch, args.dtype)
    torch.set_num_threads(2)
    deer, _ = Deer.load(args.run)
    sources = deer.encode([s for s, _ in read_split(_data_dir("default"), "test")])[:args.sentences]
    return args, deer, sources


def per_call_us(fns, calls: int, rounds: int) -> list:
    """Median microseconds per call of each of `fns`, each timed over `calls` calls in a row, the fns
    interleaved over `rounds` rounds (``interleaved_median_ms``); no warm-up (the caller's)."""
    loops = [lambda fn=fn: [fn() for _ in range(calls)] for fn in fns]
    return [1e3 * ms / calls for ms in interleaved_median_ms(loops, "cpu", repeats=rounds)]


def call_pair(anchor, new, calls: int = 300, rounds: int = 7) -> tuple:
    """(whether `anchor()` and `new()` give equal tensors on their first calls, which also warm them up, then
    their median us per call, ``per_call_us``)."""
    same = torch.equal(anchor(), new())
    return (same, *per_call_us([anchor, new], calls, rounds))


def median(values: list) -> float:
    return sorted(values)[len(values) // 2]


def deer_decoders(deer, sources, dtype, keeps, iterations, baseline=None, batch_size: int = 1) -> dict:
    """{name: decode()} for DEER at `keeps` x `iterations` on its packed sub-networks in `dtype`, and for
    `baseline` (an AR model already in `dtype`) when given, in batches of `batch_size`."""
    from pyprune.deer.generate import generate_ids
    decoders = {}
    for keep in keeps:
        model, penalties = deer.sub_network(keep, dtype, packed=True), deer.decoding(keep)
        for k in iterations:
            decoders[f"DEER keep {keep:g}, {k} iter."] = (
                lambda m=model, p=penalties, k=k: generate_ids(m, sources, max_iter=k, batch_size=batch_size,
                                                               **p))
    if baseline is not None:
        decoders["autoregressive"] = lambda: baseline.generate_ids(sources, batch_size=batch_size)
    return decoders


def ar_baseline(run: str, deer, dtype):
    """RUN_DIR's AR baseline on the packed kernel in `dtype`, as ``pyprune deer evaluate`` decodes it; None
    where the run has none."""
    from pyprune.deer.cli import _load_baseline
    from pyprune.deer.model import inference_copy
    baseline = _load_baseline(run, deer)
    return None if baseline is None else inference_copy(baseline, dtype)


def decoders_with_baseline(args, deer, sources, iterations) -> dict:
    """``deer_decoders`` at keep 1 and the smallest keep, in --dtype, with RUN_DIR's AR baseline (when it has
    one) on the packed kernel in that dtype: what the switch A/B scripts decode."""
    keeps = (max(deer.keep_ratios), min(deer.keep_ratios))
    return deer_decoders(deer, sources, args.dtype, keeps, iterations, ar_baseline(args.run, deer, args.dtype))


def interleaved(run, names, variants, rounds: int, sentences: int):
    """Calls run(name, variant) for every name and variant in turn, `rounds` times over, in one process (so
    a slow stretch of the machine hits every variant alike): (times, outputs) keyed by (name, variant),
    times in ms per sentence, one per round, outputs those of the last round."""
    times, outputs = {}, {}
    for _ in range(rounds):
        for name in names:
            for variant in variants:
                start = time.perf_counter()
                outputs[name, variant] = run(name, variant)
                times.setdefault((name, variant), []).append(1e3 * (time.perf_counter() - start) / sentences)
    return times, outputs


def switched(decoders: dict, switch, rounds: int, sentences: int):
    """``interleaved`` over `decoders` with switch(False) and switch(True) put in place before each decoding,
    the switch left on after."""
    try:
        return interleaved(lambda name, on: switch(on) or decoders[name](), list(decoders), (False, True), rounds,
                           sentences)
    finally:
        switch(True)


def switch_ab(args, decoders: dict, switch, sentences: int, columns, before=None) -> None:
    """The switch A/B of the scripts: under inference mode, `before()` (a script's own table) when given,
    every decoding of `sentences` sentences once with switch(True) and once with switch(False) as warm-up,
    then ``switched`` over --rounds; prints ``print_ab``'s table with `columns` (switch off, switch on)."""
    with torch.inference_mode():
        if before is not None:
            before()
        for decode in decoders.values():
            for on in (True, False):
                switch(on)
                decode()
        times, outputs = switched(decoders, switch, args.rounds, sentences)
    print_ab(list(decoders), (False, True), times, outputs, columns, dtype=args.dtype)


def print_ab(names, variants, times, outputs, columns, extra=None, dtype=None, batch: int = 1) -> None:
    """The A/B table of decodings at `batch` (captioned with `dtype` when given): per name, the median ms of
    the two `variants` (headed `columns`), the speed-up and how many outputs stay the same; `extra`: (header,
    {name: value}) for one more column after the name."""
    a, b = variants
    rounds, sentences = len(times[names[0], a]), len(outputs[names[0], a])
    print(f"\n{f'{dtype}, ' if dtype else ''}batch {batch}, ms per sentence over {sentences} test sentences, median of "
          f"{rounds} interleaved rounds")
    head = f" {extra[0]} |" if extra else ""
    print(f"| decoding |{head} {columns[0]} ms | {columns[1]} ms | speed-up | outputs unchanged |")
    print("|---|" + ("---:|" if extra else "") + "---:|---:|---:|---:|")
    for name in names:
        before, after = median(times[name, a]), median(times[name, b])
        same = sum(x == y for x, y in zip(outputs[name, a], outputs[name, b]))
        cell = f" {extra[1][name]} |" if extra else ""
        print(f"| {name} |{cell} {before:.2f} | {after:.2f} | {before / after:.2f}x | {same}/{sentences} |")
