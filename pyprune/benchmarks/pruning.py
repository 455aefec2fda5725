"""Compaction benchmark: forward latency of a model compacted at compression
ratio 2 against the original, in the same run.

Models: a randomly initialised BERT-base-shaped encoder (12 layers, hidden
768, 12 heads, FFN 3072) and the real SmolLM2-135M (when its package is
installed, see pyprune.models). Extraction is uniform at ratio 2 by weight
magnitude (latency depends on the sizes only): half the heads, neurons and
hidden dimensions (SIMPLE's ratio, applied to each component), and, as a
second row, half the heads and neurons with the hidden dimension kept. Input: batch 8 x 128 tokens. Target (issue): compacted at
least 1.6x faster on CPU.
"""
from __future__ import annotations

import torch

from pyprune.pruning import compact, count_parameters, extract, importance, model_spec

from .common import cli, environment, environment_line, median_ms

BATCH, TOKENS, RATIO = 8, 128, 2.0


def bert_base(seed: int = 0):
    import transformers
    torch.manual_seed(seed)
    config = transformers.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072, attn_implementation="sdpa")
    return transformers.BertModel(config).eval()


def smollm2():
    from pyprune.models import load_smollm2
    model, _ = load_smollm2(attn_implementation="sdpa")
    return model


MODELS = {"bert-base (random)": bert_base, "SmolLM2-135M": smollm2}


def run(device: str = "cpu", repeats: int = 5, models: tuple[str, ...] = tuple(MODELS)) -> dict:
    rows = []
    for name in models:
        try:
            model = MODELS[name]().to(device)
        except FileNotFoundError as missing:        # model package not installed
            rows.append({"model": name, "skipped": str(missing)})
            continue
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (BATCH, TOKENS), generator=generator).to(device)

        def forward(m):
            with torch.inference_mode():
                m(input_ids=ids)

        full_ms = median_ms(lambda: forward(model), device, repeats=repeats)
        for hidden in (True, False):
            plan = extract(model_spec(model), importance.magnitude(model, hidden=hidden), RATIO)
            small = compact(model, plan)
            small_ms = median_ms(lambda: forward(small), device, repeats=repeats)
            spec = model_spec(small)
            rows.append({"model": name, "ratio": RATIO, "pruned": "heads, neurons, hidden" if hidden
                         else "heads, neurons", "params": count_parameters(model),
                         "compacted_params": count_parameters(small), "full_ms": full_ms,
                         "compacted_ms": small_ms, "speedup": full_ms / small_ms,
                         "compacted_shape": f"hidden {spec.hidden.size}, heads {spec.attentions[0].num_heads}, "
                                            f"ffn {spec.ffns[0].size}"})
    return {"environment": environment(device), "batch": BATCH, "tokens": TOKENS, "rows": rows}


def format_table(result: dict) -> str:
    env = result["environment"]
    lines = [f"{environment_line(env, backends=False)} | "
             f"fp32 forward, batch {result['batch']} x {result['tokens']} tokens, uniform ratio 2", "",
             "| model | pruned | params | compacted params (shape) | full ms | compacted ms | speedup |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['pruned']} | {r['params'] / 1e6:.1f}M | {r['compacted_params'] / 1e6:.1f}M "
                     f"({r['compacted_shape']}) | {r['full_ms']:.0f} | {r['compacted_ms']:.0f} | "
                     f"{r['speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return cli("pruning", __doc__, argv, run, format_table)
