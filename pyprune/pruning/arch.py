"""What structured pruning needs to know about each supported architecture.

Every supported Hugging Face model is described by the same few parts:

- ``AttentionSpec``: one multi-head attention block (its Q, K, V, O
  projections, head counts and head size). BART has three kinds per decoder
  layer (self, cross) and one per encoder layer; the others one per layer.
- ``FFNSpec``: one feed-forward block (input projections, i.e. up and, for
  SwiGLU, gate; one output projection).
- ``HiddenSpec``: everything that reads or writes the hidden dimension shared
  by all layers (embeddings, normalisations, heads such as ``lm_head``).

A projection is addressed as ``Slot(parent, attr)`` and seen as a matrix of
shape (out_features, in_features) whatever its storage (``nn.Linear`` stores
(out, in), transformers' ``Conv1D`` stores (in, out)); GPT-2's fused
``c_attn`` is one slot whose outputs are [Q | K | V].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

SUPPORTED = ("bert", "roberta", "xlm-roberta", "gpt2", "bart", "llama")


@dataclass(frozen=True)
class Slot:
    """A module held as attribute `attr` of `parent` (so it can be replaced)."""
    parent: nn.Module
    attr: str

    @property
    def module(self) -> nn.Module:
        return getattr(self.parent, self.attr)

    def replace(self, module: nn.Module) -> None:
        setattr(self.parent, self.attr, module)


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer storing its weight as (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def weight_matrix(module: nn.Module) -> Tensor:
    """The weight as (out_features, in_features), a view for Conv1D."""
    return module.weight.t() if is_conv1d(module) else module.weight


def features(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or Conv1D."""
    out_features, in_features = weight_matrix(module).shape
    return out_features, in_features


@dataclass
class AttentionSpec:
    name: str                      # e.g. "encoder.layer.3.attention" (for messages and plans)
    module: nn.Module              # the transformers attention module (head counts live here)
    q: Slot
    k: Slot
    v: Slot
    o: Slot
    num_heads: int
    num_kv_heads: int
    head_dim: int
    fused_qkv: bool = False        # q, k and v are one module with outputs [Q | K | V]

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    @property
    def widths(self) -> tuple[int, int]:
        """(query width, key/value width) in features; a fused [Q | K | V] output splits at these."""
        return self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim

    def kept_kv_heads(self, heads: Tensor) -> Tensor:
        """The key/value heads that the query heads `heads` use (sorted)."""
        return torch.unique(heads.cpu() // self.group_size)

    def projections(self) -> list[Slot]:
        """The distinct projection modules (GPT-2's fused c_attn counted once)."""
        return [self.q, self.o] if self.fused_qkv else [self.q, self.k, self.v, self.o]


@dataclass
class FFNSpec:
    name: str
    inputs: list[Slot]             # up (and gate): neurons are their output rows
    output: Slot                   # down: neurons are its input columns

    @property
    def size(self) -> int:
        return features(self.output.module)[1]


@dataclass
class HiddenSpec:
    size: int
    embeddings: list[Slot]                 # nn.Embedding: hidden = columns
    norms: list[Slot]                      # LayerNorm / RMSNorm over the hidden dimension
    readers: list[Slot] = field(default_factory=list)   # projections whose input is hidden
    writers: list[Slot] = field(default_factory=list)   # projections whose output is hidden
    scaled_embeddings: bool = False        # BART scale_embedding: sqrt(d) baked in at init


@dataclass
class ModelSpec:
    family: str
    attentions: list[AttentionSpec]
    ffns: list[FFNSpec]
    hidden: HiddenSpec
    # Task heads whose use of the hidden dimension pyprune does not know:
    # hidden-dimension pruning refuses models that have any.
    unknown_heads: list[str] = field(default_factory=list)

    def hidden_projections(self) -> tuple[list[Slot], list[Slot]]:
        """(projections reading the hidden state, projections writing it); GPT-2's c_attn once."""
        readers = [slot for a in self.attentions for slot in a.projections() if slot is not a.o]
        readers += [slot for f in self.ffns for slot in f.inputs] + self.hidden.readers
        writers = [a.o for a in self.attentions] + [f.output for f in self.ffns] + self.hidden.writers
        return readers, writers

    def set_heads(self, attention: AttentionSpec, heads: int, kv_heads: int) -> None:
        """Tell the transformers module its new head counts (after compaction)."""
        _set_head_attributes(attention.module, heads, kv_heads, attention.head_dim)


def _set_head_attributes(module: nn.Module, heads: int, kv_heads: int, head_dim: int) -> None:
    # The attributes transformers' attention modules read in forward(); each
    # architecture has its own subset, so set those that exist.
    for attr in ("num_heads", "num_attention_heads"):
        if hasattr(module, attr):
            setattr(module, attr, heads)
    if hasattr(module, "num_key_value_heads"):
        module.num_key_value_heads = kv_heads
    if hasattr(module, "num_key_value_groups"):
        module.num_key_value_groups = heads // kv_heads
    for attr in ("all_head_size", "split_size"):
        if hasattr(module, attr):
            setattr(module, attr, heads * head_dim)


def family_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise NotImplementedError(
            f"model: expected a transformers model of type {', '.join(SUPPORTED)}, got "
            f"{type(model).__name__} (model_type={model_type!r})")
    return "bert" if model_type in ("bert", "roberta", "xlm-roberta") else model_type


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def _width(embeddings: list[Slot]) -> int:
    # The hidden size as the weights have it (a compacted model's config is
    # updated only after its weights are sliced).
    return embeddings[0].module.weight.shape[1]


def _bert(model: nn.Module) -> ModelSpec:
    base = _base(model)
    attentions, ffns, norms = [], [], [Slot(base.embeddings, "LayerNorm")]
    for i, layer in enumerate(base.encoder.layer):
        sa, out = layer.attention.self, layer.attention.output
        attentions.append(AttentionSpec(
            f"encoder.layer.{i}.attention", sa, Slot(sa, "query"), Slot(sa, "key"), Slot(sa, "value"),
            Slot(out, "dense"), sa.num_attention_heads, sa.num_attention_heads, sa.attention_head_size))
        ffns.append(FFNSpec(f"encoder.layer.{i}.ffn", [Slot(layer.intermediate, "dense")],
                            Slot(layer.output, "dense")))
        norms += [Slot(out, "LayerNorm"), Slot(layer.output, "LayerNorm")]
    emb = base.embeddings
    embeddings = [Slot(emb, n) for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
                  if getattr(emb, n, None) is not None]
    readers, writers = [], []
    if getattr(base, "pooler", None) is not None:
        readers.append(Slot(base.pooler, "dense"))
        writers.append(Slot(base.pooler, "dense"))
    _, unknown = _task_heads(model, ())
    hidden = HiddenSpec(_width(embeddings), embeddings, norms, readers, writers)
    return ModelSpec("bert", attentions, ffns, hidden, unknown)


def _gpt2(model: nn.Module) -> ModelSpec:
    base = _base(model)
    attentions, ffns, norms = [], [], []
    for i, block in enumerate(base.h):
        attn = block.attn
        fused = Slot(attn, "c_attn")
        attentions.append(AttentionSpec(f"h.{i}.attn", attn, fused, fused, fused, Slot(attn, "c_proj"),
                                        attn.num_heads, attn.num_heads, attn.head_dim, fused_qkv=True))
        ffns.append(FFNSpec(f"h.{i}.mlp", [Slot(block.mlp, "c_fc")], Slot(block.mlp, "c_proj")))
        norms += [Slot(block, "ln_1"), Slot(block, "ln_2")]
    norms.append(Slot(base, "ln_f"))
    readers, unknown = _task_heads(model, ("lm_head",))
    hidden = HiddenSpec(base.wte.weight.shape[1], [Slot(base, "wte"), Slot(base, "wpe")], norms, readers)
    return ModelSpec("gpt2", attentions, ffns, hidden, unknown)


def _bart(model: nn.Module) -> ModelSpec:
    base = _base(model)
    cfg = model.config
    attentions, ffns, norms = [], [], []

    def attention(name: str, attn: nn.Module) -> AttentionSpec:
        return AttentionSpec(name, attn, Slot(attn, "q_proj"), Slot(attn, "k_proj"), Slot(attn, "v_proj"),
                             Slot(attn, "out_proj"), attn.num_heads, attn.num_heads, attn.head_dim)

    for stack_name in ("encoder", "decoder"):
        stack = getattr(base, stack_name)
        norms.append(Slot(stack, "layernorm_embedding"))
        if getattr(stack, "layer_norm", None) is not None:
            norms.append(Slot(stack, "layer_norm"))
        for i, layer in enumerate(stack.layers):
            prefix = f"{stack_name}.layers.{i}"
            attentions.append(attention(f"{prefix}.self_attn", layer.self_attn))
            norms.append(Slot(layer, "self_attn_layer_norm"))
            if stack_name == "decoder":
                attentions.append(attention(f"{prefix}.encoder_attn", layer.encoder_attn))
                norms.append(Slot(layer, "encoder_attn_layer_norm"))
            ffns.append(FFNSpec(f"{prefix}.ffn", [Slot(layer, "fc1")], Slot(layer, "fc2")))
            norms.append(Slot(layer, "final_layer_norm"))
    embeddings = [Slot(base, "shared"), Slot(base.encoder, "embed_tokens"), Slot(base.decoder, "embed_tokens"),
                  Slot(base.encoder, "embed_positions"), Slot(base.decoder, "embed_positions")]
    readers, unknown = _task_heads(model, ("lm_head",))
    hidden = HiddenSpec(_width(embeddings), embeddings, norms, readers,
                        scaled_embeddings=bool(getattr(cfg, "scale_embedding", False)))
    return ModelSpec("bart", attentions, ffns, hidden, unknown)


def _llama(model: nn.Module) -> ModelSpec:
    base = _base(model)
    attentions, ffns, norms = [], [], []
    for i, layer in enumerate(base.layers):
        attn, mlp = layer.self_attn, layer.mlp
        # Per-layer counts (a model compacted with varying sizes) come from the projections.
        layer_heads = features(attn.q_proj)[0] // attn.head_dim
        layer_kv = features(attn.k_proj)[0] // attn.head_dim
        attentions.append(AttentionSpec(f"layers.{i}.self_attn", attn, Slot(attn, "q_proj"), Slot(attn, "k_proj"),
                                        Slot(attn, "v_proj"), Slot(attn, "o_proj"), layer_heads, layer_kv,
                                        attn.head_dim))
        ffns.append(FFNSpec(f"layers.{i}.mlp", [Slot(mlp, "gate_proj"), Slot(mlp, "up_proj")],
                            Slot(mlp, "down_proj")))
        norms += [Slot(layer, "input_layernorm"), Slot(layer, "post_attention_layernorm")]
    norms.append(Slot(base, "norm"))
    readers, unknown = _task_heads(model, ("lm_head",))
    hidden = HiddenSpec(base.embed_tokens.weight.shape[1], [Slot(base, "embed_tokens")], norms, readers)
    return ModelSpec("llama", attentions, ffns, hidden, unknown)


def _task_heads(model: nn.Module, allowed: tuple[str, ...]) -> tuple[list[Slot], list[str]]:
    """(known task heads reading the hidden state, names of unknown ones).

    Unknown heads do not stop head or neuron pruning (they do not touch
    those), but hidden-dimension pruning refuses models that have them.
    """
    base = _base(model)
    known, unknown = [], []
    if base is not model:
        for name, child in model.named_children():
            if child is base or next(child.parameters(), None) is None:
                continue
            if name in allowed:
                known.append(Slot(model, name))
            else:
                unknown.append(f"{type(model).__name__}.{name}")
    return known, unknown


_BUILDERS = {"bert": _bert, "gpt2": _gpt2, "bart": _bart, "llama": _llama}


def model_spec(model: nn.Module) -> ModelSpec:
    """The pruning view of a supported transformers model (built fresh each call)."""
    return _BUILDERS[family_of(model)](model)
