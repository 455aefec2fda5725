"""Bad input gives a ValueError naming the argument, never a crash."""
import pytest
import torch

import pyprune
from pyprune.ops import ctc_best_alignment, ctc_greedy_decode, ctc_greedy_draft, ctc_loss, ctc_loss_from_logits

T, N, C, S = 10, 3, 6, 4


def _good():
    return dict(log_probs=torch.randn(T, N, C).log_softmax(-1),
                targets=torch.randint(1, C, (N, S)),
                input_lengths=torch.full((N,), T), target_lengths=torch.full((N,), S))


def _call(fn, **changes):
    args = _good()
    args.update(changes)
    if fn is ctc_loss_from_logits:
        args["logits"] = args.pop("log_probs")
    return fn(**args)


LOSSES = [ctc_loss, ctc_loss_from_logits, ctc_best_alignment]

BAD = [
    ("input_lengths", dict(input_lengths=torch.tensor([T, -1, T]))),
    ("input_lengths", dict(input_lengths=torch.tensor([T, T + 1, T]))),
    ("target_lengths", dict(target_lengths=torch.tensor([S, -2, S]))),
    ("target_lengths", dict(target_lengths=torch.tensor([S, S + 1, S]))),
    ("targets", dict(targets=torch.tensor([[1, 2, 3, C]] * N))),
    ("targets", dict(targets=torch.tensor([[1, 2, -3, 4]] * N))),
    ("targets", dict(targets=torch.tensor([[1, 0, 3, 4]] * N))),          # blank inside
    ("targets", dict(targets=torch.randint(1, C, (N + 1, S)))),            # batch mismatch
    ("targets", dict(targets=torch.randint(1, C, (N, S, 1)))),             # wrong rank
    ("targets", dict(targets=torch.rand(N, S))),                          # float labels
    ("input_lengths", dict(input_lengths=torch.full((N + 1,), T))),        # batch mismatch
    ("target_lengths", dict(target_lengths=[S, S])),
    ("input_lengths", dict(input_lengths=torch.full((N,), float(T)))),
    ("blank", dict(blank=C)),
    ("blank", dict(blank=-1)),
    ("log_probs|logits", dict(log_probs=torch.randint(0, 3, (T, N, C)))),  # integer scores
    ("log_probs|logits", dict(log_probs=torch.randn(T, N, C, 2))),         # wrong rank
]


@pytest.mark.parametrize("fn", LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name,changes", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_input_names_the_argument(backend, fn, name, changes):
    with pytest.raises(ValueError, match=rf"^({name}):"):
        _call(fn, **changes)


def test_concatenated_targets_too_short(backend):
    with pytest.raises(ValueError, match="^target_lengths:"):
        ctc_loss(torch.randn(T, N, C).log_softmax(-1), torch.randint(1, C, (5,)), [T] * N, [2, 2, 2])


def test_unbatched_needs_one_dimensional_targets(backend):
    with pytest.raises(ValueError, match="^targets:"):
        ctc_loss(torch.randn(T, C).log_softmax(-1), torch.randint(1, C, (1, S)), T, S)


def test_bad_reduction_and_smoothing(backend):
    with pytest.raises(ValueError, match="^reduction:"):
        _call(ctc_loss, reduction="avg")
    with pytest.raises(ValueError, match="^label_smoothing:"):
        _call(ctc_loss_from_logits, label_smoothing=1.5)


def test_greedy_decode_bad_input(backend):
    scores = torch.randn(T, N, C)
    with pytest.raises(ValueError, match="^input_lengths:"):
        ctc_greedy_decode(scores, [T, T, T + 1])
    with pytest.raises(ValueError, match="^input_lengths:"):
        ctc_greedy_decode(scores, [T, T])
    with pytest.raises(ValueError, match="^blank:"):
        ctc_greedy_decode(scores, [T] * N, blank=C)
    with pytest.raises(ValueError, match="^scores:"):
        ctc_greedy_decode(scores[0], [T] * N)


def test_greedy_draft_bad_input(backend):
    scores, lengths, class_map = torch.randn(T, N, C), [T] * N, torch.arange(C)
    frame = dict(bos=1, eos=2, pad=0)
    with pytest.raises(ValueError, match="^input_lengths:"):
        ctc_greedy_draft(scores, [T, T, T + 1], class_map, **frame)
    with pytest.raises(ValueError, match="^class_map:"):
        ctc_greedy_draft(scores, lengths, torch.arange(C - 1), **frame)
    with pytest.raises(ValueError, match="^class_map:"):
        ctc_greedy_draft(scores, lengths, torch.arange(C, dtype=torch.int32), **frame)
    with pytest.raises(ValueError, match="^class_map:"):
        ctc_greedy_draft(scores, lengths, class_map.to("meta"), **frame)
    with pytest.raises(ValueError, match="^blank_penalty:"):
        ctc_greedy_draft(scores, lengths, class_map, blank_penalty=float("nan"), **frame)
    with pytest.raises(ValueError, match="^max_length:"):
        ctc_greedy_draft(scores, lengths, class_map, max_length=1, **frame)
    with pytest.raises(ValueError, match="^eos:"):
        ctc_greedy_draft(scores, lengths, class_map, bos=1, eos=2.0, pad=0)
    with pytest.raises(ValueError, match="^blank:"):
        ctc_greedy_draft(scores, lengths, class_map, blank=C, **frame)


def test_greedy_draft_kernel_checks_its_arguments():
    """The compiled op, called directly, refuses what would make it read out of bounds."""
    if not pyprune.backends.available("cpp"):
        pytest.skip("C++ extension not built")
    op = torch.ops.pyprune_C.ctc_greedy_draft
    scores, class_map = torch.randn(T, N, C), torch.arange(C)
    with pytest.raises(RuntimeError, match="input_lengths must be in"):
        op(scores, torch.tensor([T, T + 1, 0]), class_map, 0, 0.0, 1, 2, 0, T + 2)
    with pytest.raises(RuntimeError, match="input_lengths must be in"):
        op(scores, torch.tensor([T, -1, 0]), class_map, 0, 0.0, 1, 2, 0, T + 2)
    with pytest.raises(RuntimeError, match="class_map must have"):
        op(scores, torch.full((N,), T), class_map[:-1], 0, 0.0, 1, 2, 0, T + 2)
    with pytest.raises(RuntimeError, match="blank must be in"):
        op(scores, torch.full((N,), T), class_map, C, 0.0, 1, 2, 0, T + 2)
    with pytest.raises(RuntimeError, match="max_length must be at least 2"):
        op(scores, torch.full((N,), T), class_map, 0, 0.0, 1, 2, 0, 1)


def test_devices_must_match():
    meta_targets = torch.randint(1, C, (N, S), device="meta")
    with pytest.raises(ValueError, match="^targets:.*on cpu"):
        _call(ctc_loss, targets=meta_targets)
    with pytest.raises(ValueError, match="^input_lengths:"):
        _call(ctc_loss, input_lengths=torch.full((N,), T, device="meta"))


def test_raw_kernels_never_read_out_of_bounds():
    """Called directly with values that skip the Python checks (as device-resident
    lengths would), the kernels flag the sample with NaN instead of reading past
    the buffers."""
    if not pyprune.backends.available("cpp"):
        pytest.skip("C++ extension not built")
    lp = torch.randn(T, 2, C).log_softmax(-1)
    targets = torch.tensor([1, 2, 3, 4, 1, 2, 3, 99])        # label 99 >= C in sample 1
    offsets = torch.tensor([0, 4])
    nll, alpha = torch.ops.pyprune_C.ctc_forward(lp, None, targets, offsets,
                                                 torch.tensor([T, T]), torch.tensor([4, 4]), 4, 0,
                                                 False)
    assert torch.isfinite(nll[0]) and torch.isnan(nll[1])
    nll, _ = torch.ops.pyprune_C.ctc_forward(lp, None, targets, offsets,
                                             torch.tensor([T + 5, -1]), torch.tensor([4, 9]), 4, 0,
                                             False)
    assert torch.isnan(nll).all()
    grad = torch.ops.pyprune_C.ctc_backward(torch.ones(2), None, lp, None, targets, offsets,
                                            torch.tensor([T, T]), torch.tensor([4, 4]), nll, alpha,
                                            4, 0, False)
    assert torch.isnan(grad[:, 1]).all()
    with pytest.raises(RuntimeError, match="target_offsets"):
        torch.ops.pyprune_C.ctc_forward(lp, None, targets, offsets[:1], torch.tensor([T, T]),
                                        torch.tensor([4, 4]), 4, 0, False)
