"""Decoding attention benchmark: ``pyprune_C::masked_attention`` against torch's
``F.scaled_dot_product_attention`` (the anchor: with the same boolean mask, then
the transpose and copy that merge the heads, as the layers did before the
kernel), timed interleaved in the same run, float32 and bfloat16.

Shapes are those of decoding the DEER demo's backbone (MiniLM: 12 heads of
32): the autoregressive baseline's step (one query row against its cache or
the source), DEER's edit pass (a target against source + target keys), its
CTC pass (source and slots together, source rows seeing the source only),
the edit pass at batch 32, and one with BERT-base's head size (64). Keys
are padded as in a batch (about one in ten masked). Times are per call,
over a loop of calls.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pyprune.ops import attention_reference

from .common import cli, environment, environment_line, interleaved_median_ms

# (what, batch, heads, queries, keys, head_dim, prefix)
SHAPES = [
    ("AR step, self-attention", 1, 12, 1, 16, 32, 0),
    ("AR step, cross-attention", 1, 12, 1, 20, 32, 0),
    ("DEER edit pass", 1, 12, 17, 38, 32, 0),
    ("DEER CTC pass", 1, 12, 63, 63, 32, 21),
    ("DEER edit pass, batch 32", 32, 12, 17, 38, 32, 0),
    ("DEER edit pass, head 64", 1, 12, 17, 38, 64, 0),
]
DTYPES = (torch.float32, torch.bfloat16)
CALLS = 100


@torch.no_grad()
def run(device: str = "cpu", repeats: int = 7) -> dict:
    if device != "cpu":
        raise ValueError(f"device: expected cpu (the kernel is a CPU kernel), got {device}")
    rows = []
    generator = torch.Generator().manual_seed(0)
    for what, B, H, Q, K, D, prefix in SHAPES:
        for dtype in DTYPES:
            # As the layers hold them: a linear layer's (B, L, H*D) output viewed as heads.
            q, k, v = (torch.randn(B, L, H * D, generator=generator).to(dtype).view(B, L, H, D).transpose(1, 2)
                       for L in (Q, K, K))
            key_valid = torch.rand(B, K, generator=generator) > 0.1
            key_valid[:, 0] = True                       # every row sees a key (torch gives NaN otherwise)
            seen = attention_reference.visible_keys(Q, K, key_valid, prefix, q.device)[:, None]
            scale = D ** -0.5

            def torch_attention():
                for _ in range(CALLS):
                    F.scaled_dot_product_attention(q, k, v, attn_mask=seen).transpose(1, 2).reshape(B, Q, H * D)

            def kernel():
                for _ in range(CALLS):
                    torch.ops.pyprune_C.masked_attention(q, k, v, key_valid, prefix, scale)

            want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=seen)
            got = torch.ops.pyprune_C.masked_attention(q, k, v, key_valid, prefix, scale)
            error = float((got.float() - want.transpose(1, 2).reshape(B, Q, H * D)).abs().max())
            for fn in (torch_attention, kernel):
                fn()                                     # warm-up
            torch_ms, kernel_ms = interleaved_median_ms([torch_attention, kernel], device, repeats)
            rows.append({"what": what, "B": B, "H": H, "Q": Q, "K": K, "D": D, "prefix": prefix,
                         "dtype": str(dtype).replace("torch.", ""), "torch_us": 1e3 * torch_ms / CALLS,
                         "kernel_us": 1e3 * kernel_ms / CALLS, "max_abs_error": error})
    return {"environment": environment(device), "calls": CALLS, "rows": rows}


def format_table(result: dict) -> str:
    env = result["environment"]
    lines = [f"{environment_line(env)} | us per call (median of interleaved loops of {result['calls']} calls), "
             "without autograd", "",
             "| shape | B x H x Q x K x D (prefix) | dtype | torch SDPA us | kernel us | speed-up | max abs error |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['what']} | {r['B']}x{r['H']}x{r['Q']}x{r['K']}x{r['D']} ({r['prefix']}) | {r['dtype']} | "
                     f"{r['torch_us']:.1f} | {r['kernel_us']:.1f} | {r['torch_us'] / r['kernel_us']:.2f}x | "
                     f"{r['max_abs_error']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return cli("attention", __doc__, argv, run, format_table)
