"""CTC forward+backward: pyprune against PyTorch, shapes x providers x ops.

    pytest bench/test_ctc_bench.py --benchmark-only --benchmark-group-by=param:shape,param:op
    pytest bench --benchmark-only -k C1000      # one shape
"""
import pytest
import torch

from pyprune.benchmarks import ctc
from pyprune.benchmarks.common import synchronize


@pytest.mark.parametrize("provider", ["torch", "pyprune"])
@pytest.mark.parametrize("op", ["ctc_loss", "ctc_loss_from_logits"])
@pytest.mark.parametrize("shape", ctc.CPU_SHAPES + ctc.GPU_SHAPES, ids=lambda s: s.id)
def test_ctc(record, device, shape, op, provider):
    if (shape in ctc.GPU_SHAPES) != device.startswith("cuda"):
        pytest.skip("shape belongs to the other device's grid")
    step = ctc._step(op, provider, ctc.make_inputs(shape, device))

    def timed():
        if device.startswith("cuda") and provider == "torch":
            with torch.backends.cudnn.flags(enabled=False):
                step()
        else:
            step()
        synchronize(device)

    record.extra_info.update(shape=str(shape), op=op, provider=provider)
    record.pedantic(timed, warmup_rounds=1, rounds=5, iterations=1)
