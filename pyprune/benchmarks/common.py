"""Timing, memory and environment helpers shared by the benchmarks."""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import time
from typing import Callable, Optional, Sequence

import torch

import pyprune


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device: str, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of fn() in milliseconds, device work included."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def interleaved_median_ms(fns: Sequence[Callable[[], object]], device: str, repeats: int = 5) -> list[float]:
    """Median wall time of each of `fns` in milliseconds, timed in rounds (every fn once, then every fn
    again), so a slow spell of a shared machine hits each alike. No warm-up: the caller's."""
    times: list = [[] for _ in fns]
    for _ in range(repeats):
        for fn, kept in zip(fns, times):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            kept.append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def copy_bandwidth_gbs(device: str, numel: int = 64 << 20) -> float:
    """Measured device-memory bandwidth: bytes read + written by a large copy."""
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    ms = median_ms(lambda: target.copy_(source), device, warmup=2, repeats=5)
    return 2 * source.numel() * source.element_size() / (ms * 1e6)


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    Reads VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from
    the parent through fork and exec, so a child started by a large benchmark
    process would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def environment(device: str) -> dict[str, str]:
    """Device, versions and date recorded beside every result."""
    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name()
    else:
        device_name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        try:
            with open("/proc/cpuinfo") as info:
                model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
            device_name = f"{model}, {torch.get_num_threads()} threads"
        except (OSError, StopIteration):
            pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name,
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "pyprune": pyprune.__version__,
        "backends": ", ".join(name for name, on in pyprune.backends.summary().items() if on) or "reference only",
        "python": platform.python_version(),
        "cpu_isa": str(pyprune.backends.cpu_isa()),
    }


def environment_line(env: dict[str, str], backends: bool = True) -> str:
    """The head of a results table: date, device, torch and pyprune versions (and the backends loaded, with the
    instruction-set variant the C++ CPU kernels ran on where the results record it)."""
    line = f"{env['date']} | {env['device']} | torch {env['torch']} | pyprune {env['pyprune']}"
    if not backends:
        return line
    isa = env.get("cpu_isa", "None")
    return f"{line} [{env['backends']}{'' if isa == 'None' else f'; CPU kernels: {isa}'}]"


def cli(name: str, doc: str, argv, run: Callable[..., dict], format_table: Callable[[dict], str],
        add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
        run_kwargs: Optional[Callable[[argparse.Namespace], dict]] = None) -> int:
    """The shared command line of `pyprune bench <name>`: --device, --threads,
    --json (written atomically), plus benchmark-specific arguments."""
    parser = argparse.ArgumentParser(prog=f"pyprune bench {name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--json", help="also write the raw results to this file")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    result = run(args.device, **(run_kwargs(args) if run_kwargs else {}))
    print(format_table(result))
    if args.json:
        from pyprune.io import atomic_write_text
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0
