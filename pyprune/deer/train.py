"""Training DEER: batching, optimiser and schedule, checkpoints with resume, data parallelism.

``train(deer, pairs, out, config)`` runs Algorithm 1 for ``config.steps``
updates: each step samples a keep ratio (dynamic block pruning), computes
the joint loss (``DeerObjective``) with the glancing ratio annealed 0.5 ->
0.2, updates weights, heads and movement scores, and folds the batch's
length-matching blank penalty into that keep ratio's running one
(``Deer.observe_length_penalty``: the editor's drafts and decoding use it). A checkpoint
(``Deer.save``: model, scores, optimiser, schedule, step, random states) is
written atomically every ``checkpoint_every`` steps and at the end; calling
``train`` again on the same directory resumes from it.

Launched with ``torchrun --nproc-per-node N``, each process takes every N-th
batch and gradients are averaged by ``DistributedDataParallel`` (gloo on CPU,
nccl on CUDA); rank 0 writes the checkpoints.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .._validation import fail
from ..optim import warmup_linear_decay
from .api import Deer
from .generate import pad_rows
from .losses import DeerObjective, LossConfig, glance_ratio


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-4               # pretrained encoder
    head_lr: float = 1e-3          # new heads (output transform, blank, editor classifiers)
    score_lr: float = 1e-2         # movement scores
    warmup: float = 0.05           # fraction of the steps with a linear warm-up
    glance_start: float = 0.5
    glance_end: float = 0.2
    checkpoint_every: int = 500
    time_limit: Optional[float] = None   # seconds; stop (and checkpoint) early when reached
    dropout: Optional[float] = None      # the encoder's dropout (hidden and attention); None: the backbone's own
    seed: int = 0


def encode_pairs(deer: Deer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Token ids of (source, target) pairs, dropping pairs the model cannot represent: sources or
    targets beyond the position table, or targets longer than the CTC slots (alpha x source)."""
    model = deer.model
    sources = deer.encode([s for s, _ in pairs])
    targets = deer.encode([t for _, t in pairs], name="targets")
    kept = []
    for s, t in zip(sources, targets):
        slots = min(int(len(s) * model.config.alpha), model.max_positions)
        if 2 < len(s) <= model.max_positions and 2 < len(t) <= slots:
            kept.append((s, t))
    return kept


def target_vocabulary(tokenizer, targets: Sequence[str]) -> list[int]:
    """Token ids occurring in the training targets (the restricted output vocabulary)."""
    ids = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    return sorted({t for row in ids for t in row})


def _batches(data: Sequence, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches of similar source length (sorted pools of 50 batches), in random order."""
    order = list(range(len(data)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: len(data[i][0]))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _distributed() -> tuple[int, int]:
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def encoder_optimizer(model: torch.nn.Module, lr: float, head_lr: float, extra: Sequence[dict] = (),
                      weight_decay: float = 0.0):
    """AdamW (0.9, 0.98): `model.encoder` (pretrained) at `lr`, every other parameter of `model`
    (new heads) at `head_lr`, then the `extra` groups."""
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    own = {id(p) for p in model.encoder.parameters()}
    heads = [p for p in model.parameters() if id(p) not in own and p.requires_grad]
    groups = [{"params": encoder, "lr": lr}, {"params": heads, "lr": head_lr}, *extra]
    # The fused kernel updates each tensor in one pass (the word embeddings alone are 30k x hidden): the same
    # update as the multi-pass one, to rounding.
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=weight_decay, fused=fused)


def set_dropout(module: torch.nn.Module, p: float) -> None:
    """Set every dropout of `module` (hidden and attention probabilities) to `p`."""
    if not 0 <= p < 1:
        fail("dropout", "a probability in [0, 1)", p)
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p


def train(deer: Deer, pairs: Sequence[tuple[list[int], list[int]]], out: str, config: TrainConfig,
          loss_config: Optional[LossConfig] = None, resume: Optional[dict] = None,
          progress: bool = True) -> dict:
    """Train `deer` on token-id pairs (``encode_pairs``); returns the last step's losses and timing.

    `resume`: the checkpoint dict ``Deer.load`` returned, to continue its optimiser, schedule and step.
    """
    if not pairs:
        fail("pairs", "at least one (source, target) pair the model can represent", "none")
    if config.steps < 1 or config.batch_size < 1:
        fail("config", "steps >= 1 and batch_size >= 1", f"steps={config.steps}, batch_size={config.batch_size}")
    if config.dropout is not None:
        set_dropout(deer.model.encoder, config.dropout)
    rank, world = _distributed()
    device = deer.model.output_bias.device
    objective = DeerObjective(deer.model, deer.pruning, loss_config)
    module = objective
    if world > 1:
        module = torch.nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
    scores = [] if deer.pruning is None else [{"params": list(deer.pruning.parameters()), "lr": config.score_lr}]
    optimizer = encoder_optimizer(deer.model, config.lr, config.head_lr, scores)
    schedule = warmup_linear_decay(optimizer, config.steps, int(config.warmup * config.steps))
    step = 0
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed + 1000 * rank)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        step = int(resume["step"])
        rng.setstate(resume["rng"])
        generator.set_state(resume["generator"])
    pad = deer.model.config.pad_id

    def save(losses: dict) -> None:
        if rank == 0:
            deer.save(out, extra={"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                  "step": step, "rng": rng.getstate(), "generator": generator.get_state(),
                                  "train_config": asdict(config), "losses": losses})

    batches: list = []
    losses: dict = {}
    started = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc="training DEER", disable=not progress or rank != 0)
    deer.model.train()
    while step < config.steps:
        if not batches:
            batches = _batches(pairs, config.batch_size * world, rng)
        batch = batches.pop()
        if len(batch) < world:          # every rank skips it alike: no rank waits for the others
            continue
        index = batch[rank::world]
        sources = pad_rows([pairs[i][0] for i in index], pad).to(device)
        targets = pad_rows([pairs[i][1] for i in index], pad).to(device)
        keep = deer.pruning.sample_sparsity(rng) if deer.pruning is not None else 1.0
        ratio = glance_ratio(step, config.steps, config.glance_start, config.glance_end)
        result = module(sources, targets, glance_ratio=ratio, generator=generator, blank_penalty=deer.penalty(keep))
        optimizer.zero_grad(set_to_none=True)
        result["loss"].backward()
        optimizer.step()
        schedule.step()
        if deer.pruning is not None:
            deer.pruning.step()
        step += 1
        length_penalty = result.pop("length_penalty")
        if world > 1:                   # every rank keeps the same running penalty (on the device: nccl)
            dist.all_reduce(length_penalty)
            length_penalty /= world
        deer.observe_length_penalty(keep, float(length_penalty))
        losses = {k: round(float(v.detach()), 4) for k, v in result.items()}
        bar.update(1)
        bar.set_postfix(loss=f"{losses['loss']:.3f}", ctc=f"{losses['ctc']:.3f}")
        out_of_time = config.time_limit is not None and time.perf_counter() - started > config.time_limit
        if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
            save(losses)
        if out_of_time:
            break
    bar.close()
    deer.model.eval()
    if deer.pruning is not None:
        deer.pruning.set_sparsity(1.0)
    deer.clear_cache()
    return {"step": step, "losses": losses, "seconds": time.perf_counter() - started}
