"""SIMPLE (Tao et al., 2023): learn structured masks once, extract and distil any compression ratio.

Stage 1 (``learn_masks``): masks on heads, FFN neurons and the shared hidden
dimension (``pyprune.pruning.StructuredMasks``, initialised to 1) are trained
with logits distillation from the unpruned model plus the L1 penalty; the
model's weights stay frozen in this stage (only the masks learn).

Stage 2 (``finetune``), for each ratio: the sub-network is extracted by
threshold from the one set of learned masks (or from a baseline's scores),
the masks are fixed and binary, the kept fraction shrinks along a
progressive schedule, and the weights are fine-tuned with logits
distillation + lambda_causal x key/value distillation + lambda_hidden x
hidden-state distillation (+ lm_weight x the language-model loss). The
result is compacted (``pyprune.pruning.compact``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import fail
from ..pruning import (Importance, KeyValueRecorder, ProgressiveSchedule, StructuredMasks, causal_distillation,
                       compact, extract, extract_fraction, hidden_distillation, importance, logits_distillation,
                       model_spec)
from ..pruning.plan import check_ratio

METHODS = ("simple", "magnitude", "random", "movement")


@dataclass
class SimpleConfig:
    seq_len: int = 128
    batch_size: int = 4
    mask_steps: int = 200
    # Adam moves each mask by about mask_lr per step whatever its gradient's
    # size. The masks must travel far from 1 within the budget: only then does
    # the distillation loss push back on those that matter (a small first-order
    # step ranks by sign consistency, and on SmolLM2 ranked its two outlier
    # hidden dimensions near the bottom). L1 coefficients and the distillation
    # weights below are the paper's (appendix A.3).
    mask_lr: float = 0.1
    l1_heads: float = 2e-4
    l1_neurons: float = 5e-5
    l1_hidden: float = 1e-4
    finetune_steps: int = 200
    lr: float = 5e-5
    lambda_causal: float = 1e-3
    lambda_hidden: float = 1e-3
    lm_weight: float = 0.0
    temperature: float = 1.0
    mode: str = "uniform"
    relu: bool = False
    seed: int = 0
    progress: bool = True


def lm_chunks(tokenizer, text: str, seq_len: int) -> Tensor:
    """Token ids of `text` cut into (n, seq_len) rows (the tail that does not fill a row is dropped)."""
    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    rows = len(ids) // seq_len
    if rows == 0:
        fail("text", f"at least {seq_len} tokens", len(ids))
    return torch.tensor(ids[:rows * seq_len], dtype=torch.long).reshape(rows, seq_len)


Data = Union[Tensor, dict]
"""Training or test rows: a (n, seq_len) LongTensor of token ids (language modelling), or, for
sequence-to-sequence models, a dict of row-aligned tensors ``input_ids``, ``attention_mask`` (n, S) and
``labels`` (n, T), -100 on padding (``pair_rows`` builds it)."""


def pair_rows(tokenizer, pairs, max_length: int = 64) -> dict:
    """Tokenised (source, target) pairs as sequence-to-sequence ``Data``.

    Each side is ``bos ... eos`` (cut to `max_length` tokens), padded with the
    tokenizer's pad id; padded label positions are -100.
    """
    pairs = list(pairs)
    if not pairs:
        fail("pairs", "at least one (source, target) pair", 0)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if None in (bos, eos, pad):
        fail("tokenizer", "bos, eos and pad tokens", (bos, eos, pad))

    def encode(text: str) -> list[int]:
        return [bos] + tokenizer(text, add_special_tokens=False)["input_ids"][:max_length - 2] + [eos]
    sources = [encode(s) for s, _ in pairs]
    targets = [encode(t) for _, t in pairs]
    width_s, width_t = max(map(len, sources)), max(map(len, targets))
    input_ids = torch.full((len(pairs), width_s), pad, dtype=torch.long)
    labels = torch.full((len(pairs), width_t), -100, dtype=torch.long)
    for i, (s, t) in enumerate(zip(sources, targets)):
        input_ids[i, :len(s)] = torch.tensor(s)
        labels[i, :len(t)] = torch.tensor(t)
    return {"input_ids": input_ids, "attention_mask": (input_ids != pad).long(), "labels": labels}


def _size(data: Data) -> int:
    return len(data) if isinstance(data, Tensor) else len(data["input_ids"])


def take(data: Data, index) -> Data:
    """The rows `index` (a slice or index tensor) of `data`, in the same form."""
    return data[index] if isinstance(data, Tensor) else {key: value[index] for key, value in data.items()}


def scored_tokens(data: Data) -> int:
    """How many tokens perplexity averages over: every next token, or every target token."""
    return int(data[:, 1:].numel()) if isinstance(data, Tensor) else int((data["labels"] != -100).sum())


def _kwargs(rows: Data) -> dict:
    """Model keyword arguments for `rows`."""
    return {"input_ids": rows} if isinstance(rows, Tensor) else rows


def _batches(data: Data, batch_size: int, steps: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield _kwargs(take(data, torch.randint(0, _size(data), (batch_size,), generator=generator)))


def _scored(batch: dict) -> Optional[Tensor]:
    """(batch, tokens) 0/1 of the output positions that count (None: all of them)."""
    labels = batch.get("labels")
    return None if labels is None else (labels != -100).long()


def lm_loss(logits: Tensor, batch: dict, reduction: str = "mean") -> Tensor:
    """Next-token cross-entropy: shifted input ids, or the labels of a sequence-to-sequence batch."""
    if "labels" in batch:
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100,
                               reduction=reduction)
    ids = batch["input_ids"]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction=reduction)


def _check_teacher(teacher: Optional[nn.Module]) -> nn.Module:
    if teacher is None:
        fail("teacher", "the unpruned model (distillation needs it)", None)
    return teacher


def learn_masks(model: nn.Module, teacher: nn.Module, chunks: Data, config: SimpleConfig) -> Importance:
    """Stage 1: train masks only (weights frozen) with distillation + L1; return |mask| as importance."""
    teacher = _check_teacher(teacher).eval()
    if teacher is model:
        # Masks hook the module they are attached to: a teacher that is the
        # same module would be masked too (its logits would follow the
        # student's and the distillation gradient would vanish).
        model = copy.deepcopy(model)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with StructuredMasks(model) as masks:
            optimizer = torch.optim.Adam(masks.parameters(), lr=config.mask_lr)
            bar = tqdm(_batches(chunks, config.batch_size, config.mask_steps, config.seed),
                       total=config.mask_steps, desc="learning masks", disable=not config.progress)
            for batch in bar:
                with torch.no_grad():
                    target = teacher(**batch).logits
                loss = logits_distillation(model(**batch).logits, target, config.temperature, _scored(batch))
                loss = loss + masks.l1_penalty(config.l1_heads, config.l1_neurons, config.l1_hidden)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
            return masks.importance()
    finally:
        for p in frozen:
            p.requires_grad_(True)


def baseline_importance(method: str, model: nn.Module, chunks: Data, config: SimpleConfig) -> Importance:
    if method == "magnitude":
        return importance.magnitude(model)
    if method == "random":
        return importance.random(model, seed=config.seed)
    if method == "movement":
        def loss_fn(m, batch):
            return lm_loss(m(**batch).logits, batch)
        steps = max(1, config.mask_steps // 10)
        return importance.movement(model, _batches(chunks, config.batch_size, steps, config.seed), loss_fn)
    fail("method", f"one of {METHODS[1:]} (SIMPLE's own scores come from learn_masks)", repr(method))


def swap_to_relu(model: nn.Module) -> None:
    """Replace GeLU/SiLU FFN activations by ReLU (SIMPLE's option), config included."""
    family = model_spec(model).family
    relu = nn.ReLU()
    for module in model.modules():
        for attr in ("act_fn", "act", "activation_fn", "intermediate_act_fn"):
            if isinstance(getattr(module, attr, None), nn.Module):
                setattr(module, attr, relu)
    for field in {"gpt2": ("activation_function",), "bart": ("activation_function",),
                  "llama": ("hidden_act",), "bert": ("hidden_act",)}[family]:
        setattr(model.config, field, "relu")


def _hidden_states(output) -> tuple:
    """Every layer's hidden states; encoder and decoder ones for sequence-to-sequence models."""
    if getattr(output, "decoder_hidden_states", None) is not None:
        return tuple(output.encoder_hidden_states) + tuple(output.decoder_hidden_states)
    return tuple(output.hidden_states)


def finetune(model: nn.Module, teacher: nn.Module, scores: Importance, ratio: float, chunks: Data,
             config: SimpleConfig) -> nn.Module:
    """Stage 2 for one ratio: progressive fixed masks, distillation, then compaction. `model` is not modified."""
    ratio = check_ratio(ratio)
    teacher = _check_teacher(teacher).eval()
    student = copy.deepcopy(model).train()
    if config.relu:
        swap_to_relu(student)
    spec = model_spec(student)
    schedule = ProgressiveSchedule(ratio, max(1, config.finetune_steps))
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=config.lr)
    with StructuredMasks(student) as masks:
        bar = tqdm(_batches(chunks, config.batch_size, config.finetune_steps, config.seed + 1),
                   total=config.finetune_steps, desc=f"fine-tuning r={ratio:g}", disable=not config.progress)
        for step, batch in enumerate(bar):
            plan = extract_fraction(spec, scores, schedule.keep(step), config.mode)
            masks.apply_plan(plan)
            with torch.no_grad(), KeyValueRecorder(teacher) as teacher_kv:
                target = teacher(**batch, output_hidden_states=True)
            with KeyValueRecorder(student) as student_kv:
                out = student(**batch, output_hidden_states=True)
            loss = logits_distillation(out.logits, target.logits, config.temperature, _scored(batch))
            if config.lambda_causal:
                loss = loss + config.lambda_causal * causal_distillation(student_kv.records, teacher_kv.records,
                                                                         teacher, plan)
            if config.lambda_hidden:
                loss = loss + config.lambda_hidden * hidden_distillation(_hidden_states(out), _hidden_states(target),
                                                                         plan.hidden)
            if config.lm_weight:
                loss = loss + config.lm_weight * lm_loss(out.logits, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        final = extract(spec, scores, ratio, config.mode)
        masks.apply_plan(final)
    return compact(student.eval(), final)


@torch.no_grad()
def perplexity(model: nn.Module, chunks: Data, batch_size: int = 8, progress: bool = False) -> float:
    """exp(mean next-token cross-entropy) over every row of `chunks` (target tokens for seq2seq data)."""
    model.eval()
    total, count = 0.0, 0
    for start in tqdm(range(0, _size(chunks), batch_size), desc="perplexity", disable=not progress):
        rows = take(chunks, slice(start, start + batch_size))
        batch = _kwargs(rows)
        total += float(lm_loss(model(**batch).logits, batch, reduction="sum"))
        count += scored_tokens(rows)
    return math.exp(total / count)


@torch.no_grad()
def latency_ms(model: nn.Module, vocab_size: int, batch: int = 8, tokens: int = 128, repeats: int = 3) -> float:
    """Median forward time (ms) on random ids of shape (batch, tokens), after one warm-up."""
    from ..benchmarks.common import median_ms
    model.eval()
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    return median_ms(lambda: model(input_ids=ids), device.type, warmup=1, repeats=repeats)
