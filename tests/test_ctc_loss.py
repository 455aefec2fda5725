"""ctc_loss against torch.nn.functional.ctc_loss: values and gradients."""
import pytest
import torch
import torch.nn.functional as F

import pyprune
from pyprune.ops import ctc_loss

from ctc_cases import min_frames, random_case


def _compare(case, backend, *, reduction="mean", zero_infinity=False, blank=0, concatenated=False,
             target_dtype=torch.int64, lengths_as_list=False, rtol=1e-9, atol=1e-10):
    targets = case.concatenated() if concatenated else case.targets
    targets = targets.to(target_dtype)
    in_len, tgt_len = case.input_lengths, case.target_lengths
    if lengths_as_list:
        in_len, tgt_len = in_len.tolist(), tgt_len.tolist()
    x = case.log_probs.clone().requires_grad_()
    expected = F.ctc_loss(x, targets, in_len, tgt_len, blank=blank, reduction=reduction,
                          zero_infinity=zero_infinity)
    seed = torch.rand_like(expected)
    (expected_grad,) = torch.autograd.grad((expected * seed).sum(), x)

    y = case.log_probs.clone().requires_grad_()
    got = ctc_loss(y, targets, in_len, tgt_len, blank=blank, reduction=reduction,
                   zero_infinity=zero_infinity)
    (got_grad,) = torch.autograd.grad((got * seed).sum(), y)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    torch.testing.assert_close(got_grad, expected_grad, rtol=rtol, atol=atol, equal_nan=True)
    return got, got_grad


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("concatenated", [False, True])
def test_matches_torch_random(backend, reduction, concatenated):
    for T, N, C, S in [(20, 4, 6, 5), (33, 7, 11, 9), (5, 1, 3, 2), (64, 3, 50, 20)]:
        case = random_case(T, N, C, S)
        _compare(case, backend, reduction=reduction, concatenated=concatenated)


@pytest.mark.parametrize("target_dtype", [torch.int32, torch.int64])
def test_int32_and_int64_targets_and_list_lengths(backend, target_dtype):
    case = random_case(17, 5, 9, 6)
    _compare(case, backend, target_dtype=target_dtype, lengths_as_list=True)
    _compare(case, backend, target_dtype=target_dtype, concatenated=True, reduction="none")


def test_empty_targets(backend):
    case = random_case(12, 4, 5, 3)
    case.target_lengths[:] = torch.tensor([0, 0, 2, 0])
    case.input_lengths[1] = 0  # empty input and empty target: loss 0
    _compare(case, backend, reduction="none")
    _compare(case, backend, reduction="mean")


def test_repeated_labels_need_blanks_between(backend):
    case = random_case(10, 3, 4, 4)
    case.targets[:] = torch.tensor([[2, 2, 2, 2], [1, 2, 2, 1], [3, 3, 1, 1]])
    case.target_lengths[:] = 4
    case.input_lengths[:] = torch.tensor([7, 10, 6])  # exactly the minimum for rows 0 and 2
    assert [min_frames(row.tolist()) for row in case.targets] == [7, 5, 6]
    loss, _ = _compare(case, backend, reduction="none")
    assert torch.isfinite(loss).all()


def test_input_length_exactly_minimum(backend):
    case = random_case(9, 4, 7, 5, vocab=3)
    for n in range(4):
        target = case.targets[n, : case.target_lengths[n]].tolist()
        case.input_lengths[n] = max(min_frames(target), 0)
    loss, _ = _compare(case, backend, reduction="none")
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_impossible_alignments(backend, zero_infinity, reduction):
    case = random_case(8, 4, 6, 5)
    case.targets[0] = torch.tensor([1, 1, 1, 1, 1])  # needs 9 frames
    case.target_lengths[0] = 5
    case.input_lengths[0] = 8
    case.target_lengths[2] = 5
    case.input_lengths[2] = 3                       # fewer frames than labels
    loss, grad = _compare(case, backend, reduction=reduction, zero_infinity=zero_infinity)
    if zero_infinity:
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert (grad[:, [0, 2]] == 0).all()
    else:
        assert torch.isinf(loss).any()


def test_batch_of_one_and_unbatched(backend):
    case = random_case(15, 1, 8, 6)
    _compare(case, backend)
    x = case.log_probs[:, 0].clone().requires_grad_()
    target = case.targets[0, : case.target_lengths[0]]
    for reduction in ("none", "mean", "sum"):
        got = ctc_loss(x, target, case.input_lengths[0], case.target_lengths[0], reduction=reduction)
        expected = F.ctc_loss(x, target, case.input_lengths[0], case.target_lengths[0],
                              reduction=reduction)
        assert got.shape == expected.shape == ()
        torch.testing.assert_close(got, expected)


def test_nonzero_blank(backend):
    case = random_case(14, 5, 7, 4, blank=6)
    _compare(case, backend, blank=6, reduction="none")
    case = random_case(14, 5, 7, 4, blank=3)
    _compare(case, backend, blank=3, reduction="sum", concatenated=True)


def test_long_targets_beyond_cudnn_limit(backend):
    case = random_case(300, 2, 12, 280, min_input=300)
    case.target_lengths[:] = torch.tensor([280, 140])
    _compare(case, backend, reduction="none", rtol=1e-7, atol=1e-9)


def test_float32_close_to_float64(backend):
    case = random_case(40, 6, 30, 12)
    exact_loss = F.ctc_loss(case.log_probs, case.targets, case.input_lengths, case.target_lengths,
                            reduction="none")
    x = case.log_probs.float().requires_grad_()
    got = ctc_loss(x, case.targets, case.input_lengths, case.target_lengths, reduction="none")
    (grad,) = torch.autograd.grad(got.sum(), x)
    y = case.log_probs.clone().requires_grad_()
    (exact_grad,) = torch.autograd.grad(
        F.ctc_loss(y, case.targets, case.input_lengths, case.target_lengths, reduction="sum"), y)
    torch_f32 = F.ctc_loss(case.log_probs.float(), case.targets, case.input_lengths,
                           case.target_lengths, reduction="none")
    # flash-attention's rule: at most twice torch's own float32 error (plus an ulp).
    ours = (got.double() - exact_loss).abs().max()
    theirs = (torch_f32.double() - exact_loss).abs().max()
    assert ours <= 2 * theirs + 1e-5 * exact_loss.abs().max()
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(backend, dtype):
    case = random_case(20, 3, 10, 6)
    x = case.log_probs.to(dtype).requires_grad_()
    got = ctc_loss(x, case.targets, case.input_lengths, case.target_lengths)
    assert got.dtype == torch.float32
    expected = F.ctc_loss(x.detach().float(), case.targets, case.input_lengths,
                          case.target_lengths)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_gradient_zero_past_input_length(backend):
    case = random_case(16, 4, 6, 4)
    case.input_lengths[:] = torch.tensor([16, 9, 3, 12])
    x = case.log_probs.clone().requires_grad_()
    ctc_loss(x, case.targets, case.input_lengths, case.target_lengths, zero_infinity=True).backward()
    for n, length in enumerate(case.input_lengths.tolist()):
        assert (x.grad[length:, n] == 0).all()
        assert (x.grad[:length, n] != 0).any()


def test_batch_first_view_layouts(backend):
    """A (T, N, C) view of batch-first storage needs no copy and gives the same result."""
    case = random_case(18, 5, 9, 6)
    storage = case.log_probs.transpose(0, 1).contiguous().requires_grad_()
    view = storage.transpose(0, 1)
    got = ctc_loss(view, case.targets, case.input_lengths, case.target_lengths, reduction="sum")
    got.backward()
    x = case.log_probs.clone().requires_grad_()
    expected = F.ctc_loss(x, case.targets, case.input_lengths, case.target_lengths, reduction="sum")
    expected.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(storage.grad.transpose(0, 1), x.grad)


def test_module_is_drop_in():
    ours, theirs = pyprune.nn.CTCLoss(blank=2, reduction="sum"), torch.nn.CTCLoss(blank=2, reduction="sum")
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    case = random_case(12, 3, 6, 4, blank=2)
    args = (case.log_probs, case.targets, case.input_lengths, case.target_lengths)
    torch.testing.assert_close(ours(*args), theirs(*args))
