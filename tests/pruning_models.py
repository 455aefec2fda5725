"""Tiny random transformers models of every architecture pyprune prunes."""
from __future__ import annotations

import torch
import transformers

FAMILIES = ("bert", "roberta", "xlm-roberta", "gpt2", "bart", "llama")


def tiny_model(family: str, hidden: int = 64, heads: int = 4, seed: int = 0, **overrides):
    """A 2-layer random model (eval mode, eager attention: exact comparisons)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=97, attn_implementation="eager")
    if family in ("bert", "roberta", "xlm-roberta"):
        cls, model_cls = {"bert": (transformers.BertConfig, transformers.BertModel),
                          "roberta": (transformers.RobertaConfig, transformers.RobertaModel),
                          "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaModel)}[family]
        config = cls(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads, intermediate_size=96,
                     max_position_embeddings=80, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     **common, **overrides)
        model = model_cls(config)
    elif family == "gpt2":
        config = transformers.GPT2Config(n_embd=hidden, n_layer=2, n_head=heads, n_positions=64, resid_pdrop=0.0,
                                         embd_pdrop=0.0, attn_pdrop=0.0, **common, **overrides)
        model = transformers.GPT2LMHeadModel(config)
    elif family == "bart":
        config = transformers.BartConfig(d_model=hidden, encoder_layers=2, decoder_layers=2,
                                         encoder_attention_heads=heads, decoder_attention_heads=heads,
                                         encoder_ffn_dim=96, decoder_ffn_dim=80, max_position_embeddings=64,
                                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                         **common, **overrides)
        model = transformers.BartForConditionalGeneration(config)
    elif family == "llama":
        config = transformers.LlamaConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                                          num_key_value_heads=max(1, heads // 2), head_dim=hidden // heads,
                                          intermediate_size=96, max_position_embeddings=64, **common, **overrides)
        model = transformers.LlamaForCausalLM(config)
    else:
        raise ValueError(family)
    # Random init leaves norms at 1/0: perturb them so a wrong slice shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() or "ln_" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def inputs(family: str, batch: int = 2, length: int = 9, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, -3:] = 0
    if family == "bart":
        return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :7])
    return dict(input_ids=ids, attention_mask=mask)


def output(model, batch: dict) -> torch.Tensor:
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state
