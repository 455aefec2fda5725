"""Decoding attention: softmax(q k^T * scale) v with a key-padding mask and a prefix rule, heads merged.

``masked_attention(q, k, v, key_valid, prefix)`` is what one attention layer needs while decoding: query
row i of batch row b sees key j when ``key_valid[b, j]`` and, for ``i < prefix``, ``j < prefix`` too
(DEER's source rows, which must not see the target); a row that sees nothing gets zeros. It returns
(batch, queries, heads * head_dim), the layout the output projection reads, so the caller skips the
transpose and copy that ``F.scaled_dot_product_attention`` needs after it.

On the CPU in float32 and bfloat16 it runs the C++ kernel ``pyprune_C::masked_attention`` (csrc/attention):
at decoding's shapes (a few query rows per head, tens of keys) torch's attention spends more on set-up
than on arithmetic (``pyprune bench attention``). The kernel has no backward: with autograd, the
differentiable reference (``attention_reference``) runs. Softmax and sums are float32 in both.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from pyprune import backends
from pyprune._validation import check_attention_inputs, fail, finite_number

from . import attention_reference
from ._registry import define

KERNEL_DTYPES = (torch.float32, torch.bfloat16)


define("masked_attention",
       "(Tensor q, Tensor k, Tensor v, Tensor? key_valid, int prefix, float scale) -> Tensor",
       lambda k, *args: k.masked_attention(*args), attention_reference,
       kernel_accepts=lambda q, *rest: q.dtype in KERNEL_DTYPES)


@torch.library.register_fake("pyprune::masked_attention")
def _(q, k, v, key_valid, prefix, scale):
    B, H, Q, D = q.shape
    return q.new_empty(B, Q, H * D)


def kernel_usable(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether decoding code may call ``pyprune_C::masked_attention`` directly on `q`, `k`, `v`: CPU
    float32/bfloat16 tensors none of which needs a gradient, with the ``cpp`` backend built and enabled."""
    return (q.device.type == "cpu" and q.dtype in KERNEL_DTYPES
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
            and backends.enabled("cpp") and backends.has_kernel("masked_attention", "CPU"))


def masked_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor] = None, prefix: int = 0,
                     scale: Optional[float] = None) -> Tensor:
    """Attention for decoding, heads merged.

    Args:
        q: (B, H, Q, D); k, v: (B, H, K, D), the same floating dtype and device. Any strides (a linear
            layer's output viewed as heads is read in place).
        key_valid: None (every key) or bool (B, K): the keys that exist (padding excluded).
        prefix: query rows ``i < prefix`` see only keys ``j < prefix``; 0 <= prefix <= K.
        scale: default 1/sqrt(D).
    Returns:
        (B, Q, H * D) in q's dtype; rows that see no key are zero.
    """
    B, H, Q, K, D = check_attention_inputs(q, k, v)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype or t.device != q.device:
            fail(name, f"a {q.dtype} tensor on {q.device} like q", f"{t.dtype} on {t.device}")
    if key_valid is not None and (not isinstance(key_valid, Tensor) or key_valid.dtype != torch.bool
                                  or tuple(key_valid.shape) != (B, K) or key_valid.device != q.device):
        fail("key_valid", f"None or a bool ({B}, {K}) tensor on {q.device}",
             f"{key_valid.dtype} {tuple(key_valid.shape)} on {key_valid.device}"
             if isinstance(key_valid, Tensor) else type(key_valid).__name__)
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix <= K:
        fail("prefix", f"an integer in [0, {K}] (the keys)", prefix)
    scale = finite_number("scale", 1.0 / math.sqrt(D) if scale is None else scale)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return attention_reference.masked_attention(q, k, v, key_valid, prefix, scale)
    return torch.ops.pyprune.masked_attention(q, k, v, key_valid, prefix, scale)
