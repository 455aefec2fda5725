"""Quality and speed of a trained DEER model: BLEU x keep ratio x edit iterations, latency, parameters."""
from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from ..pruning import count_parameters
from ..report import markdown_table, save_plot
from .api import Deer
from .baseline import AutoregressiveBaseline
from .generate import generate_ids
from .model import inference_copy


# Batch-1 latency is the median of this many timed passes over the latency sentences. The passes of all rows
# alternate (every row, then every row again), so a slow spell of a shared machine hits every row alike.
BATCH1_REPEATS = 3


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 13a tokenisation), lowercased: the backbone's tokenizer is uncased."""
    import sacrebleu
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], lowercase=True).score)


def _ms_per_sentence(run, sources, batch_size: int, device: str) -> float:
    from ..benchmarks.common import median_ms
    run(sources[:batch_size], batch_size)                 # warm-up on one batch (not the whole set)
    return median_ms(lambda: run(sources, batch_size), device, warmup=0, repeats=1) / len(sources)


def _mean_length(ids: Sequence[Sequence[int]]) -> float:
    return sum(map(len, ids)) / max(len(ids), 1)


def _batch1_ms(runs: Sequence, sources, device: str, repeats: int) -> list[float]:
    """Median ms per sentence of each `run` at batch 1, the runs' passes interleaved."""
    from ..benchmarks.common import interleaved_median_ms
    for run in runs:
        run(sources[:1], 1)                               # warm-up
    passes = [lambda run=run: run(sources, 1) for run in runs]
    return [ms / len(sources) for ms in interleaved_median_ms(passes, device, repeats)]


def evaluate(deer: Deer, pairs: Sequence[tuple[str, str]], keeps: Sequence[float] = (1.0, 0.75, 0.5, 0.25),
             iterations: Sequence[int] = (0, 1, 2), baseline: Optional[AutoregressiveBaseline] = None,
             latency_sentences: int = 50, progress: bool = True, blank_penalty: Optional[float] = None,
             dtype: Optional[torch.dtype] = None, deletion_penalty: Optional[float] = None,
             insertion_penalty: Optional[float] = None, packed: bool = True) -> dict:
    """One row per (keep, iterations) and one for the baseline: BLEU, ms/sentence at batch 1 and 32, params.
    DEER decodes with each keep ratio's trained penalties (``Deer.decoding``), except those given here, which
    hold for all. `dtype`: DEER and the baseline both compute in this floating-point type (copies; default:
    their own). `packed`: both run their linear layers on the packed-blocks CPU kernel where it can
    (``pack_for_inference``), else both on torch's; the result's ``kernels`` says which ran."""
    from tqdm.auto import tqdm
    sources = deer.encode([s for s, _ in pairs])
    references = [t for _, t in pairs]
    timed = sources[:latency_sentences]
    device = deer.model.output_bias.device.type
    rows, runs = [], []
    kernels = set()                                       # per model: whether its linear layers are packed

    def measure(row: dict, run) -> None:
        ids = run(sources, 32)
        hypotheses = deer.decode(ids)
        row.update(bleu=bleu(hypotheses, references), tokens=_mean_length(ids),
                   ms_batch32=_ms_per_sentence(run, sources, 32, device), example=hypotheses[0])
        rows.append(row)
        runs.append(run)

    for keep, iters in tqdm([(k, i) for k in keeps for i in iterations], desc="evaluating DEER",
                            disable=not progress):
        params = count_parameters(deer.sub_network(keep, dtype), live=True)
        model = deer.sub_network(keep, dtype, packed)
        kernels.add(model.output_layer is not None)
        penalties = deer.decoding(keep, blank_penalty, deletion_penalty, insertion_penalty)
        measure({"model": "DEER", "keep": keep, "iterations": iters, "params": params,
                 **penalties},
                lambda src, batch_size, model=model, iters=iters, penalties=penalties: generate_ids(
                    model, src, max_iter=iters, batch_size=batch_size, **penalties))
    if baseline is not None:
        params = count_parameters(baseline)                 # before packing: packed layers hold buffers
        if dtype is not None or packed:
            baseline = inference_copy(baseline, dtype, packed)
        kernels.add(baseline.output_layer is not None)
        measure({"model": f"autoregressive ({len(baseline.blocks)}-layer decoder, greedy, KV cache)", "keep": 1.0,
                 "iterations": None, "params": params},
                lambda src, batch_size: baseline.generate_ids(src, batch_size=batch_size))
    for row, ms in zip(rows, _batch1_ms(runs, timed, device, BATCH1_REPEATS)):
        row["ms_batch1"] = ms
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
            "device": str(deer.model.output_bias.device), "sentences": len(pairs),
            "dtype": str(dtype or deer.model.output_bias.dtype).replace("torch.", ""),
            "kernels": "mixed" if len(kernels) > 1 else "pyprune packed-blocks" if True in kernels else "torch",
            "latency_sentences": len(timed), "copy_bleu": bleu([s for s, _ in pairs], references),
            "reference_tokens": _mean_length([t[1:-1] for t in deer.encode(references, name="references")]),
            "source_example": pairs[0][0] if pairs else "",
            "reference_example": references[0] if pairs else "", "rows": rows}


def format_table(result: dict) -> str:
    def cells(r: dict) -> list[str]:
        iters = "-" if r["iterations"] is None else ("0 (CTC only)" if r["iterations"] == 0 else str(r["iterations"]))
        penalty = "-" if r.get("blank_penalty") is None else f"{r['blank_penalty']:.2f}"
        if r["iterations"] and "deletion_penalty" in r:
            penalty += f" / {r['deletion_penalty']:g} / {r['insertion_penalty']:g}"
        return [r["model"], f"{r['keep']:g}", iters, penalty, f"{r['params'] / 1e6:.1f}M", f"{r['bleu']:.2f}",
                f"{r['tokens']:.1f}", f"{r['ms_batch1']:.1f}", f"{r['ms_batch32']:.2f}"]
    lines = [f"{result['date']} | {result['device']}, {result['threads']} threads, "
             f"{result.get('dtype', 'float32')}, linear layers on {result.get('kernels', 'torch')} kernels | "
             f"BLEU (sacrebleu, lowercased) "
             f"on {result['sentences']} test sentences | latency: ms per sentence, batch 1 over the first "
             f"{result['latency_sentences']}, batch 32 over all | the sources copied unchanged score "
             f"{result['copy_bleu']:.2f} BLEU | tokens: output tokens per sentence (the references: "
             f"{result['reference_tokens']:.1f}); a longer output takes the autoregressive decoder more steps | "
             f"penalties: subtracted from the CTC blank's logit for the draft / from the editor's delete logit "
             f"/ from its logits of inserting one or more tokens", ""]
    lines += markdown_table(["model", "keep", "edit iterations", "penalties", "parameters", "BLEU", "tokens",
                             "ms/sent batch 1", "ms/sent batch 32"], map(cells, result["rows"]))
    return "\n".join(lines)


def plot(result: dict, path: str) -> bool:
    """BLEU against batch-1 latency, one line per keep ratio; False (and nothing written) without matplotlib."""
    def draw(axis) -> None:
        deer_rows = [r for r in result["rows"] if r["iterations"] is not None]
        for keep in sorted({r["keep"] for r in deer_rows}, reverse=True):
            rows = [r for r in deer_rows if r["keep"] == keep]
            axis.plot([r["ms_batch1"] for r in rows], [r["bleu"] for r in rows], marker="o",
                      label=f"DEER keep {keep:g}")
            for r in rows:
                axis.annotate(str(r["iterations"]), (r["ms_batch1"], r["bleu"]), fontsize=7)
        for r in result["rows"]:
            if r["iterations"] is None:
                axis.scatter([r["ms_batch1"]], [r["bleu"]], marker="s", color="black", label="autoregressive")
    return save_plot(path, draw, "DEER: quality vs latency (labels: edit iterations)",
                     "latency, ms per sentence (batch 1)", "BLEU")
