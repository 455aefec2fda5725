"""Configs, saving and loading of compacted models.

A compacted model whose layers all have the same sizes is described by the
ordinary config fields (hidden size, heads, intermediate size...), so
``save_pretrained`` writes a directory that plain transformers loads with
``AutoModel*.from_pretrained`` and no pyprune import. Partially block-sparse
projections are stored as ordinary dense weights with zeros in their dead
blocks, so they load in plain transformers too (as dense layers).

When sizes vary per layer (global extraction), or a derived size cannot be
expressed (BERT, GPT-2 and BART derive the head size as hidden/heads), the
config gets a ``pyprune`` entry: the config the model was built from and the
per-layer sizes. ``pyprune.pruning.from_pretrained`` builds the model from
that base config and shrinks every tensor to its saved shape.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

import torch
from torch import nn

from .._validation import fail
from .arch import model_spec

FORMAT = 1


def _one(values) -> Optional[int]:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def record_sizes(model: nn.Module, base_config: dict) -> bool:
    """Write the compacted sizes into ``model.config``; return whether plain transformers can load it."""
    spec = model_spec(model)
    cfg = model.config
    previous = getattr(cfg, "pyprune", None)
    if previous:
        base_config = previous["base_config"]
    d = spec.hidden.size
    heads = {a.name: (a.num_heads, a.num_kv_heads) for a in spec.attentions}
    ffn = {f.name: f.size for f in spec.ffns}
    head_dim = spec.attentions[0].head_dim
    family = spec.family
    plain = True
    if family in ("bert", "gpt2", "llama"):
        h, kv, f = _one(n for n, _ in heads.values()), _one(k for _, k in heads.values()), _one(ffn.values())
        plain = h is not None and kv is not None and f is not None
        if family == "bert":
            cfg.hidden_size = d
            plain = plain and d == h * head_dim
            if plain:
                cfg.num_attention_heads, cfg.intermediate_size = h, f
        elif family == "gpt2":
            cfg.n_embd = d
            plain = plain and d == h * head_dim
            if plain:
                cfg.n_head, cfg.n_inner = h, f
        else:
            cfg.hidden_size = d
            if plain:
                cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = h, kv, head_dim
                cfg.intermediate_size = f
    elif family == "bart":
        enc_h = _one(n for name, (n, _) in heads.items() if name.startswith("encoder."))
        dec_h = _one(n for name, (n, _) in heads.items() if name.startswith("decoder."))
        enc_f = _one(v for name, v in ffn.items() if name.startswith("encoder."))
        dec_f = _one(v for name, v in ffn.items() if name.startswith("decoder."))
        plain = None not in (enc_h, dec_h, enc_f, dec_f) and d == enc_h * head_dim == dec_h * head_dim
        cfg.d_model = d
        if plain:
            cfg.encoder_attention_heads, cfg.decoder_attention_heads = enc_h, dec_h
            cfg.encoder_ffn_dim, cfg.decoder_ffn_dim = enc_f, dec_f
    from ..nn import BlockSparseLinear
    block_sparse = [name for name, module in model.named_modules() if isinstance(module, BlockSparseLinear)]
    if plain and not block_sparse:
        if previous:
            del cfg.pyprune
    else:
        cfg.pyprune = {"format": FORMAT, "base_config": base_config,
                       "heads": {name: list(v) for name, v in heads.items()}, "ffn": ffn,
                       "hidden_size": d, "block_sparse": block_sparse, "plain_loadable": plain}
    return plain


def save_pretrained(model: nn.Module, path: str, tokenizer=None) -> None:
    """``model.save_pretrained(path)`` (safetensors), atomically.

    The directory is written beside `path` and renamed into place, so an
    interrupted save never leaves a half-written model, and an existing
    directory at `path` is replaced only once the new one is complete.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if os.path.exists(path):
            retired = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.old-")
            os.rename(path, os.path.join(retired, "model"))
            os.rename(staging, path)
            shutil.rmtree(retired)
        else:
            os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _model_class(config):
    import transformers
    architectures = getattr(config, "architectures", None) or []
    for name in architectures:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    fail("config.architectures", "a transformers model class name", architectures)


def from_pretrained(path: str, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Load a model saved by ``save_pretrained``, whatever its per-layer sizes.

    Plain models go straight to transformers; models with a ``pyprune`` config
    entry are built from their base config, every tensor is shrunk to its
    saved shape, and block-sparse projections become ``BlockSparseLinear``.
    """
    import transformers
    from safetensors.torch import load_file

    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        fail("path", "a directory written by save_pretrained (with config.json)", path)
    with open(config_path) as file:
        raw = json.load(file)
    config = transformers.AutoConfig.from_pretrained(path)
    cls = _model_class(config)
    record = raw.get("pyprune")
    if not record:
        return cls.from_pretrained(path, dtype=dtype) if dtype else cls.from_pretrained(path)
    if record.get("format") != FORMAT:
        fail("config.pyprune.format", str(FORMAT), record.get("format"))
    base = type(config).from_dict(record["base_config"])
    base.architectures = config.architectures
    model = cls(base)
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        fail("path", "safetensors weights (save with safe_serialization)", os.listdir(path))
    state = {}
    for name in files:
        state.update(load_file(os.path.join(path, name)))
    _shrink_to(model, state)
    _set_head_counts(model)
    from ..nn import BlockSparseLinear
    for module_path in record.get("block_sparse", []):
        parent_path, _, attr = module_path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        linear = getattr(parent, attr)
        setattr(parent, attr, BlockSparseLinear.from_dense(linear, torch.ones(
            linear.out_features // 32, linear.in_features // 32, dtype=torch.bool)))
    model.load_state_dict(state, strict=False)
    _check_loaded(model, state)
    # Modules keep references to the config they were built with: update that
    # object with the saved fields rather than replacing it.
    for key, value in config.to_dict().items():
        if not key.startswith("_") and key != "transformers_version":
            setattr(model.config, key, value)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _shrink_to(model: nn.Module, state: dict) -> None:
    """Replace each parameter by an empty one of its saved shape; tied ones stay tied."""
    groups: dict[int, list[str]] = {}
    params = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
        params[id(param)] = param
    for key, names in groups.items():
        saved = next((state[n] for n in names if n in state), None)
        if saved is None:
            fail("weights", f"a tensor for {names[0]}", "none in the saved files")
        new = nn.Parameter(torch.empty(saved.shape, dtype=params[key].dtype), params[key].requires_grad)
        for name in names:
            module_path, _, attr = name.rpartition(".")
            module = model.get_submodule(module_path) if module_path else model
            setattr(module, attr, new)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        elif isinstance(module, nn.Embedding):
            module.embedding_dim = weight.shape[1]
        elif type(module).__name__ == "Conv1D":
            module.nx, module.nf = weight.shape
        elif hasattr(module, "normalized_shape"):
            module.normalized_shape = tuple(weight.shape)


def _set_head_counts(model: nn.Module) -> None:
    from .arch import features
    spec = model_spec(model)
    for attention in spec.attentions:
        if attention.fused_qkv:
            heads = features(attention.o.module)[1] // attention.head_dim
            kv = heads
        else:
            heads = features(attention.q.module)[0] // attention.head_dim
            kv = features(attention.k.module)[0] // attention.head_dim
        spec.set_heads(attention, heads, kv)


def _check_loaded(model: nn.Module, state: dict) -> None:
    names = set(dict(model.named_parameters(remove_duplicate=False)))
    unexpected = [k for k in state if k not in names and k not in dict(model.named_buffers())]
    if unexpected:
        fail("weights", "tensors this architecture has", unexpected[:3])
