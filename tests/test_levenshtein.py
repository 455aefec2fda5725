"""Levenshtein labels and edits: kernels against the straightforward
reference, libnat's tie-break on tie-heavy inputs, properties, bad input."""
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyprune
from pyprune.ops import (apply_del_words, apply_ins_masks, apply_ins_words, edit_distance,
                         get_del_targets, get_edit_targets, get_ins_targets, suggested_ed2_path)
from pyprune.ops import levenshtein_reference as ref

PAD, UNK, BOS, EOS = 1, 3, 0, 2
FIRST_WORD = 4


def _batch(rows, width=None):
    width = width or max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for b, row in enumerate(rows):
        out[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _sentence(rng, length, vocab):
    return [BOS] + [FIRST_WORD + rng.randrange(vocab) for _ in range(length)] + [EOS]


def _noisy(rng, reference, vocab, p_delete=0.3, p_insert=0.2):
    """A draft: tokens of the reference deleted, others inserted (bos/eos kept)."""
    body = [t for t in reference[1:-1] if rng.random() > p_delete]
    for _ in range(int(p_insert * len(body)) + rng.randrange(2)):
        body.insert(rng.randrange(len(body) + 1), FIRST_WORD + rng.randrange(vocab))
    return [BOS] + body + [EOS]


def _pairs(rng, batch, max_len, vocab, delete_only=False):
    outs = [_sentence(rng, rng.randrange(0, max_len + 1), vocab) for _ in range(batch)]
    ins = [_noisy(rng, o, vocab, p_insert=0.0 if delete_only else 0.2) for o in outs]
    return _batch(ins, max(len(r) for r in ins) + rng.randrange(3)), _batch(outs)


def _assert_targets_match_reference(x, y):
    got = get_edit_targets(x, y, PAD, UNK)
    expected = ref.lev_edit_targets(x, y, PAD, UNK)
    for g, e, name in zip(got, expected, ["masks", "tokens", "ins", "del"]):
        assert torch.equal(g, e), name


@pytest.mark.parametrize("vocab", [3, 4, 6, 30000])
def test_labels_match_reference(backend, vocab):
    rng = random.Random(vocab)
    for _ in range(4):
        _assert_targets_match_reference(*_pairs(rng, 16, 40, vocab))


def test_labels_tie_heavy_runs(backend):
    """Runs of equal tokens: many optimal paths; only libnat's tie-break passes."""
    rows_in = [[BOS] + [5] * 7 + [EOS], [BOS, 5, 6, 5, 6, 5, EOS], [BOS, 5, 5, 6, 6, 5, 5, EOS],
               [BOS, 6, 5, 5, 5, 6, EOS], [BOS, EOS]]
    rows_out = [[BOS] + [5] * 4 + [EOS], [BOS, 6, 5, 6, 5, 6, 5, 6, EOS], [BOS, 6, 5, 5, 6, EOS],
                [BOS, 5, 5, 6, 6, 5, 5, EOS], [BOS, 5, 5, EOS]]
    _assert_targets_match_reference(_batch(rows_in), _batch(rows_out))


def test_tie_break_is_libnat_rule():
    """Checked by hand: x = a b, y = b a. Both 'keep b' and 'keep a' paths cost 2;
    libnat's rule (insert first while walking back) keeps b: x[0]=a deleted,
    a inserted after b."""
    assert suggested_ed2_path([[5, 6]], [[6, 5]], PAD) == [[[PAD], [PAD], [5], [1, 0]]]


def test_long_rows(backend):
    rng = random.Random(7)
    out = [_sentence(rng, 510, 5), _sentence(rng, 300, 50)]
    x = _batch([_noisy(rng, out[0], 5), _noisy(rng, out[1], 50)], 512)
    _assert_targets_match_reference(x, _batch(out, 512))


def test_edge_rows(backend):
    rows_in = [[BOS, EOS], [BOS, EOS], [BOS, 5, 5, 5, EOS], [BOS, 7, EOS]]
    rows_out = [[BOS, EOS], [BOS, 5, 6, EOS], [BOS, 5, 5, 5, EOS], [BOS, EOS]]
    _assert_targets_match_reference(_batch(rows_in, 6), _batch(rows_out, 7))
    _assert_targets_match_reference(_batch([[BOS, 5, EOS]]), _batch([[BOS, 6, 5, EOS]]))


def test_padding_anywhere_is_ignored(backend):
    x = torch.tensor([[BOS, PAD, 5, 6, PAD, EOS]])
    y = torch.tensor([[BOS, 5, PAD, 7, 6, EOS]])
    assert torch.equal(get_del_targets(x, y, PAD), ref.lev_edit_targets(x, y, PAD, UNK)[3])
    assert int(edit_distance(x, y, PAD)) == 1


@pytest.mark.parametrize("sub_cost", [0, 1, 2, 3])
def test_edit_distance(backend, sub_cost):
    rng = random.Random(sub_cost)
    x, y = _pairs(rng, 20, 30, 5)
    expected = ref.lev_edit_distance(x, y, PAD, sub_cost)
    assert torch.equal(edit_distance(x, y, PAD, sub_cost), expected)


def test_edit_distance_against_rapidfuzz():
    distance = pytest.importorskip("rapidfuzz.distance")
    rng = random.Random(3)
    x, y = _pairs(rng, 30, 60, 8)
    xs = [[t for t in row if t != PAD] for row in x.tolist()]
    ys = [[t for t in row if t != PAD] for row in y.tolist()]
    assert edit_distance(x, y, PAD).tolist() == [distance.Indel.distance(a, b) for a, b in zip(xs, ys)]
    assert edit_distance(x, y, PAD, 1).tolist() == [distance.Levenshtein.distance(a, b) for a, b in zip(xs, ys)]


def _rebuild(x, slots_and_flags):
    """Apply a suggested_ed2_path result to x."""
    *slots, flags = slots_and_flags
    out = []
    for k, slot in enumerate(slots):
        out += [t for t in slot if t != PAD]
        if k < len(x) and not flags[k]:
            out.append(x[k])
    return out


token_lists = st.lists(st.integers(FIRST_WORD, FIRST_WORD + 4), max_size=40)


@settings(max_examples=150, deadline=None)
@given(token_lists, token_lists)
def test_path_property_reproduces_reference_at_optimal_cost(body_x, body_y):
    x, y = [BOS] + body_x + [EOS], [BOS] + body_y + [EOS]
    (path,) = suggested_ed2_path([x], [y], PAD)
    assert _rebuild(x, path) == y
    inserted = sum(len([t for t in slot if t != PAD]) for slot in path[:-1])
    cost = inserted + sum(path[-1])
    assert cost == int(edit_distance(_batch([x]), _batch([y]), PAD))
    assert path == _reference_ed2_path(x, y)


def _reference_ed2_path(x, y):
    slots, deleted = ref.edit_path(x, y)
    return [slot if slot else [PAD] for slot in slots] + [deleted]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(FIRST_WORD, FIRST_WORD + 3), min_size=0, max_size=30), st.randoms())
def test_insertion_labels_rebuild_the_reference(body, rnd):
    """Training-time use: the draft is the reference with random deletions;
    inserting mask_ins_targets placeholders and filling them from
    masked_tgt_tokens' reference gives back out_tokens."""
    y = [BOS] + body + [EOS]
    x = [BOS] + [t for t in body if rnd.random() < 0.5] + [EOS]
    x_tensor, y_tensor = _batch([x], len(y)), _batch([y], len(y) + 1)
    masks, masked_tokens, ins = get_ins_targets(x_tensor, y_tensor, PAD, UNK)
    placeholders, _ = apply_ins_masks(x_tensor, None, ins, PAD, UNK, EOS, max_length=y_tensor.shape[1])
    assert torch.equal(placeholders, masked_tokens)
    filled, _ = apply_ins_words(placeholders, None, y_tensor, None, UNK)
    assert torch.equal(filled, y_tensor)
    assert torch.equal(get_del_targets(x_tensor, y_tensor, PAD), torch.zeros_like(y_tensor))


def test_suggested_ed2_path_empty_x_like_libnat():
    assert suggested_ed2_path([[], [5]], [[6, 7], []], PAD) == [[[6, 7], []], [[PAD], [PAD], [1]]]


# ---------------------------------------------------------------- apply ops

def _apply_del_python(tokens, scores, pred):
    out_t, out_s = [], []
    for row, srow, prow in zip(tokens.tolist(), scores.tolist(), pred.tolist()):
        kept = [(t, s) for t, s, p in zip(row, srow, prow)
                if t != PAD and (t in (BOS, EOS) or not p)]
        out_t.append([t for t, _ in kept] + [PAD] * (len(row) - len(kept)))
        out_s.append([s for _, s in kept] + [0.0] * (len(row) - len(kept)))
    return torch.tensor(out_t), torch.tensor(out_s)


def test_apply_del_words():
    rng = random.Random(0)
    x, _ = _pairs(rng, 12, 20, 30)
    scores = torch.rand(x.shape)
    attn = torch.rand(*x.shape, 5)
    pred = torch.rand(x.shape) < 0.4
    before = (x.clone(), scores.clone(), pred.clone())
    tokens, out_scores, out_attn = apply_del_words(x, scores, attn, pred, PAD, BOS, EOS)
    expected_tokens, expected_scores = _apply_del_python(x, scores, pred)
    assert torch.equal(tokens, expected_tokens)
    torch.testing.assert_close(out_scores, expected_scores)
    for b in range(x.shape[0]):
        kept = [i for i in range(x.shape[1]) if x[b, i] != PAD and (x[b, i] in (BOS, EOS) or not pred[b, i])]
        torch.testing.assert_close(out_attn[b, : len(kept)], attn[b, kept])
        assert (out_attn[b, len(kept):] == 0).all()
    assert all(torch.equal(a, b) for a, b in zip(before, (x, scores, pred))), "inputs modified"


def _apply_ins_python(tokens, counts):
    out = []
    for row, crow in zip(tokens.tolist(), counts.tolist()):
        real = [t for t in row if t != PAD]
        result = [real[0]]
        for k in range(1, len(real)):
            result += [UNK] * crow[k - 1] + [real[k]]
        out.append(result)
    return out


def test_apply_ins_masks_and_words():
    rng = random.Random(1)
    x, _ = _pairs(rng, 10, 15, 30)
    counts = torch.randint(0, 4, (x.shape[0], x.shape[1] - 1))
    scores = torch.rand(x.shape)
    before = (x.clone(), counts.clone())
    tokens, out_scores = apply_ins_masks(x, scores, counts, PAD, UNK, EOS)
    expected = _apply_ins_python(x, counts)
    assert tokens.shape[1] == max(len(r) for r in expected)
    for b, row in enumerate(expected):
        assert tokens[b, : len(row)].tolist() == row
        assert (tokens[b, len(row):] == PAD).all()
        real_scores = [s for t, s in zip(x[b].tolist(), scores[b].tolist()) if t != PAD]
        got_scores = [s for t, s in zip(row, out_scores[b].tolist()) if t != UNK]
        torch.testing.assert_close(torch.tensor(got_scores), torch.tensor(real_scores))
    assert torch.equal(x, before[0]) and torch.equal(counts, before[1])
    words = torch.randint(FIRST_WORD, 40, tokens.shape)
    filled, filled_scores = apply_ins_words(tokens, out_scores, words, torch.rand(tokens.shape), UNK)
    assert torch.equal(filled, torch.where(tokens == UNK, words, tokens))


def test_apply_ins_masks_max_length_keeps_every_token():
    x = _batch([[BOS, 5, 6, EOS], [BOS, EOS]])
    counts = torch.tensor([[3, 3, 3], [5, 0, 0]])
    tokens, _ = apply_ins_masks(x, None, counts, PAD, UNK, EOS, max_length=7)
    assert tokens.shape == (2, 7)
    assert tokens[0].tolist() == [BOS, UNK, UNK, UNK, 5, 6, EOS]
    assert tokens[1].tolist() == [BOS, UNK, UNK, UNK, UNK, UNK, EOS]


def _edit_batch(rng, rows, max_len):
    """Left-packed [bos] words [eos] rows padded to a random extra width, and random edits: delete flags
    (bos, eos and padding flagged too) and placeholder counts (negative and large ones too)."""
    x = _batch([_sentence(rng, rng.randrange(0, max_len + 1), 30) for _ in range(rows)])
    x = torch.cat([x, torch.full((rows, rng.randrange(3)), PAD)], 1)
    flags = torch.rand(x.shape, generator=torch.Generator().manual_seed(rng.randrange(1 << 30))) < 0.4
    counts = torch.tensor([[rng.choice([-2, 0, 0, 0, 1, 2, 3, 9]) for _ in range(x.shape[1] - 1)]
                           for _ in range(rows)], dtype=torch.long).reshape(rows, x.shape[1] - 1)
    return x, flags.long(), counts


@pytest.mark.parametrize("seed", range(6))
def test_apply_kernels_match_reference(seed):
    """The C++ apply kernels give the reference's tokens and token moves, bit for bit."""
    if not pyprune.backends.available("cpp"):
        pytest.skip("C++ extension not built")
    rng = random.Random(seed)
    for rows, max_len in ((1, 0), (1, 25), (7, 12), (64, 40), (300, 6)):
        x, flags, counts = _edit_batch(rng, rows, max_len)
        got = torch.ops.pyprune_C.lev_apply_del_words(x, flags, PAD, BOS, EOS)
        expected = ref.lev_apply_del_words(x, flags, PAD, BOS, EOS)
        assert all(torch.equal(g, e) for g, e in zip(got, expected)), (seed, rows)
        for max_length in (None, x.shape[1], x.shape[1] + rng.randrange(8)):
            got = torch.ops.pyprune_C.lev_apply_ins_masks(x, counts, PAD, UNK, EOS, max_length)
            expected = ref.lev_apply_ins_masks(x, counts, PAD, UNK, EOS, max_length)
            assert all(torch.equal(g, e) for g, e in zip(got, expected)), (seed, rows, max_length)


def test_apply_kernels_empty_batch():
    if not pyprune.backends.available("cpp"):
        pytest.skip("C++ extension not built")
    x = torch.empty(0, 5, dtype=torch.long)
    tokens, target = torch.ops.pyprune_C.lev_apply_del_words(x, torch.empty(0, 5, dtype=torch.long), PAD, BOS, EOS)
    assert tokens.shape == target.shape == (0, 5)
    tokens, target = torch.ops.pyprune_C.lev_apply_ins_masks(x, torch.empty(0, 4, dtype=torch.long), PAD, UNK, EOS,
                                                              None)
    assert tokens.shape == (0, 5) and target.shape == (0, 5)


_BAD_FRAMING = [
    ([[PAD, PAD, PAD], [BOS, 5, EOS]], r"all-padding row 0"),
    ([[], []], r"all-padding row 0"),
    ([[BOS, 5, EOS], [BOS, PAD, EOS]], r"row 1 with a token after its padding"),
    ([[BOS, 5, EOS, PAD], [PAD, BOS, EOS, PAD]], r"row 1 with a token after its padding"),
    ([[BOS, 5, 6], [BOS, 5, EOS]], r"eos \(2\).*row 0 ends in 6"),
    ([[BOS, EOS, PAD], [7, 5, EOS]], r"bos \(0\).*row 1 starts with 7"),
]


@pytest.mark.parametrize("rows,message", _BAD_FRAMING)
def test_apply_bad_framing(backend, rows, message):
    """Framing errors name in_tokens and the first bad row, the same on the kernel and the reference (the
    insertion op does not check bos)."""
    x = torch.tensor(rows, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"^in_tokens: expected .*{message}"):
        apply_del_words(x, None, None, torch.zeros_like(x), PAD, BOS, EOS)
    counts = torch.zeros(x.shape[0], max(x.shape[1] - 1, 0), dtype=torch.long)
    if "bos" in message:
        assert apply_ins_masks(x, None, counts, PAD, UNK, EOS)[0].shape == x.shape
    else:
        with pytest.raises(ValueError, match=rf"^in_tokens: expected .*{message}"):
            apply_ins_masks(x, None, counts, PAD, UNK, EOS)


def test_apply_routing_uses_cpp_kernels():
    if not pyprune.backends.available("cpp"):
        pytest.skip("C++ extension not built")
    x, flags, counts = _edit_batch(random.Random(3), 4, 10)
    with torch.profiler.profile() as prof:
        apply_del_words(x, None, None, flags, PAD, BOS, EOS)
        apply_ins_masks(x, None, counts, PAD, UNK, EOS)
    names = {e.name for e in prof.events()}
    assert {"pyprune_C::lev_apply_del_words", "pyprune_C::lev_apply_ins_masks"} <= names


# ---------------------------------------------------------------- ops and errors

def test_opcheck(backend):
    x, y = _pairs(random.Random(5), 4, 10, 6)
    torch.library.opcheck(torch.ops.pyprune.lev_edit_targets.default, (x, y, PAD, UNK))
    torch.library.opcheck(torch.ops.pyprune.lev_edit_distance.default, (x, y, PAD, 2))
    torch.library.opcheck(torch.ops.pyprune.lev_edit_path.default, (x, y, PAD))
    flags, counts = (x == 5).long(), (x[:, 1:] % 3).contiguous()
    torch.library.opcheck(torch.ops.pyprune.lev_apply_del_words.default, (x, flags, PAD, BOS, EOS))
    for max_length in (None, x.shape[1] + 2):
        torch.library.opcheck(torch.ops.pyprune.lev_apply_ins_masks.default, (x, counts, PAD, UNK, EOS, max_length))


def test_routing_uses_cpp_kernel():
    if not pyprune.backends.available("cpp"):
        pytest.skip("C++ extension not built")
    x, y = _pairs(random.Random(5), 4, 10, 6)
    with torch.profiler.profile() as prof:
        get_edit_targets(x, y, PAD, UNK)
    assert "pyprune_C::lev_edit_targets" in {e.name for e in prof.events()}


@pytest.mark.parametrize("call,name", [
    (lambda x, y: get_ins_targets(x, y[:1], PAD, UNK), "out_tokens"),
    (lambda x, y: get_del_targets(x.float(), y, PAD), "in_tokens"),
    (lambda x, y: get_ins_targets(x, y - 10, PAD, UNK), "out_tokens"),
    (lambda x, y: get_ins_targets(x[0], y, PAD, UNK), "in_tokens"),
    (lambda x, y: get_ins_targets(x, y, PAD, -1), "unk_idx"),
    (lambda x, y: edit_distance(x, y, PAD, sub_cost=-1), "sub_cost"),
    (lambda x, y: edit_distance(x, y[:, :2].float(), PAD), "y"),
    (lambda x, y: apply_del_words(x, None, None, torch.zeros(1, 2, dtype=torch.bool), PAD, BOS, EOS), "word_del_pred"),
    (lambda x, y: apply_del_words(x[:, 1:], None, None, torch.zeros_like(x[:, 1:]), PAD, BOS, EOS), "in_tokens"),
    (lambda x, y: apply_ins_masks(x, None, torch.zeros(2, 2, dtype=torch.long), PAD, UNK, EOS), "mask_ins_pred"),
    (lambda x, y: apply_ins_masks(x.masked_fill(x == EOS, 9), None, torch.zeros(x.shape[0], x.shape[1] - 1, dtype=torch.long), PAD, UNK, EOS), "in_tokens"),
    (lambda x, y: apply_ins_masks(x, None, torch.zeros(x.shape[0], x.shape[1] - 1, dtype=torch.long), PAD, UNK, EOS, max_length=2), "max_length"),
    (lambda x, y: apply_del_words(x, None, None, torch.zeros(x.shape), PAD, BOS, EOS), "word_del_pred"),
    (lambda x, y: apply_ins_masks(x, None, torch.zeros(x.shape[0], x.shape[1] - 1), PAD, UNK, EOS), "mask_ins_pred"),
    (lambda x, y: apply_ins_masks(x, None, torch.zeros(x.shape[0], x.shape[1] - 1, dtype=torch.long), PAD, UNK, EOS,
                                  max_length=9.0), "max_length"),
    (lambda x, y: apply_ins_words(x, torch.rand(x.shape), x, None, UNK), "word_ins_scores"),
    (lambda x, y: suggested_ed2_path([[1]], [[1], [2]], PAD), "ys"),
])
def test_bad_input(call, name):
    x, y = _pairs(random.Random(9), 3, 6, 5)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call(x, y)
