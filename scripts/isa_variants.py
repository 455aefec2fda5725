"""The C++ CPU kernels' instruction-set variants against torch, at DEER's decoding shapes.

    python scripts/isa_variants.py [--repeats 7]

For each variant this CPU can run (PYPRUNE_CPU_ISA caps the choice: base,
avx2, avx512, avx512bf16; each in a fresh process, as the variant is chosen
once per process), in float32 on 2 threads: the packed linear kernel
(``pyprune_C::bsr_linear``, every block live) on a 20-token edit pass's FFN
layer (384 -> 1536) and on a one-token step (1536 -> 384), against torch's
``F.linear`` on the same dense weight; and the decoding attention kernel
(``pyprune_C::masked_attention``, 12 heads of 32, 20 query rows against 40
keys) against torch's ``scaled_dot_product_attention``. The anchor is torch in
the same process, which runs its own code at the CPU's full width whatever the
cap, so the ratio shows how each of our variants fares against it. Median of
`repeats` interleaved loops, us per call.
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, torch
import torch.nn.functional as F
from pyprune import backends
from pyprune.benchmarks.common import interleaved_median_ms
from pyprune.sparse.packed import pack_blocks
torch.manual_seed(0)
torch.set_num_threads(2)
CALLS = 50

def interleaved(fns):
    # us per call: the median of REPEATS interleaved loops of CALLS calls, after one warm-up call each.
    for f in fns:
        f()
    loops = [lambda f=f: [f() for _ in range(CALLS)] for f in fns]
    return [ms * 1e3 / CALLS for ms in interleaved_median_ms(loops, "cpu", repeats=REPEATS)]

rows = []
for name, tokens, n, k in (("linear 20 x 384 -> 1536", 20, 1536, 384), ("linear 1 x 1536 -> 384", 1, 384, 1536)):
    w, x = torch.randn(n, k), torch.randn(tokens, k)
    p = pack_blocks(w, torch.ones(n // 32, k // 32, dtype=torch.bool))
    ours, theirs = interleaved([lambda: torch.ops.pyprune_C.bsr_linear(x, p.blocks, p.row_ptr, p.col_index, None, "none"),
                                lambda: F.linear(x, w)])
    rows.append((name, ours, theirs))
q, k, v = torch.randn(1, 12, 20, 32), torch.randn(1, 12, 40, 32), torch.randn(1, 12, 40, 32)
valid = torch.ones(1, 40, dtype=torch.bool)
ours, theirs = interleaved([lambda: torch.ops.pyprune_C.masked_attention(q, k, v, valid, 0, 32 ** -0.5),
                            lambda: F.scaled_dot_product_attention(q, k, v)])
rows.append(("attention 12 x 32, 20 x 40", ours, theirs))
print(json.dumps({"isa": backends.cpu_isa(), "rows": rows}))
"""

LEVELS = ("base", "avx2", "avx512", "avx512bf16")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from pyprune import backends
    if backends.cpu_isa() is None:
        sys.exit("isa_variants: the C++ extension is not built")
    print("| variant | kernel | ours us | torch us | torch / ours |")
    print("|---|---|---:|---:|---:|")
    seen = set()
    for level in LEVELS:
        env = dict(os.environ, PYPRUNE_CPU_ISA=level)
        out = subprocess.run([sys.executable, "-c", CHILD.replace("REPEATS", str(args.repeats))], env=env,
                             check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        if result["isa"] in seen:          # the CPU lacks this level: the cap fell back to one already shown
            continue
        seen.add(result["isa"])
        for name, ours, theirs in result["rows"]:
            print(f"| {result['isa']} | {name} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
