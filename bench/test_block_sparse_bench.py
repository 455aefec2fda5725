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


@pytest.mark.parametrize("provider", ["dense", "packed_blocks"])
@pytest.mark.parametrize("density", [1.0, 0.5])
@pytest.mark.parametrize("M", [1, 14])
def test_block_sparse_inference(record, device, provider, density, M):
    """Decoding-sized forward without autograd (CPU only: the packed kernel is a CPU kernel)."""
    if device != "cpu":
        pytest.skip("the packed-blocks kernel runs on the CPU")
    from pyprune.sparse.packed import pack_blocks, packed_block_linear
    K, N = 384, 1536
    x, w, b = torch.randn(M, K), torch.randn(N, K), torch.randn(N)
    mask = block_sparse.make_mask(N, K, density, False, device)
    w = w * expand_mask(mask)
    packed = pack_blocks(w, mask)
    fns = {"dense": lambda: F.linear(x, w, b), "packed_blocks": lambda: packed_block_linear(x, packed, b)}
    record.extra_info.update(provider=provider, density=density, tokens=M)
    with torch.no_grad():
        record.pedantic(fns[provider], warmup_rounds=5, rounds=200, iterations=1)
