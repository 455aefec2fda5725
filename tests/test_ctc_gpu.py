"""CUDA kernels against the CPU kernels; determinism; no host synchronisation.
Skipped without a CUDA device (scripts/gpu_check.sh runs them on one)."""
import pytest
import torch

import pyprune
from pyprune.ops import ctc_best_alignment, ctc_greedy_decode, ctc_greedy_draft, ctc_loss, ctc_loss_from_logits

from ctc_cases import random_case

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _require_cuda_backend():
    if not pyprune.backends.available("cuda"):
        pytest.fail("a CUDA device is present but the CUDA kernels are not built")


def _both(fn, *tensors):
    cpu = fn(*tensors)
    gpu = fn(*[t.cuda() if isinstance(t, torch.Tensor) else t for t in tensors])
    return cpu, gpu


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("concatenated", [False, True])
def test_losses_and_gradients_match_cpu(dtype, concatenated):
    case = random_case(70, 9, 40, 20, dtype=dtype, min_input=0)
    targets = case.concatenated() if concatenated else case.targets
    logits = torch.randn(70, 9, 40, dtype=dtype) * 2
    tolerance = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for fn in (lambda x, *r: ctc_loss(x.log_softmax(-1), *r, reduction="none", zero_infinity=True),
               lambda x, *r: ctc_loss_from_logits(x, *r, reduction="none", label_smoothing=0.1,
                                                  zero_infinity=True)):
        results = []
        for device in ("cpu", "cuda"):
            x = logits.to(device).requires_grad_()
            loss = fn(x, targets.to(device), case.input_lengths.to(device),
                      case.target_lengths.to(device))
            (grad,) = torch.autograd.grad(loss.sum(), x)
            results.append((loss.cpu(), grad.cpu()))
        torch.testing.assert_close(results[1][0], results[0][0], **tolerance)
        torch.testing.assert_close(results[1][1], results[0][1], **tolerance)


def test_decode_and_alignment_match_cpu():
    case = random_case(50, 7, 30, 12, min_input=0)
    cpu, gpu = _both(lambda *a: ctc_best_alignment(*a), case.log_probs, case.targets,
                     case.input_lengths, case.target_lengths)
    assert torch.equal(gpu[0].cpu(), cpu[0])
    torch.testing.assert_close(gpu[1].cpu(), cpu[1])
    cpu, gpu = _both(lambda *a: ctc_greedy_decode(*a), case.log_probs, case.input_lengths)
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
    # The draft (on the GPU: the reference's torch ops) gives the CPU kernel's rows, penalty included.
    cpu, gpu = _both(lambda x, n, m: ctc_greedy_draft(x, n, m, bos=1, eos=2, pad=0, blank_penalty=0.7),
                     case.log_probs, case.input_lengths, torch.arange(30) + 5)
    assert torch.equal(gpu.cpu(), cpu)


def test_gradients_bit_identical_across_runs():
    case = random_case(200, 64, 1000, 80, dtype=torch.float32)
    logits = torch.randn(200, 64, 1000, device="cuda")
    grads = []
    for _ in range(3):
        x = logits.clone().requires_grad_()
        ctc_loss_from_logits(x, case.targets.cuda(), case.input_lengths.cuda(),
                             case.target_lengths.cuda(), label_smoothing=0.1).backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_no_host_synchronisation_with_device_lengths():
    case = random_case(60, 16, 500, 30, dtype=torch.float32)
    logits = torch.randn(60, 16, 500, device="cuda", requires_grad=True)
    args = (case.targets.cuda(), case.input_lengths.cuda(), case.target_lengths.cuda())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = ctc_loss_from_logits(logits, *args, label_smoothing=0.1)
        loss.backward()
        ctc_greedy_decode(logits.detach(), args[1])
        ctc_best_alignment(logits.detach(), *args)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_long_targets_without_cudnn_limit():
    case = random_case(700, 2, 20, 600, dtype=torch.float64, min_input=700)
    case.target_lengths[:] = torch.tensor([600, 300])
    cpu, gpu = _both(lambda lp, *r: ctc_loss(lp, *r, reduction="none"), case.log_probs,
                     case.targets, case.input_lengths, case.target_lengths)
    torch.testing.assert_close(gpu.cpu(), cpu)
