"""Choose the editor's deletion and insertion penalties on validation sentences.

After a short training the editor's deletions and insertions are not equally
reliable at every keep ratio: at one it deletes too eagerly, at another its
edits help as they are. ``calibrate_edits`` decodes held-out sentences with
one edit iteration for every (deletion, insertion) penalty pair of a small
grid and keeps, per keep ratio, the pair with the highest BLEU (the first in
grid order on a tie; the grids start at 0, no penalty). The CTC draft and the
states of the deletion pass depend on neither penalty, so they are computed
once per batch and shared by the whole grid.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from .._validation import fail, finite_number
from .generate import _trim, ctc_draft, edit_once, sorted_batches, words_of

DELETION_GRID = (0.0, 1.0, 2.0)
INSERTION_GRID = (0.0, 1.0)


def _grid(name: str, values) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        fail(name, "a non-empty sequence of penalties", values)
    return tuple(finite_number(name, v) for v in values)


@torch.no_grad()
def calibrate_edits(deer, pairs: Sequence[tuple[str, str]], keeps: Optional[Sequence[float]] = None,
                    deletion_grid: Sequence[float] = DELETION_GRID, insertion_grid: Sequence[float] = INSERTION_GRID,
                    batch_size: int = 32, progress: bool = True) -> dict[float, dict[tuple[float, float], float]]:
    """Set ``deer.edit_penalty[keep]`` to the grid's best (deletion, insertion) pair on `pairs` for every keep
    ratio in `keeps` (default: all); returns {keep: {(deletion, insertion): BLEU}}.

    Args:
        deer: a trained ``Deer``; its drafts use the trained blank penalty of each keep.
        pairs: (source, reference) validation sentences (never the test split).
        deletion_grid, insertion_grid: the penalties tried (``generate_ids``' `deletion_penalty` and
            `insertion_penalty`); every pair of the two is decoded.
    """
    from .evaluate import bleu
    if len(pairs) == 0:
        fail("pairs", "at least one (source, reference) pair", "none")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        fail("batch_size", "a positive integer", batch_size)
    grid = list(itertools.product(_grid("deletion_grid", deletion_grid), _grid("insertion_grid", insertion_grid)))
    keeps = [deer._keep(k) for k in (deer.keep_ratios if keeps is None else keeps)]
    sources = deer.encode([s for s, _ in pairs])
    references = [r for _, r in pairs]
    c = deer.model.config
    scores: dict = {}
    bar = tqdm(total=len(keeps) * len(sources), desc="calibrating edits", unit="sentence", disable=not progress)
    for keep in keeps:
        model = deer.sub_network(keep, packed=True)          # as generate decodes
        outputs = {point: [None] * len(sources) for point in grid}
        for index, batch in sorted_batches(sources, batch_size, c.pad_id, model.output_bias.device):
            cache, draft = ctc_draft(model, batch, deer.penalty(keep))
            draft = _trim(draft, c.pad_id)
            h = model.decode_target(cache, draft)
            for point in grid:
                edited = edit_once(model, cache, draft, h, *point)
                for row, i in enumerate(index):
                    outputs[point][i] = words_of(edited[row], c)
            bar.update(len(index))
        scores[keep] = {point: bleu(deer.decode(outputs[point]), references) for point in grid}
        deer.edit_penalty[keep] = max(grid, key=lambda point: scores[keep][point])   # first of equals
    bar.close()
    return scores
