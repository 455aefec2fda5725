"""DEER decoding: one CTC pass, then Levenshtein edit iterations (delete, insert placeholders, fill).

The source and the CTC slots go through the encoder in one pass, which
keeps the source's keys and values (``DeerModel.encode_with_target``); the
three passes of each edit iteration run only the target rows against them.
With ``adaptive=True`` a row leaves the batch once an iteration leaves it
unchanged. ``blank_penalty`` lengthens (positive) or shortens the draft; a
trained ``Deer`` keeps, per keep ratio, the one that matched the references'
length during training (``Deer.blank_penalty``). ``deletion_penalty`` and
``insertion_penalty`` make the editor more reluctant (positive) or more eager
to delete and to insert: they are subtracted from the "delete" logit and from
every "insert k > 0" logit; a trained ``Deer`` keeps the pair that scored
best on validation sentences (``pyprune.deer.calibrate``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .._validation import fail, finite_number
from ..ops import apply_del_words, apply_ins_masks, apply_ins_words
from .losses import ctc_draft_tokens
from .model import DeerModel, FusedLayers


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


def sorted_batches(sources: Sequence[Sequence[int]], batch_size: int, pad_id: int, device):
    """(row indices, padded batch) over `sources` in batches of similar length (shortest first)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        yield index, pad_rows([sources[i] for i in index], pad_id).to(device)


def _trim(tokens: Tensor, pad_id: int) -> Tensor:
    width = int(tokens.ne(pad_id).sum(1).max()) if tokens.numel() else 0
    return tokens[:, :width]


def words_of(row: Tensor, config) -> list[int]:
    """One decoded row's token ids without padding, [bos] and [eos]."""
    return [t for t in row.tolist() if t not in (config.pad_id, config.bos_id, config.eos_id)]


def _same(a: Tensor, b: Tensor, pad_id: int) -> Tensor:
    width = max(a.shape[1], b.shape[1])
    a = torch.nn.functional.pad(a, (0, width - a.shape[1]), value=pad_id)
    b = torch.nn.functional.pad(b, (0, width - b.shape[1]), value=pad_id)
    return (a == b).all(1)


@torch.no_grad()
def ctc_draft(model: DeerModel, sources: Tensor, blank_penalty: float = 0.0, fused: Optional[FusedLayers] = None):
    """(the source cache, [bos] greedy CTC output [eos] per row, padded): the source and the CTC slots go
    through the encoder together (``DeerModel.encode_with_target``, on the layers' gathered weights `fused`
    where given); `blank_penalty` is subtracted from the blank's logit before the greedy choice
    (``ctc_draft_tokens``)."""
    lengths = sources.ne(model.config.pad_id).sum(1)
    n = model.num_slots(lengths)
    cache, h = model.encode_with_target(sources, model.ctc_slots(sources, lengths), fused)
    return cache, ctc_draft_tokens(model, model.vocab_logits(h), n, blank_penalty)


@torch.no_grad()
def delete_words(model: DeerModel, tokens: Tensor, h: Tensor, penalty: float = 0.0) -> Tensor:
    """The deletion classifier's edits to `tokens` (whose target states are `h`), trimmed; a token is
    deleted where its "delete" logit minus `penalty` beats its "keep" logit."""
    c = model.config
    logits = model.deletion_logits(h)
    deleted, _, _ = apply_del_words(tokens, None, None, (logits[..., 1] - penalty > logits[..., 0]).long(),
                                    c.pad_id, c.bos_id, c.eos_id)
    return _trim(deleted, c.pad_id)


@torch.no_grad()
def insert_words(model: DeerModel, cache, tokens: Tensor, h: Optional[Tensor] = None, penalty: float = 0.0) -> Tensor:
    """Insert placeholders where the placeholder classifier says, then fill them (`h`: the states of
    `tokens`, when already computed; `penalty`: subtracted from the logit of every count above 0)."""
    return _insert(model, cache, tokens, h, penalty)[0]


def _insert(model: DeerModel, cache, tokens: Tensor, h: Optional[Tensor], penalty: float,
            known: Optional[Tensor] = None):
    """``insert_words``, and the states of its result where they are known: (tokens, states, known), `known`
    a (batch,) bool of the rows whose states in `states` are their result's (the rows that got no
    placeholder, whose tokens are unchanged). `h`, `known` in: the states of `tokens` where known, as
    ``_complete`` takes them."""
    c = model.config
    h = _complete(model, cache, tokens, h, known)
    logits = model.placeholder_logits(h)
    if penalty:
        logits = torch.cat([logits[..., :1] + penalty, logits[..., 1:]], -1)
    counts = logits.argmax(-1)
    width = min(model.max_positions, tokens.shape[1] + int(counts.sum(1).max()))
    inserted, _ = apply_ins_masks(tokens, None, counts, c.pad_id, c.mask_id, c.eos_id, max_length=width)
    inserted = _trim(inserted, c.pad_id)
    holes = inserted.eq(c.mask_id)
    rows = holes.any(1)
    return _fill(model, cache, inserted, holes, rows), h, ~rows


def _rows_of(model: DeerModel, cache, tokens: Tensor, rows: Tensor):
    """(the source cache, `tokens`) of the rows where `rows` (a (batch,) bool), the tokens trimmed:
    ``decode_target``'s first two arguments for a pass on those rows alone."""
    index = rows.nonzero().squeeze(1)
    return cache.select(index), _trim(tokens[index], model.config.pad_id)


def _complete(model: DeerModel, cache, tokens: Tensor, h: Optional[Tensor], known: Optional[Tensor]) -> Tensor:
    """The states of `tokens` (batch, T, hidden), every row: where `known` (a (batch,) bool; None: every row
    where `h` is given) they are `h`'s, states an earlier pass computed for those very tokens (rows of `h`
    may be wider or narrower than `tokens`: what lies past a row's tokens is padding, which no edit reads);
    the other rows get one pass over the encoder, on those rows alone. A batch's rows are independent, so
    those rows' states are the ones a pass over the whole batch would give them."""
    if h is None or (known is not None and not bool(known.any())):
        return model.decode_target(cache, tokens)
    T = tokens.shape[1]
    if known is None or bool(known.all()):                  # every row's tokens fit in `h`
        return h[:, :T]
    fresh = model.decode_target(*_rows_of(model, cache, tokens, ~known))
    out = h.new_zeros(tokens.shape[0], T, h.shape[2])
    width = min(T, h.shape[1])
    out[:, :width] = h[:, :width]
    out[~known] = torch.nn.functional.pad(fresh, (0, 0, 0, T - fresh.shape[1]))
    return out


@torch.no_grad()
def fill_words(model: DeerModel, cache, tokens: Tensor) -> Tensor:
    """Replace each placeholder ([mask]) in `tokens` by the insertion classifier's word (one pass over the
    encoder, on the rows that have a placeholder)."""
    holes = tokens.eq(model.config.mask_id)
    return _fill(model, cache, tokens, holes, holes.any(1))


def _fill(model: DeerModel, cache, tokens: Tensor, holes: Tensor, rows: Tensor) -> Tensor:
    """``fill_words`` given `tokens`' placeholders `holes` and the rows that have one, `rows`."""
    if not bool(rows.any()):
        return tokens
    some, some_cache, some_holes = tokens, cache, holes
    if not bool(rows.all()):                                 # the other rows' words feed nothing
        some_cache, some = _rows_of(model, cache, tokens, rows)
        some_holes = some.eq(model.config.mask_id)
    h = model.decode_target(some_cache, some, rows=some_holes)   # states and logits only where a word goes
    words = torch.zeros_like(tokens)
    words[holes] = model.to_tokens(model.vocab_logits(h)[:, 1:].argmax(-1) + 1)    # h[holes]'s order
    filled, _ = apply_ins_words(tokens, None, words, None, model.config.mask_id)
    return filled


@torch.no_grad()
def edit_once(model: DeerModel, cache, tokens: Tensor, h: Optional[Tensor] = None, deletion_penalty: float = 0.0,
              insertion_penalty: float = 0.0) -> Tensor:
    """One edit iteration: delete, insert placeholders, fill them (three passes; fewer when nothing is deleted
    or inserted, each on the rows it changes; `h`: the states of `tokens`, when already computed)."""
    return _edit(model, cache, tokens, h, None, deletion_penalty, insertion_penalty)[0]


def _edit(model: DeerModel, cache, tokens: Tensor, h: Optional[Tensor], known: Optional[Tensor],
          deletion_penalty: float, insertion_penalty: float):
    """``edit_once``, and the states of its result where a pass already computed them: (tokens, states,
    known) as ``_insert`` gives them. A row the deletions left alone keeps its states for the placeholder
    pass, and a row that gets no placeholder keeps them for the next iteration: each pass runs on the rows
    whose tokens changed since their states were computed (`h`, `known` in: as ``_complete`` takes them)."""
    h = _complete(model, cache, tokens, h, known)
    deleted = delete_words(model, tokens, h, deletion_penalty)
    return _insert(model, cache, deleted, h, insertion_penalty, _same(deleted, tokens, model.config.pad_id))


@torch.no_grad()
def generate_ids(model: DeerModel, sources: Sequence[Sequence[int]], max_iter: int = 2, adaptive: bool = True,
                 batch_size: int = 32, blank_penalty: float = 0.0, deletion_penalty: float = 0.0,
                 insertion_penalty: float = 0.0) -> list[list[int]]:
    """Token ids in, token ids out (without [bos]/[eos]); `sources` rows are framed [bos] x [eos]."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        fail("max_iter", "a number of edit iterations >= 0", max_iter)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        fail("batch_size", "a positive integer", batch_size)
    for name, value in (("blank_penalty", blank_penalty), ("deletion_penalty", deletion_penalty),
                        ("insertion_penalty", insertion_penalty)):
        finite_number(name, value)
    if len(sources) == 0:
        return []
    c = model.config
    model.eval()
    device = model.output_bias.device
    results: list = [None] * len(sources)
    fused = None                                          # the layers' weights, gathered by the first batch's pass
    for index, batch in sorted_batches(sources, batch_size, c.pad_id, device):
        cache, tokens = ctc_draft(model, batch, blank_penalty, fused)
        fused = cache.fused
        active = torch.arange(len(index), device=device)
        states = known = None                             # of the active rows' tokens, where a pass left them
        active_cache = cache                              # the source cache of the active rows (rows only leave)
        for _ in range(max_iter):
            current = _trim(tokens[active], c.pad_id)
            if active_cache.mask.shape[0] != len(active):
                active_cache = cache.select(active)
            edited, states, known = _edit(model, active_cache, current, states, known, deletion_penalty,
                                          insertion_penalty)
            changed = ~_same(edited, current, c.pad_id)
            if edited.shape[1] > tokens.shape[1]:
                tokens = torch.nn.functional.pad(tokens, (0, edited.shape[1] - tokens.shape[1]), value=c.pad_id)
            tokens[active] = torch.nn.functional.pad(edited, (0, tokens.shape[1] - edited.shape[1]), value=c.pad_id)
            if adaptive:
                active = active[changed]
                if states is not None:
                    states, known = states[changed], known[changed]
                if len(active) == 0:
                    break
        for row, i in enumerate(index):
            results[i] = words_of(tokens[row], c)
    return results
