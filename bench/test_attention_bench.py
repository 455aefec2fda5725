"""Decoding attention (CPU), torch's attention against the kernel:
    pytest bench/test_attention_bench.py --benchmark-only
"""
import pytest
import torch
import torch.nn.functional as F

from pyprune.ops import attention_reference


@pytest.mark.parametrize("provider", ["torch_sdpa", "kernel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(1, 16), (17, 38), (63, 63)], ids=["ar_step", "deer_edit", "deer_ctc"])
def test_masked_attention(record, device, provider, dtype, shape):
    if device != "cpu":
        pytest.skip("the decoding attention kernel runs on the CPU")
    Q, K = shape
    B, H, D, prefix = 1, 12, 32, K // 3 if Q == K else 0
    q, k, v = (torch.randn(B, L, H * D).to(dtype).view(B, L, H, D).transpose(1, 2) for L in (Q, K, K))
    valid = torch.ones(B, K, dtype=torch.bool)
    seen = attention_reference.visible_keys(Q, K, valid, prefix, q.device)[:, None]
    fns = {"torch_sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=seen).transpose(1, 2)
           .reshape(B, Q, H * D),
           "kernel": lambda: torch.ops.pyprune_C.masked_attention(q, k, v, valid, prefix, D ** -0.5)}
    record.extra_info.update(provider=provider, dtype=str(dtype), queries=Q, keys=K)
    with torch.no_grad():
        record.pedantic(fns[provider], warmup_rounds=5, rounds=50, iterations=10)
