"""SIMPLE's sequence-to-sequence task: a small BART on the vendored Spanish -> English Bible verses.

No pretrained BART can be had offline, so the unpruned model (the teacher)
is trained here first: a word-level tokenizer over the training pairs, a
small BART from a random configuration, ``train_teacher`` steps of
cross-entropy on the targets. The pipeline then learns masks, extracts and
fine-tunes exactly as it does for a language model, and scores perplexity of
the test targets given their sources.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import fail
from ..optim import warmup_linear_decay
from .pipeline import Data, _batches, lm_loss

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")      # BART's ids: bos 0, pad 1, eos 2


def word_tokenizer(texts, min_count: int = 2, max_words: int = 8000):
    """A lowercasing word-level tokenizer (words and punctuation) over `texts`: words seen at least
    `min_count` times, the `max_words` most frequent; the rest are <unk>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    splitter = pre_tokenizers.Whitespace()
    counts = Counter(word for text in texts for word, _ in splitter.pre_tokenize_str(text.lower()))
    words = [w for w, n in counts.most_common(max_words) if n >= min_count]
    vocab = {token: i for i, token in enumerate(SPECIALS + tuple(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = splitter
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")


def small_bart(tokenizer, d_model: int = 128, layers: int = 2, heads: int = 4, ffn: int = 512,
               max_positions: int = 128, seed: int = 0) -> nn.Module:
    """A randomly initialised BartForConditionalGeneration sized for a CPU run, ids from `tokenizer`."""
    import transformers
    config = transformers.BartConfig(
        vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id,
        dropout=0.1)
    torch.manual_seed(seed)
    return transformers.BartForConditionalGeneration(config)


def train_teacher(model: nn.Module, data: Data, steps: int, lr: float = 1e-3, batch_size: int = 32,
                  seed: int = 0, progress: bool = True) -> nn.Module:
    """Train `model` in place on `data` (cross-entropy on the targets), linear decay after 5% warm-up."""
    if steps < 1:
        fail("steps", "at least one training step", steps)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = warmup_linear_decay(optimizer, steps, steps // 20)
    bar = tqdm(_batches(data, batch_size, steps, seed), total=steps, desc="training the BART teacher",
               disable=not progress)
    for batch in bar:
        loss = lm_loss(model(**batch).logits, batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()
