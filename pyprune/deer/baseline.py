"""The autoregressive baseline: the same pretrained encoder with a small Transformer decoder.

The decoder (pre-LayerNorm, ``layers`` blocks of self-attention,
cross-attention and FFN at the encoder's width) shares the encoder's word
embeddings for input and output (the output restricted to the same
vocabulary as DEER's, plus [eos]). Trained with teacher forcing and label
smoothing 0.1; decoded greedily with a key/value cache: the source is
encoded once, cross-attention keys/values are computed once, and each step
runs one token per row through the decoder: on packed weights
(``pack_for_inference``) in one ``pyprune_C::decoder_step`` call over every
block, as each of DEER's encoder passes is one call.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import backends
from .._memo import unless_recorded
from .._validation import fail
from ..ops import attention
from .generate import pad_rows, sorted_batches
from .model import encoder_pass, fused_layers, norm_weights, packed_weights


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))

    def split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None, causal: bool = False) -> Tensor:
        """`mask`: None or a (batch, 1, 1, keys) bool key-padding mask. Decoding steps (not causal, no gradient)
        run the decoding attention kernel (``pyprune.ops.attention``), as DEER's layers do."""
        q = self.split(self.q(x))
        if not causal and attention.kernel_usable(q, k, v):
            key_valid = None if mask is None else mask[:, 0, 0]
            return self.o(torch.ops.pyprune_C.masked_attention(q, k, v, key_valid, 0, q.shape[-1] ** -0.5))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.o(out.transpose(1, 2).reshape(x.shape))


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn, self.cross_attn = _Attention(hidden, heads), _Attention(hidden, heads)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(3))
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, memory_kv, memory_mask, self_kv=None):
        """`self_kv`: None (training: causal over x) or a list [k, v] cache extended in place."""
        h = self.norms[0](x)
        k, v = self.self_attn.split(self.self_attn.k(h)), self.self_attn.split(self.self_attn.v(h))
        if self_kv is not None:
            if self_kv:
                k, v = torch.cat([self_kv[0], k], 2), torch.cat([self_kv[1], v], 2)
            self_kv[:] = [k, v]
        x = x + self._drop(self.self_attn(h, k, v, causal=self_kv is None))
        x = x + self._drop(self.cross_attn(self.norms[1](x), *memory_kv, mask=memory_mask))
        return x + self._drop(self.ffn(self.norms[2](x)))

    def _drop(self, x: Tensor) -> Tensor:
        # Outside training no dropout module call (DEER's layers skip theirs alike).
        return self.dropout(x) if self.training else x


class AutoregressiveBaseline(nn.Module):
    """Encoder (a BERT-family model) + `layers`-block decoder, greedy decoding with a KV cache.

    Args:
        encoder: the pretrained encoder (BertModel/RobertaModel/XLMRobertaModel).
        vocab: output token ids (DEER's restricted vocabulary); [eos] is added.
        pad_id, bos_id, eos_id: the tokenizer's special ids.
    """

    def __init__(self, encoder: nn.Module, vocab: Sequence[int], pad_id: int, bos_id: int, eos_id: int,
                 layers: int = 3, max_length: int = 128) -> None:
        super().__init__()
        cfg = encoder.config
        hidden, heads = cfg.hidden_size, cfg.num_attention_heads
        self.encoder = encoder
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.max_length = max_length
        out = [eos_id] + sorted({int(t) for t in vocab} - {eos_id, pad_id, bos_id})
        self.register_buffer("out_to_token", torch.tensor(out), persistent=False)
        token_to_out = torch.full((cfg.vocab_size,), -100, dtype=torch.long)
        token_to_out[self.out_to_token] = torch.arange(len(out))
        self.register_buffer("token_to_out", token_to_out, persistent=False)
        self.positions = nn.Embedding(max_length + 1, hidden)
        self.embed_norm = nn.LayerNorm(hidden)
        self.blocks = nn.ModuleList(_Block(hidden, heads, cfg.intermediate_size, cfg.hidden_dropout_prob)
                                    for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden)
        self.output_bias = nn.Parameter(torch.zeros(len(out)))
        self.output_layer: Optional[nn.Module] = None       # set by pack_for_inference
        nn.init.normal_(self.positions.weight, std=cfg.initializer_range)

    def _embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        return self.embed_norm(self.encoder.embeddings.word_embeddings(tokens) + self.positions(positions)[None])

    def output_matrix(self) -> Tensor:
        """(outputs, hidden): the tied word embeddings of the output vocabulary; decoding keeps the gathered
        rows (one gather per generated token cost more than the matmul)."""
        words = self.encoder.embeddings.word_embeddings.weight
        return unless_recorded(self, "_output_cache", (words, self.out_to_token), lambda: words[self.out_to_token])

    def _logits(self, h: Tensor) -> Tensor:
        if self.output_layer is not None:
            return self.output_layer(self.final_norm(h))
        return F.linear(self.final_norm(h), self.output_matrix(), self.output_bias)

    def _memory(self, sources: Tensor):
        valid = sources.ne(self.pad_id)
        if self.training:
            memory = self.encoder(input_ids=sources, attention_mask=valid.long()).last_hidden_state
        else:                  # decoding: the encoder layers as DEER runs them (one bert_layers call, packed)
            memory = self.encoder.embeddings(input_ids=sources)
            layers = self.encoder.encoder.layer
            memory = encoder_pass(layers, memory, valid, fused=fused_layers(layers, memory))
        kv = [(b.cross_attn.split(b.cross_attn.k(memory)), b.cross_attn.split(b.cross_attn.v(memory)))
              for b in self.blocks]
        return kv, valid[:, None, None, :]

    def _fused_step(self, rows: Tensor) -> Optional[tuple[list, list, list]]:
        """(the weights, each block's heads, each block's LayerNorm eps) ``pyprune_C::decoder_step`` takes for
        a decoding step over rows like `rows`, or None where it cannot run every block: it does where
        ``pack_for_inference`` packed them (eight packed linears with biases a block, the GELU in the FFN's
        first), out of training, for CPU float32/bfloat16 rows that need no gradient, with the ``cpp`` backend
        enabled."""
        if (self.training or not attention.kernel_usable(rows, rows, rows)
                or not backends.has_kernel("decoder_step", "CPU")):
            return None
        weights, heads, eps = [], [], []
        for block in self.blocks:
            own, cross, ffn = block.self_attn, block.cross_attn, block.ffn
            if own.heads != cross.heads or type(ffn[1]) is not nn.Identity:
                return None
            linears = packed_weights((own.q, own.k, own.v, own.o, cross.q, cross.o, ffn[0], ffn[2]), rows.dtype,
                                     gelu=6)
            norms = norm_weights(block.norms)
            if linears is None or norms is None:
                return None
            weights += linears + norms[0]
            heads.append(own.heads)
            eps.append(norms[1])
        return weights, heads, eps

    def forward(self, sources: Tensor, targets: Tensor, label_smoothing: float = 0.1) -> Tensor:
        """Teacher-forced loss; `targets` framed [bos] y [eos] and padded."""
        targets = targets[:, :self.max_length + 1]
        kv, mask = self._memory(sources)
        inputs, gold = targets[:, :-1], targets[:, 1:]
        h = self._embed(inputs.masked_fill(inputs.eq(self.eos_id), self.pad_id))
        for block, memory_kv in zip(self.blocks, kv):
            h = block(h, memory_kv, mask)
        labels = self.token_to_out[gold].masked_fill(gold.eq(self.pad_id), -100)
        return F.cross_entropy(self._logits(h).flatten(0, 1), labels.flatten(), ignore_index=-100,
                               label_smoothing=label_smoothing)

    @torch.no_grad()
    def generate_ids(self, sources: Sequence[Sequence[int]], batch_size: int = 32,
                     max_length: Optional[int] = None) -> list[list[int]]:
        """Greedy decoding with a key/value cache; returns token ids without [bos]/[eos]."""
        if len(sources) == 0:
            return []
        self.eval()
        device = self.output_bias.device
        results: list = [None] * len(sources)
        fused = None                               # the step op's weights, gathered at the first batch's first step
        for index, batch in sorted_batches(sources, batch_size, self.pad_id, device):
            limit = min(max_length or self.max_length, self.max_length, 2 * batch.shape[1] + 10)
            kv, mask = self._memory(batch)
            caches = [[] for _ in self.blocks]
            token = torch.full((len(index), 1), self.bos_id, dtype=torch.long, device=device)
            done = torch.zeros(len(index), dtype=torch.bool, device=device)
            out = []
            self_k, self_v = [], []                              # the step op's key/value caches
            cross_k, cross_v, cross_valid = [k for k, _ in kv], [v for _, v in kv], mask[:, 0, 0]
            for t in range(limit):
                h = self._embed(token, t)
                if fused is None and t == 0:
                    fused = self._fused_step(h)
                if fused is not None:
                    h, self_k, self_v = torch.ops.pyprune_C.decoder_step(h, self_k, self_v, cross_k, cross_v,
                                                                         cross_valid, *fused)
                else:
                    for block, memory_kv, cache in zip(self.blocks, kv, caches):
                        h = block(h, memory_kv, mask, cache)
                token = self.out_to_token[self._logits(h)[:, -1].argmax(-1)][:, None]
                token = token.masked_fill(done[:, None], self.pad_id)
                out.append(token)
                done |= token[:, 0].eq(self.eos_id)
                if bool(done.all()):
                    break
            tokens = torch.cat(out, 1)
            for row, i in enumerate(index):
                ids = []
                for t in tokens[row].tolist():
                    if t in (self.eos_id, self.pad_id):
                        break
                    ids.append(t)
                results[i] = ids
        return results


def train_baseline(model: AutoregressiveBaseline, pairs: Sequence[tuple[list[int], list[int]]], steps: int,
                   batch_size: int = 32, lr: float = 1e-4, head_lr: float = 1e-3, seed: int = 0,
                   time_limit: Optional[float] = None, progress: bool = True) -> dict:
    """Teacher-forced training (AdamW, linear warm-up 5% then linear decay)."""
    import time
    if not pairs:
        fail("pairs", "at least one (source, target) pair", "none")
    from ..optim import warmup_linear_decay
    from .train import encoder_optimizer
    optimizer = encoder_optimizer(model, lr, head_lr, weight_decay=0.01)    # AdamW's default, as before
    schedule = warmup_linear_decay(optimizer, steps, steps // 20)
    rng = random.Random(seed)
    model.train()
    started, loss = time.perf_counter(), math.nan
    device = model.output_bias.device
    bar = tqdm(range(steps), desc="training AR baseline", disable=not progress)
    step = 0
    for step in bar:
        index = [rng.randrange(len(pairs)) for _ in range(batch_size)]
        sources = pad_rows([pairs[i][0] for i in index], model.pad_id).to(device)
        targets = pad_rows([pairs[i][1] for i in index], model.pad_id).to(device)
        value = model(sources, targets)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
        loss = float(value.detach())
        bar.set_postfix(loss=f"{loss:.3f}")
        if time_limit is not None and time.perf_counter() - started > time_limit:
            break
    model.eval()
    return {"step": step + 1, "loss": loss, "seconds": time.perf_counter() - started}
