"""ctc_loss_from_logits, greedy decoding, best alignment; op registration,
backend routing and torch.compile."""
import pytest
import torch
import torch.nn.functional as F

import pyprune
from pyprune.ops import ctc_best_alignment, ctc_greedy_decode, ctc_greedy_draft, ctc_loss, ctc_loss_from_logits

from ctc_cases import collapse, greedy_decode_python, random_case, viterbi_python


def _composite(logits, case, reduction, eps, zero_infinity=False, targets=None):
    """The unfused definition: log_softmax, F.ctc_loss, label smoothing."""
    log_probs = logits.log_softmax(-1)
    targets = case.targets if targets is None else targets
    ctc = F.ctc_loss(log_probs, targets, case.input_lengths, case.target_lengths,
                     reduction=reduction, zero_infinity=zero_infinity)
    valid = (torch.arange(logits.shape[0])[:, None] < case.input_lengths[None]).to(logits.dtype)
    per_frame = -log_probs.mean(-1) * valid
    smooth = per_frame.sum(0) / case.input_lengths.clamp(min=1).to(logits.dtype)
    smooth = {"none": smooth, "sum": smooth.sum(), "mean": smooth.mean()}[reduction]
    return (1 - eps) * ctc + eps * smooth


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_from_logits_matches_composite(backend, reduction, eps):
    case = random_case(25, 6, 13, 8)
    case.input_lengths[0] = 0
    case.target_lengths[0] = 0
    logits = torch.randn(25, 6, 13, dtype=torch.float64) * 3
    x = logits.clone().requires_grad_()
    expected = _composite(x, case, reduction, eps)
    seed = torch.rand_like(expected)
    (expected_grad,) = torch.autograd.grad((expected * seed).sum(), x)
    y = logits.clone().requires_grad_()
    got = ctc_loss_from_logits(y, case.targets, case.input_lengths, case.target_lengths,
                               reduction=reduction, label_smoothing=eps)
    (grad,) = torch.autograd.grad((got * seed).sum(), y)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_from_logits_impossible(backend, zero_infinity):
    case = random_case(6, 3, 5, 4)
    case.targets[1] = torch.tensor([2, 2, 2, 2])
    case.target_lengths[1] = 4
    case.input_lengths[1] = 6  # needs 7 frames
    logits = torch.randn(6, 3, 5, dtype=torch.float64)
    x = logits.clone().requires_grad_()
    expected = _composite(x, case, "sum", 0.1, zero_infinity)
    expected.backward()
    y = logits.clone().requires_grad_()
    got = ctc_loss_from_logits(y, case.targets, case.input_lengths, case.target_lengths,
                               reduction="sum", label_smoothing=0.1, zero_infinity=zero_infinity)
    got.backward()
    torch.testing.assert_close(got, expected, equal_nan=True)
    torch.testing.assert_close(y.grad, x.grad, equal_nan=True)


def test_from_logits_batch_first_and_concatenated(backend):
    case = random_case(15, 4, 9, 5)
    logits = torch.randn(4, 15, 9, dtype=torch.float64, requires_grad=True)
    got = ctc_loss_from_logits(logits, case.concatenated(), case.input_lengths.tolist(),
                               case.target_lengths, batch_first=True, label_smoothing=0.2)
    expected = _composite(logits.transpose(0, 1), case, "mean", 0.2)
    torch.testing.assert_close(got, expected)
    (g1,) = torch.autograd.grad(got, logits)
    (g2,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(g1, g2)


def test_from_logits_gradcheck(backend):
    case = random_case(7, 3, 5, 3)
    logits = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)

    def f(x):
        return ctc_loss_from_logits(x, case.targets, case.input_lengths, case.target_lengths,
                                    reduction="none", label_smoothing=0.1)

    assert torch.autograd.gradcheck(f, (logits,))


def test_from_logits_float32_and_bfloat16(backend):
    case = random_case(30, 4, 40, 10)
    logits = torch.randn(30, 4, 40, dtype=torch.float64) * 2
    exact = _composite(logits, case, "none", 0.1)
    got32 = ctc_loss_from_logits(logits.float(), case.targets, case.input_lengths,
                                 case.target_lengths, reduction="none", label_smoothing=0.1)
    torch32 = _composite(logits.float(), case, "none", 0.1)
    assert (got32.double() - exact).abs().max() <= 2 * (torch32.double() - exact).abs().max() + 1e-5
    bf = logits.to(torch.bfloat16).requires_grad_()
    got = ctc_loss_from_logits(bf, case.targets, case.input_lengths, case.target_lengths,
                               reduction="none", label_smoothing=0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _composite(bf.detach().float(), case, "none", 0.1))
    got.sum().backward()
    assert bf.grad.dtype == torch.bfloat16


def test_greedy_decode_matches_python(backend):
    for T, N, C in [(20, 5, 6), (1, 3, 4), (40, 2, 3)]:
        scores = torch.randn(T, N, C)
        scores[:, :, 0] += 0.5  # plenty of blanks
        if T > 3:
            scores[2] = scores[1]  # a repeated frame
        lengths = torch.randint(0, T + 1, (N,))
        tokens, counts = ctc_greedy_decode(scores, lengths, blank=0)
        expected = greedy_decode_python(scores, lengths, 0)
        assert tokens.shape == (N, T) and tokens.dtype == torch.long
        for n in range(N):
            assert counts[n] == len(expected[n])
            assert tokens[n, : counts[n]].tolist() == expected[n]
            assert (tokens[n, counts[n]:] == 0).all()
        tokens_bf, counts_bf = ctc_greedy_decode(scores.transpose(0, 1).contiguous(), lengths,
                                                 blank=0, batch_first=True)
        assert torch.equal(tokens_bf, tokens) and torch.equal(counts_bf, counts)


def test_greedy_decode_nonzero_blank(backend):
    scores = torch.randn(12, 4, 5)
    tokens, counts = ctc_greedy_decode(scores, [12, 5, 0, 7], blank=4)
    expected = greedy_decode_python(scores, [12, 5, 0, 7], 4)
    assert [tokens[n, : counts[n]].tolist() for n in range(4)] == expected


def test_greedy_decode_low_precision_equals_its_float32_values(backend):
    # bfloat16 (read as it is by the CPU kernel) and float16 (decoded as float32) give what their float32
    # copies give, ties included (rounding makes many), in the layout DEER decodes: batch-first logits
    # narrowed from a padded row (stride 37 > 33 classes).
    padded = torch.randn(6, 40, 37)
    padded[..., 0] += 0.7
    for dtype in (torch.bfloat16, torch.float16):
        scores = padded.to(dtype)[..., :33]
        scores[:, 5, 3] = scores[:, 5, 7]                     # exact ties: the first class wins
        lengths = torch.tensor([40, 0, 17, 40, 1, 39])
        tokens, counts = ctc_greedy_decode(scores, lengths, batch_first=True)
        expected = ctc_greedy_decode(scores.float(), lengths, batch_first=True)
        assert torch.equal(tokens, expected[0]) and torch.equal(counts, expected[1])
        assert counts.sum() > 0


def _draft_python(scores, lengths, class_map, blank, penalty, bos, eos, pad, max_length):
    """ctc_greedy_draft spelled out: the penalty subtracted in the scores' dtype, greedy decoding on the
    exact values, labels mapped, cut, framed and padded."""
    penalised = scores.clone()
    penalised[..., blank] -= penalty
    rows = [[bos] + [int(class_map[c]) for c in labels][:max_length - 2] + [eos]
            for labels in greedy_decode_python(penalised.double(), lengths, blank)]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_greedy_draft_frames_the_greedy_decoding(backend, dtype):
    generator = torch.Generator().manual_seed(3)
    for trial in range(40):
        T, N, C = int(torch.randint(1, 14, (1,), generator=generator)), 1 + trial % 4, 2 + trial % 6
        scores = torch.randn(T, N, C, generator=generator) * 2
        blank, penalty = trial % C, (0.0, 0.6, -0.35, 1 / 3, 2.80395)[trial % 5]
        if trial % 3 == 0:
            scores = scores.round()                           # exact ties, the blank's included
        elif trial % 3 == 1 and C > 1:                        # the blank a penalty above the best other class:
            others = torch.cat([scores[..., :blank], scores[..., blank + 1:]], -1)    # the rounding decides
            scores[..., blank] = others.max(-1).values + penalty
        scores = scores.to(dtype)
        lengths = torch.randint(0, T + 1, (N,), generator=generator)
        class_map = torch.randint(5, 900, (C,), generator=generator)
        max_length = (T + 2, 2, 3, 5)[trial % 4]
        kept = scores.clone()
        got = ctc_greedy_draft(scores, lengths, class_map, bos=1, eos=2, pad=0, blank=blank, blank_penalty=penalty,
                               max_length=max_length)
        expected = _draft_python(scores, lengths, class_map, blank, penalty, 1, 2, 0, max_length)
        assert torch.equal(got, expected), trial
        assert torch.equal(scores, kept)                      # the penalty goes into a copy or into the kernel
        batch_first = ctc_greedy_draft(scores.transpose(0, 1), lengths, class_map, bos=1, eos=2, pad=0,
                                       blank=blank, blank_penalty=penalty, max_length=max_length, batch_first=True)
        assert torch.equal(batch_first, expected), trial
    # Without max_length nothing is cut; an empty batch gives [bos] [eos] width.
    scores = torch.zeros(4, 1, 3)
    scores[:, 0, 1:] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert ctc_greedy_draft(scores, [4], torch.tensor([0, 7, 8]), bos=1, eos=2, pad=0).tolist() == [[1, 7, 8, 7, 8, 2]]
    empty = ctc_greedy_draft(torch.zeros(3, 0, 3), torch.zeros(0, dtype=torch.long), torch.arange(3), bos=1, eos=2,
                             pad=0)
    assert empty.shape == (0, 2)


def test_best_alignment_matches_python(backend):
    for T, N, C, S, vocab in [(12, 5, 6, 4, None), (9, 6, 4, 4, 2), (30, 3, 8, 10, 3)]:
        case = random_case(T, N, C, S, vocab=vocab, min_input=0)
        alignment, score = ctc_best_alignment(case.log_probs, case.targets, case.input_lengths,
                                              case.target_lengths)
        for n in range(N):
            length = int(case.input_lengths[n])
            target = case.targets[n, : case.target_lengths[n]].tolist()
            path, best = viterbi_python(case.log_probs[:, n], target, length, 0)
            assert alignment[n, :length].tolist() == path
            assert (alignment[n, length:] == 0).all()
            if best == float("-inf"):
                assert score[n] == float("-inf")
            else:
                assert collapse(path, 0) == target
                torch.testing.assert_close(score[n].item(), best, rtol=1e-12, atol=1e-12)
                on_path = case.log_probs[torch.arange(length), n, alignment[n, :length]].sum()
                torch.testing.assert_close(score[n], on_path)


def test_best_alignment_from_logits_equals_from_log_probs(backend):
    case = random_case(16, 4, 7, 5)
    logits = torch.randn(16, 4, 7, dtype=torch.float64) * 2
    a1, _ = ctc_best_alignment(logits, case.targets, case.input_lengths, case.target_lengths)
    a2, _ = ctc_best_alignment(logits.log_softmax(-1), case.targets, case.input_lengths,
                               case.target_lengths)
    assert torch.equal(a1, a2)


def test_backends_agree_float32():
    """The C++ kernels and the references are interchangeable op by op; in
    float32 the kernels' error against float64 is at most about twice the
    reference's own float32 error."""
    if not pyprune.backends.available("cpp"):
        pytest.skip("C++ extension not built")
    case = random_case(40, 6, 50, 12, dtype=torch.float32)
    logits = torch.randn(40, 6, 50, dtype=torch.float64) * 3

    def run(dtype):
        x = logits.to(dtype).requires_grad_()
        loss = ctc_loss_from_logits(x, case.targets, case.input_lengths, case.target_lengths,
                                    reduction="none", label_smoothing=0.1)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        align = ctc_best_alignment(x.detach(), case.targets, case.input_lengths, case.target_lengths)
        decode = ctc_greedy_decode(x.detach(), case.input_lengths)
        return loss.double(), grad.double(), align, decode

    fast = run(torch.float32)
    with pyprune.backends.disabled("cpp"):
        slow = run(torch.float32)
        exact = run(torch.float64)
    for i in (0, 1):
        fast_error = (fast[i] - exact[i]).abs().max()
        slow_error = (slow[i] - exact[i]).abs().max()
        assert fast_error <= 2 * slow_error + 1e-6, (i, fast_error, slow_error)
    assert torch.equal(fast[2][0], slow[2][0])
    assert torch.equal(fast[3][0], slow[3][0]) and torch.equal(fast[3][1], slow[3][1])


def _kernel_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


def test_routing_uses_cpp_kernel_unless_disabled():
    if not pyprune.backends.available("cpp"):
        pytest.skip("C++ extension not built")
    case = random_case(10, 2, 5, 3)

    def call():
        ctc_loss(case.log_probs, case.targets, case.input_lengths, case.target_lengths)

    assert "pyprune_C::ctc_forward" in _kernel_names(call)
    with pyprune.backends.disabled("cpp"):
        assert "pyprune_C::ctc_forward" not in _kernel_names(call)
    assert pyprune.backends.enabled("cpp")


def _op_samples():
    case = random_case(9, 3, 6, 4, min_input=8)  # feasible: NaN gradients compare unequal
    flat = case.targets.reshape(-1)
    offsets = torch.arange(3) * 4
    lp = case.log_probs.clone().requires_grad_()
    logits = torch.randn(9, 3, 6, dtype=torch.float64, requires_grad=True)
    batch = (flat, offsets, case.input_lengths, case.target_lengths, 4, 0)
    nll, alpha = torch.ops.pyprune.ctc_loss_forward(lp.detach(), *batch, False)
    return {
        "ctc_loss_forward": (lp, *batch, False),
        "ctc_loss_backward": (torch.rand(3, dtype=torch.float64), lp.detach(), *batch[:4], nll,
                              alpha, 4, 0, False),
        "ctc_logits_forward": (logits, *batch, True),
        "ctc_best_alignment": (lp.detach(), *batch),
        "ctc_greedy_decode": (logits.detach(), case.input_lengths, 0),
        "ctc_greedy_draft": (logits.detach(), case.input_lengths, torch.arange(6) + 10, 0, 0.5, 1, 2, 0, 11),
    }


@pytest.mark.parametrize("name", ["ctc_loss_forward", "ctc_loss_backward", "ctc_logits_forward",
                                  "ctc_best_alignment", "ctc_greedy_decode", "ctc_greedy_draft"])
def test_opcheck(backend, name):
    op = getattr(torch.ops.pyprune, name).default
    # ctc_loss_forward's gradient follows torch's convention (exp(lp) - occupancy),
    # which is not the derivative of its output, so it skips the numeric check.
    torch.library.opcheck(op, _op_samples()[name])


def test_torch_compile_fullgraph(backend):
    case = random_case(12, 3, 7, 4, dtype=torch.float32)
    logits = torch.randn(12, 3, 7)

    def step(x):
        loss = ctc_loss_from_logits(x, case.targets, case.input_lengths, case.target_lengths,
                                    label_smoothing=0.1)
        tokens, lengths = ctc_greedy_decode(x, case.input_lengths)
        return loss, tokens, lengths

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x1 = logits.clone().requires_grad_()
    x2 = logits.clone().requires_grad_()
    eager, compiled_out = step(x1), compiled(x2)
    torch.testing.assert_close(compiled_out[0], eager[0])
    assert torch.equal(compiled_out[1], eager[1])
    compiled_out[0].backward()
    eager[0].backward()
    torch.testing.assert_close(x2.grad, x1.grad)
