"""DEER's model: one BERT-family encoder as CTC generator and Levenshtein editor.

Input layout (Liang et al., 2023, section 3.1): the source tokens, then
target slots; target positions restart at 0 and target tokens get token type
1 (where the encoder has two types). Source rows attend to the source only,
target rows attend to everything (padding excluded). Because the source
never sees the target, every layer's source keys and values depend on the
source alone: ``encode_source`` computes them once and ``decode_target``
runs only the target rows against them: each pass of training, and each of
the three passes of an edit iteration, is one ``decode_target`` call on the
same source cache. ``encode_with_target`` gives the source cache and one
target's states from a single pass over the layers (decoding's CTC pass).
The last layer runs only on the rows whose states are used (the target's;
``decode_target(rows=...)``: the chosen ones): other rows' outputs would
feed only a next layer.
``joint_forward`` runs the same computation as a single pass over the
concatenated input with the block mask (``joint_attention_mask``); the tests
check that all three agree.

Heads, all sharing the encoder:
- vocabulary logits: a new transform (dense, GELU, LayerNorm) and the word
  embeddings as output matrix (tied), restricted to ``vocab`` (token ids seen
  in training) plus one CTC blank class (output index 0);
- deletion classifier (keep/delete per token), placeholder classifier (how
  many tokens to insert between two neighbours, 0..max_placeholders-1, from
  both neighbours' states) and the insertion classifier (the vocabulary
  logits without the blank).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._memo import unless_recorded
from .._validation import fail
from ..nn.packed import PackedLinear, fuse_gelu, pack_linears
from ..sparse.layout import BLOCK
from ..sparse.linear import packed_usable
from .. import backends
from ..ops import attention

BACKBONES = ("bert", "roberta", "xlm-roberta")


@dataclass
class DeerConfig:
    """Everything besides the encoder's own config that a DEER model needs."""
    alpha: float = 2.0                 # target slots per source token
    slots: str = "unk"                 # "unk": [bos] unk... [eos] (published code); "copy": upsampled source
    max_placeholders: int = 64         # placeholder classes: insert 0..max_placeholders-1 tokens per gap
    pad_id: int = 0
    bos_id: int = 101
    eos_id: int = 102
    unk_id: int = 100
    mask_id: int = 103                 # the editor's placeholder token
    vocab: list = field(default_factory=list)   # output token ids (empty: the whole vocabulary)

    def to_dict(self) -> dict:
        return asdict(self)


def special_ids(tokenizer) -> dict:
    """pad/bos/eos/unk/mask ids of a BERT-family tokenizer (bos = [CLS] or <s>, eos = [SEP] or </s>)."""
    ids = dict(pad_id=tokenizer.pad_token_id, bos_id=tokenizer.cls_token_id, eos_id=tokenizer.sep_token_id,
               unk_id=tokenizer.unk_token_id, mask_id=tokenizer.mask_token_id)
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        fail("tokenizer", "a BERT-family tokenizer with pad, cls, sep, unk and mask tokens", f"none for {missing}")
    return ids


class FusedLayers(NamedTuple):
    """Every encoder layer's ``pyprune_C::bert_layer`` weights, layer after layer (``_fused_weights``), and each
    layer's heads and LayerNorm eps: a pass over them is one ``pyprune_C::bert_layers`` call (``run_fused``).
    The lists hold the layers' tensors as they were when they were gathered (``fused_layers``)."""
    weights: list
    heads: list
    eps: list

    def first(self, n: int) -> "FusedLayers":
        """The first `n` layers'."""
        return FusedLayers(self.weights[:n * FUSED_TENSORS], self.heads[:n], self.eps[:n])


def fused_layers(layers: Sequence[nn.Module], rows: Tensor) -> Optional[FusedLayers]:
    """``FusedLayers`` of `layers` for passes over rows like `rows` (their dtype and device), or None where
    there are none or one of them cannot run fused (``_fused_weights``)."""
    if not layers or not backends.has_kernel("bert_layers", "CPU"):
        return None
    key_padding = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    weights, heads, eps = [], [], []
    for layer in layers:
        fused = _fused_weights(layer, rows, key_padding)
        if fused is None:
            return None
        weights += fused[0]
        heads.append(fused[1])
        eps.append(fused[2])
    return FusedLayers(weights, heads, eps)


def run_fused(fused: FusedLayers, h: Tensor, key_valid: Tensor, prefix_keys: Sequence[Tensor] = (),
              prefix_values: Sequence[Tensor] = (), source_rows: int = 0, last_queries: int = 0,
              keep_keys: int = 0) -> tuple[Tensor, list, list]:
    """A pass over `fused`'s layers in one ``pyprune_C::bert_layers`` call: what ``_layer_kv`` gives layer by
    layer (`key_valid`: the (batch, keys) key-padding mask; `prefix_keys`, `prefix_values`: each layer's
    cached keys and values, or none), the last layer on the rows from `last_queries` on; returns (those
    rows' states, each layer's keys and values cut to their first `keep_keys` rows, none where it is 0)."""
    return torch.ops.pyprune_C.bert_layers(h, list(prefix_keys), list(prefix_values), key_valid, source_rows,
                                           last_queries, keep_keys, fused.weights, fused.heads, fused.eps)


def encoder_pass(layers: Sequence[nn.Module], h: Tensor, valid: Tensor, prefix_keys: Sequence[Tensor] = (),
                 prefix_values: Sequence[Tensor] = (), fused: Optional[FusedLayers] = None,
                 count: Optional[int] = None) -> Tensor:
    """`h`'s rows after the first `count` (default: all) of `layers` under the (batch, keys) key-padding mask
    `valid`, each layer's cached keys and values in `prefix_keys`, `prefix_values` (or none): one
    ``pyprune_C::bert_layers`` call on `fused` (their ``FusedLayers``) where given, else layer by layer."""
    count = len(layers) if count is None else count
    if count == 0:
        return h
    if fused is not None and h.shape[1]:
        return run_fused(fused.first(count), h, valid, prefix_keys[:count], prefix_values[:count])[0]
    mask = valid[:, None, None, :]
    for i in range(count):
        h = _layer_kv(layers[i], h, h, (prefix_keys[i], prefix_values[i]) if prefix_keys else None, mask)[0]
    return h


class SourceCache:
    """Per-layer source keys and values, (batch, heads, source, head_dim), and the source padding mask; and
    `fused`, the layers' gathered weights (``FusedLayers``) the passes over the cached source use, where the
    layers fuse. A cache belongs to the model as it was when the cache was made."""

    def __init__(self, keys: list, values: list, mask: Tensor, fused: Optional[FusedLayers] = None) -> None:
        self.keys, self.values, self.mask, self.fused = keys, values, mask, fused

    def select(self, rows: Tensor) -> "SourceCache":
        return SourceCache([k[rows] for k in self.keys], [v[rows] for v in self.values], self.mask[rows],
                           self.fused)


def pack_for_inference(model: nn.Module) -> int:
    """Swap, in place, the linear layers of `model` (a ``DeerModel`` or the autoregressive baseline) and its
    output projection (``output_matrix()``, ``output_bias``) for ``PackedLinear`` ones, which run on the
    packed-blocks CPU kernel, with the GELUs that follow them in their epilogue (``fuse_gelu``) and
    compacted FFN widths padded to whole blocks (``_pad_ffn_widths``); returns how many were swapped (0: the
    kernel cannot run this model's weights, for example on a GPU or in float16, and nothing changed). The
    model then only decodes: packed layers do not train, and its other parameters stop requiring gradients,
    so that decoding outside ``torch.no_grad()`` does not hand the packed layers inputs that do."""
    _pad_ffn_widths(model)
    count = pack_linears(model)
    if count:
        fuse_gelu(model)
        with torch.no_grad():
            model.output_layer = PackedLinear(model.output_matrix(), model.output_bias)
        model.requires_grad_(False)
        count += 1
    return count


def _pad_ffn_widths(model: nn.Module) -> None:
    """Give every BERT-family FFN (``intermediate.dense`` then ``output.dense``, plain linears) whose width
    is not a multiple of the 32-wide block (a compacted sub-network's) zero neurons up to the next multiple: exact (a zero
    neuron's activation meets zero weights), and the packed layers then need no padding and slicing per
    call. Only where the packed kernel runs (the model is otherwise left as it is)."""
    for m in model.modules():
        first = getattr(getattr(m, "intermediate", None), "dense", None)
        second = getattr(getattr(m, "output", None), "dense", None)
        if (type(first) is not nn.Linear or type(second) is not nn.Linear
                or not packed_usable(first.weight.device, first.weight.dtype)):
            continue
        width = first.out_features
        extra = -width % BLOCK
        if extra == 0 or second.in_features != width:
            continue
        with torch.no_grad():
            wider = nn.Linear(first.in_features, width + extra, first.bias is not None).to(first.weight)
            wider.weight.copy_(F.pad(first.weight, (0, 0, 0, extra)))
            if first.bias is not None:
                wider.bias.copy_(F.pad(first.bias, (0, extra)))
            reader = nn.Linear(width + extra, second.out_features, second.bias is not None).to(second.weight)
            reader.weight.copy_(F.pad(second.weight, (0, extra)))
            if second.bias is not None:
                reader.bias.copy_(second.bias)
        m.intermediate.dense, m.output.dense = wider, reader


@torch.inference_mode(False)
def inference_copy(model: nn.Module, dtype: Optional[torch.dtype] = None, packed: bool = True) -> nn.Module:
    """A copy of `model` (a ``DeerModel`` or the autoregressive baseline) for decoding, in eval mode: cast to
    `dtype` (None: its own) and, with `packed`, on the packed-blocks kernel where it runs
    (``pack_for_inference``; ``output_layer`` is set when it did). Made of ordinary tensors even when called
    under ``torch.inference_mode`` (the copy is kept and used outside it too)."""
    model = copy.deepcopy(model).to(dtype)
    if packed:
        pack_for_inference(model)
    return model.eval()


# The transformers embedding classes whose forward, given token types and positions, is LayerNorm(word +
# token type + position) and dropout: ``_plain_embeddings`` computes it where dropout is off and no gradient
# is recorded.
PLAIN_EMBEDDINGS = ("BertEmbeddings", "RobertaEmbeddings", "XLMRobertaEmbeddings")


def _plain_embeddings(embeddings: nn.Module, ids: Tensor, token_type: int, position_offset: int) -> Tensor:
    """What `embeddings` (a ``PLAIN_EMBEDDINGS`` module out of training) gives for `ids` of one token type at
    positions `position_offset`, `position_offset` + 1, ...: the same sums in the same order, so the same
    bits, without its six module calls and its token type and position index tensors (half the time of a
    call at decoding's few rows)."""
    parts = embeddings._modules
    x = F.embedding(ids, parts["word_embeddings"].weight) + parts["token_type_embeddings"].weight[token_type]
    x = x + parts["position_embeddings"].weight[position_offset:position_offset + ids.shape[1]]
    norm = parts["LayerNorm"]
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _heads(x: Tensor, heads: int) -> Tensor:
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


def _layer(layer: nn.Module, h: Tensor, keys: Tensor, values: Tensor, mask: Tensor, source_rows: int = 0) -> Tensor:
    """One BERT layer for query rows `h` given all keys/values and a (batch, 1, rows or 1, keys) bool mask.

    `source_rows`: the first rows of `h` are source rows, which attend only to the first `source_rows` keys.
    Decoding (no gradient, no dropout, a key-padding mask) runs the decoding attention kernel
    (``pyprune.ops.attention``); training and other masks run torch's attention.
    """
    sa = layer.attention.self
    q = _heads(sa.query(h), sa.num_attention_heads)
    p = sa.dropout.p if sa.training else 0.0
    if p == 0.0 and mask.shape[2] == 1 and attention.kernel_usable(q, keys, values):
        ctx = torch.ops.pyprune_C.masked_attention(q, keys, values, mask[:, 0, 0], source_rows,
                                                   q.shape[-1] ** -0.5)
    else:
        if source_rows:
            S = source_rows
            ctx = torch.cat([F.scaled_dot_product_attention(q[:, :, :S], keys[:, :, :S], values[:, :, :S],
                                                            attn_mask=mask[..., :S], dropout_p=p),
                             F.scaled_dot_product_attention(q[:, :, S:], keys, values, attn_mask=mask,
                                                            dropout_p=p)], 2)
        else:
            ctx = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=p)
        ctx = ctx.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1)
    a = _residual_norm(layer.attention.output, ctx, h)
    ffn = layer.intermediate
    x = ffn.dense(a)
    if type(ffn.intermediate_act_fn) is not nn.Identity:     # (packed: the GELU is in the dense layer)
        x = ffn.intermediate_act_fn(x)
    return _residual_norm(layer.output, x, a)


def _child(module: nn.Module, *names: str) -> nn.Module:
    """``module.<names[0]>.<names[1]>...`` read from ``_modules`` directly, without ``nn.Module.__getattr__``'s
    fallback search, which a layer call would otherwise go through about a dozen times."""
    for name in names:
        module = module._modules[name]
    return module


# Tensors per layer in ``pyprune_C::bert_layer``'s weights: four per packed linear (six), two per LayerNorm.
FUSED_TENSORS = 28


def _fused_weights(layer: nn.Module, q_in: Tensor, mask: Tensor) -> Optional[tuple[list, int, float]]:
    """(the weights, heads, LayerNorm eps) ``pyprune_C::bert_layer`` takes for `layer`, or None where it
    cannot run the layer: it does where ``pack_for_inference`` packed it (six packed linears with biases and
    whole 32-wide blocks, the GELU in the FFN's first), out of training, for a key-padding `mask` and CPU
    float32/bfloat16 rows that need no gradient, with the ``cpp`` backend enabled."""
    if (layer.training or mask.shape[2] != 1 or not attention.kernel_usable(q_in, q_in, q_in)
            or not backends.has_kernel("bert_layer", "CPU")):
        return None
    intermediate = _child(layer, "intermediate")
    if type(intermediate._modules["intermediate_act_fn"]) is not nn.Identity:
        return None
    sa, out, output = _child(layer, "attention", "self"), _child(layer, "attention", "output"), _child(layer, "output")
    linears = (sa._modules["query"], sa._modules["key"], sa._modules["value"], out._modules["dense"],
               intermediate._modules["dense"], output._modules["dense"])
    weights = packed_weights(linears, q_in.dtype, gelu=4)
    affine = norm_weights((out._modules["LayerNorm"], output._modules["LayerNorm"]))
    if weights is None or affine is None:
        return None
    return weights + affine[0], sa.num_attention_heads, affine[1]


def packed_weights(linears: Sequence[nn.Module], dtype: torch.dtype, gelu: int) -> Optional[list]:
    """The (blocks, row_ptr, col_index, bias) of each of `linears` in turn, as the fused decoding ops take
    them, or None where one is not a ``PackedLinear`` of `dtype` with a bias and whole 32-wide blocks, with
    the GELU in its epilogue exactly for the one at index `gelu`."""
    weights = []
    for i, linear in enumerate(linears):
        if (type(linear) is not PackedLinear or linear.activation != ("gelu" if i == gelu else "none")
                or linear.in_features % BLOCK or linear.out_features % BLOCK):
            return None
        buffers = linear._buffers
        if buffers["bias"] is None or buffers["blocks"].dtype is not dtype:
            return None
        weights += (buffers["blocks"], buffers["row_ptr"], buffers["col_index"], buffers["bias"])
    return weights


def norm_weights(norms: Sequence[nn.Module]) -> Optional[tuple[list, float]]:
    """(each of `norms`' weight and bias in turn, their one eps), or None where one is not an affine
    ``nn.LayerNorm`` or their eps differ."""
    if any(type(n) is not nn.LayerNorm for n in norms) or len({n.eps for n in norms}) != 1:
        return None
    affine = [n._parameters[name] for n in norms for name in ("weight", "bias")]
    if any(p is None for p in affine):
        return None
    return affine, norms[0].eps


def _layer_kv(layer: nn.Module, kv_in: Tensor, q_in: Tensor, prefix: Optional[tuple[Tensor, Tensor]],
              mask: Tensor, source_rows: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(`q_in`'s rows after `layer`, `kv_in`'s keys, its values): the query rows attend to the `prefix` keys and
    values (cached ones, or None) followed by `kv_in`'s, under `mask` and `source_rows` (as in ``_layer``).
    Where ``_fused_weights`` allows, the whole layer is one call of ``pyprune_C::bert_layer`` (the same ops
    in C++: the Python between them costs about a quarter of a layer at decoding's few rows)."""
    fused = _fused_weights(layer, q_in, mask)
    if fused is not None:
        prefix_k, prefix_v = prefix if prefix is not None else (None, None)
        return torch.ops.pyprune_C.bert_layer(kv_in, q_in, prefix_k, prefix_v, mask[:, 0, 0], source_rows, *fused)
    k, v = _kv(layer, kv_in)
    keys, values = (k, v) if prefix is None else (torch.cat([prefix[0], k], 2), torch.cat([prefix[1], v], 2))
    return _layer(layer, q_in, keys, values, mask, source_rows), k, v


def _layer_on_rows(layer: nn.Module, h: Tensor, rows: Tensor, prefix: Optional[tuple[Tensor, Tensor]],
                   mask: Tensor) -> Tensor:
    """``_layer_kv(layer, h, h, prefix, mask)[0][rows]`` (`rows`: a (batch, T) bool; a key-padding `mask`)
    with only those rows' queries, attention, output and FFN computed: every other row of a layer's output
    feeds nothing but the next layer, so the last layer need not compute it. The rows are packed to the
    front of each batch row (``h[rows]``'s order) and padded to the widest."""
    counts = rows.sum(1)
    width = int(counts.max()) if rows.numel() else 0
    if width == 0:
        return h.new_zeros(0, h.shape[-1])
    order = torch.sort(rows.logical_not().to(torch.uint8), dim=1, stable=True).indices[:, :width]
    picked = h.gather(1, order[..., None].expand(-1, -1, h.shape[-1]))
    out = _layer_kv(layer, h, picked, prefix, mask)[0]
    return out[torch.arange(width, device=h.device) < counts[:, None]]


def _residual_norm(block: nn.Module, x: Tensor, residual: Tensor) -> Tensor:
    """What a BERT-family ``SelfOutput``/``Output`` block computes (dense, dropout, LayerNorm of the sum with
    the residual), without its module call and, outside training, without the dropout's: at decoding's few
    rows the calls cost about as much as the arithmetic."""
    x = block.dense(x)
    if block.training:
        x = block.dropout(x)
    return block.LayerNorm(x + residual)


def _kv(layer: nn.Module, h: Tensor) -> tuple[Tensor, Tensor]:
    sa = layer.attention.self
    return _heads(sa.key(h), sa.num_attention_heads), _heads(sa.value(h), sa.num_attention_heads)


class DeerModel(nn.Module):
    """A BERT-family encoder (``BertModel``/``RobertaModel``/``XLMRobertaModel``) fine-tuned as DEER.

    Args:
        encoder: the pretrained encoder (no task head).
        config: ``DeerConfig`` (special token ids, slots, output vocabulary).
    """

    def __init__(self, encoder: nn.Module, config: DeerConfig) -> None:
        super().__init__()
        model_type = getattr(getattr(encoder, "config", None), "model_type", None)
        if model_type not in BACKBONES or not hasattr(encoder, "encoder"):
            fail("encoder", f"a BertModel, RobertaModel or XLMRobertaModel (model_type in {BACKBONES})",
                 f"{type(encoder).__name__} (model_type={model_type!r})")
        if config.alpha < 1:
            fail("config.alpha", "at least 1 target slot per source token", config.alpha)
        if config.slots not in ("unk", "copy"):
            fail("config.slots", "'unk' or 'copy'", repr(config.slots))
        if config.max_placeholders < 2:
            fail("config.max_placeholders", "at least 2 classes", config.max_placeholders)
        self.encoder = encoder
        self.config = config
        enc = encoder.config
        vocab_size, hidden = enc.vocab_size, enc.hidden_size
        # RoBERTa-style position tables start after the padding index.
        self.position_offset = enc.pad_token_id + 1 if model_type != "bert" else 0
        self.max_positions = enc.max_position_embeddings - self.position_offset
        self.target_type = 1 if getattr(enc, "type_vocab_size", 1) > 1 else 0
        vocab = sorted(set(int(t) for t in config.vocab)) if config.vocab else list(range(vocab_size))
        special = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
        vocab = [t for t in vocab if t not in special]
        if config.unk_id not in vocab:
            vocab.append(config.unk_id)
        if any(t < 0 or t >= vocab_size for t in vocab):
            fail("config.vocab", f"token ids in [0, {vocab_size})", f"min {min(vocab)}, max {max(vocab)}")
        out_to_token = torch.tensor([config.pad_id] + sorted(vocab), dtype=torch.long)
        token_to_out = torch.full((vocab_size,), out_to_token.tolist().index(config.unk_id), dtype=torch.long)
        token_to_out[out_to_token[1:]] = torch.arange(1, len(out_to_token))
        self.register_buffer("out_to_token", out_to_token, persistent=False)
        self.register_buffer("token_to_out", token_to_out, persistent=False)
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(),
                                       nn.LayerNorm(hidden, eps=enc.layer_norm_eps))
        self.blank = nn.Parameter(torch.randn(1, hidden) * enc.initializer_range)
        self.output_bias = nn.Parameter(torch.zeros(len(out_to_token)))
        self.delete_head = nn.Linear(hidden, 2)
        self.output_layer: Optional[nn.Module] = None       # set by pack_for_inference
        self.placeholder_head = nn.Linear(2 * hidden, config.max_placeholders)
        for head in (self.transform[0], self.delete_head, self.placeholder_head):
            nn.init.normal_(head.weight, std=enc.initializer_range)
            nn.init.zeros_(head.bias)

    # ------------------------------------------------------------ sizes and inputs
    @property
    def num_classes(self) -> int:
        """Output classes: the CTC blank (index 0) and the output vocabulary."""
        return len(self.out_to_token)

    def num_slots(self, source_lengths: Tensor) -> Tensor:
        """Target slots per source: alpha x source length, capped by the position table."""
        return (source_lengths.float() * self.config.alpha).long().clamp(max=self.max_positions)

    def check_sources(self, sources: Tensor, name: str = "sources") -> Tensor:
        """(batch,) source lengths; rows must hold at least [bos] x [eos] and fit the position table."""
        if not isinstance(sources, Tensor) or sources.dim() != 2 or sources.dtype.is_floating_point:
            fail(name, "a (batch, length) integer tensor of token ids",
                 type(sources).__name__ if not isinstance(sources, Tensor) else f"{sources.dtype} {tuple(sources.shape)}")
        lengths = sources.ne(self.config.pad_id).sum(1)
        if sources.shape[0] == 0:
            fail(name, "at least one source", "an empty batch")
        if bool((lengths <= 2).any()):
            fail(name, "non-empty sources (a token besides [bos] and [eos])",
                 f"an empty source in row {int((lengths <= 2).nonzero()[0])}")
        if int(lengths.max()) > self.max_positions:
            fail(name, f"sources of at most {self.max_positions} tokens (the position table)",
                 f"{int(lengths.max())} tokens")
        return lengths

    def ctc_slots(self, sources: Tensor, source_lengths: Tensor) -> Tensor:
        """The CTC generator's target input: [bos] + slots + [eos] per row, padded."""
        n = self.num_slots(source_lengths)
        width = int(n.max())
        pos = torch.arange(width, device=sources.device)[None]
        c = self.config
        if c.slots == "unk":
            fill = torch.full_like(pos, c.unk_id).expand(len(n), width)
        else:
            # Upsample the source content (without its [bos]/[eos]) uniformly over the inner slots.
            content = (source_lengths - 2).clamp(min=1)[:, None]
            index = 1 + (pos - 1).clamp(min=0) * content // (n[:, None] - 2).clamp(min=1)
            fill = sources.gather(1, index.clamp(max=sources.shape[1] - 1))
        slots = torch.where(pos == 0, c.bos_id, torch.where(pos == n[:, None] - 1, c.eos_id, fill))
        return torch.where(pos < n[:, None], slots, c.pad_id)

    def _embed(self, ids: Tensor, token_type: int) -> Tensor:
        """The backbone's embeddings of `ids` (a (batch, T) tensor of one token type, positions from 0)."""
        embeddings = self.encoder.embeddings
        if not embeddings.training and not torch.is_grad_enabled() and type(embeddings).__name__ in PLAIN_EMBEDDINGS:
            return _plain_embeddings(embeddings, ids, token_type, self.position_offset)
        positions = torch.arange(ids.shape[1], device=ids.device)[None].expand_as(ids) + self.position_offset
        types = torch.full_like(ids, token_type)
        return embeddings(input_ids=ids, token_type_ids=types, position_ids=positions)

    # ------------------------------------------------------------ encoder passes
    def encode_source(self, sources: Tensor) -> SourceCache:
        """Run the source rows (which see only the source) and keep each layer's keys and values."""
        self.check_sources(sources)
        valid = sources.ne(self.config.pad_id)
        mask = valid[:, None, None, :]
        h = self._embed(sources, 0)
        keys, values = [], []
        layers = self.encoder.encoder.layer
        for i, layer in enumerate(layers):
            if i + 1 < len(layers):
                h, k, v = _layer_kv(layer, h, h, None, mask)
            else:                              # the last layer's source states feed nothing
                k, v = _kv(layer, h)
            keys.append(k)
            values.append(v)
        return SourceCache(keys, values, valid)

    def _check_targets(self, targets: Tensor, batch: int) -> None:
        if targets.dim() != 2 or targets.shape[0] != batch:
            fail("targets", f"a (batch={batch}, length) tensor", tuple(targets.shape))
        if targets.shape[1] > self.max_positions:
            fail("targets", f"at most {self.max_positions} tokens (the position table)", targets.shape[1])

    def decode_target(self, cache: SourceCache, targets: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        """Target hidden states (batch, T, hidden): target rows see the cached source and the target.

        `rows`: a (batch, T) bool of the positions whose states are wanted; then only those, (rows.sum(),
        hidden) in ``h[rows]``'s order, with the last layer run on those rows alone (``_layer_on_rows``)."""
        self._check_targets(targets, cache.mask.shape[0])
        if rows is not None and (rows.dtype != torch.bool or rows.shape != targets.shape):
            fail("rows", f"a bool tensor shaped like targets {tuple(targets.shape)}",
                 f"{rows.dtype} {tuple(rows.shape)}")
        valid = torch.cat([cache.mask, targets.ne(self.config.pad_id)], 1)
        mask = valid[:, None, None, :]
        h = self._embed(targets, self.target_type)
        layers = self.encoder.encoder.layer
        on_rows = rows is not None and len(layers) > 0           # the last layer on `rows` alone
        h = encoder_pass(layers, h, valid, cache.keys, cache.values, cache.fused, len(layers) - on_rows)
        if on_rows:
            return _layer_on_rows(layers[-1], h, rows, (cache.keys[-1], cache.values[-1]), mask)
        return h if rows is None else h[rows]

    def encode_with_target(self, sources: Tensor, targets: Tensor,
                           fused: Optional[FusedLayers] = None) -> tuple[SourceCache, Tensor]:
        """``encode_source`` then ``decode_target``, in one pass over the layers: (the source cache, the target
        hidden states). Each layer's weights are read once for the source and target rows together, where
        the two calls read them twice (at batch 1 on a CPU: 1.3x faster, ``pyprune bench deer``).

        Where the layers fuse, the pass is one ``pyprune_C::bert_layers`` call on their gathered weights:
        `fused` (``fused_layers``; decoding gathers them once a call and hands them to every batch), or
        gathered here; the cache keeps them for the passes over it."""
        self.check_sources(sources)
        self._check_targets(targets, sources.shape[0])
        S = sources.shape[1]
        source_valid = sources.ne(self.config.pad_id)
        valid = torch.cat([source_valid, targets.ne(self.config.pad_id)], 1)
        mask = valid[:, None, None, :]
        h = torch.cat([self._embed(sources, 0), self._embed(targets, self.target_type)], 1)
        if fused is None and targets.shape[1]:
            fused = fused_layers(self.encoder.encoder.layer, h)
        if fused is not None and targets.shape[1]:
            h, keys, values = run_fused(fused, h, valid, source_rows=S, last_queries=S, keep_keys=S)
            return SourceCache(keys, values, source_valid, fused), h
        keys, values = [], []
        layers = self.encoder.encoder.layer
        for i, layer in enumerate(layers):
            if i + 1 < len(layers):
                h, k, v = _layer_kv(layer, h, h, None, mask, source_rows=S)
            else:                              # the last layer's source states feed nothing
                h, k, v = _layer_kv(layer, h, h[:, S:], None, mask)
            keys.append(k[:, :, :S])
            values.append(v[:, :, :S])
        return SourceCache(keys, values, source_valid), h

    def joint_attention_mask(self, sources: Tensor, targets: Tensor) -> Tensor:
        """(batch, S+T, S+T) bool: source rows see the source, target rows see everything; no padding keys."""
        S, T = sources.shape[1], targets.shape[1]
        valid = torch.cat([sources.ne(self.config.pad_id), targets.ne(self.config.pad_id)], 1)
        rows = torch.arange(S + T, device=sources.device)[:, None] < S
        cols = torch.arange(S + T, device=sources.device)[None, :] < S
        allowed = ~rows | cols                     # a source row sees only source columns
        return allowed[None] & valid[:, None, :]

    def joint_forward(self, sources: Tensor, targets: Tensor) -> Tensor:
        """One pass over [source; target] with ``joint_attention_mask``; returns the target rows' states."""
        self.check_sources(sources)
        mask = self.joint_attention_mask(sources, targets)[:, None]
        h = torch.cat([self._embed(sources, 0), self._embed(targets, self.target_type)], 1)
        for layer in self.encoder.encoder.layer:
            k, v = _kv(layer, h)
            h = _layer(layer, h, k, v, mask)
        return h[:, sources.shape[1]:]

    # ------------------------------------------------------------ heads
    def output_matrix(self) -> Tensor:
        """(classes, hidden): the blank row, then the tied word embeddings of the output vocabulary.

        Without autograd (decoding) the gathered matrix is kept until the embeddings or the blank change
        (in-place updates, loading, moving); with autograd it is gathered afresh: pass one gather to every
        ``vocab_logits`` call of a step so its backward scatters into the embedding gradient once.
        """
        words = self.encoder.embeddings.word_embeddings.weight

        def gather() -> Tensor:
            return torch.cat([self.blank, words[self.out_to_token[1:]]], 0)
        return unless_recorded(self, "_output_cache", (words, self.blank, self.out_to_token), gather)

    def vocab_logits(self, h: Tensor, matrix: Optional[Tensor] = None) -> Tensor:
        """(batch, T, classes) logits over blank + output vocabulary (`matrix`: an ``output_matrix()``)."""
        if matrix is None and self.output_layer is not None:
            return self.output_layer(self.transform(h))
        return F.linear(self.transform(h), self.output_matrix() if matrix is None else matrix, self.output_bias)

    def insertion_logits(self, h: Tensor) -> Tensor:
        """Vocabulary logits with the blank excluded (-inf)."""
        logits = self.vocab_logits(h)
        return torch.cat([torch.full_like(logits[..., :1], float("-inf")), logits[..., 1:]], -1)

    def placeholder_logits(self, h: Tensor) -> Tensor:
        """(batch, T-1, max_placeholders): how many tokens to insert between tokens t and t+1."""
        return self.placeholder_head(torch.cat([h[:, :-1], h[:, 1:]], -1))

    def deletion_logits(self, h: Tensor) -> Tensor:
        """(batch, T, 2): keep (0) or delete (1)."""
        return self.delete_head(h)

    # ------------------------------------------------------------ token spaces
    def to_output(self, tokens: Tensor) -> Tensor:
        """Token ids -> output classes (tokens outside the output vocabulary become unk)."""
        return self.token_to_out[tokens]

    def to_tokens(self, classes: Tensor) -> Tensor:
        """Output classes -> token ids (the blank becomes padding)."""
        return self.out_to_token[classes]

    def restricted_vocab(self) -> Sequence[int]:
        return self.out_to_token[1:].tolist()
