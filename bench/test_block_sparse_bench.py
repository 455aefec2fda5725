"""Block-sparse linear, forward + backward:
    pytest bench/test_block_sparse_bench.py --benchmark-only [--bench-device cuda]
"""
import pytest
import torch
import torch.nn.functional as F

from pyprune.benchmarks import block_sparse
from pyprune.sparse import block_sparse_linear, expand_mask


@pytest.mark.parametrize("provider", ["dense", "masked_dense", "auto"])
@pytest.mark.parametrize("structured", [False, True], ids=["random", "rows"])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1])
def test_block_sparse_linear(record, device, provider, structured, density):
    M, K, N = (4096, 4096, 4096) if device.startswith("cuda") else (1024, 1024, 1024)
    x = torch.randn(M, K, device=device)
    w = torch.randn(N, K, device=device)
    mask = block_sparse.make_mask(N, K, density, structured, device)
    fns = {"dense": lambda a, b: F.linear(a, b),
           "masked_dense": lambda a, b: F.linear(a, b * expand_mask(mask).to(b.dtype)),
           "auto": lambda a, b: block_sparse_linear(a, b, None, mask)}
    step = block_sparse._step(fns[provider], x, w)
    record.extra_info.update(provider=provider, density=density, mask="rows" if structured else "random")
    record.pedantic(lambda: (step(), torch.cuda.synchronize() if device.startswith("cuda") else None),
                    warmup_rounds=1, rounds=7, iterations=1)
