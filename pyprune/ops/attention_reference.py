"""Reference of the decoding attention kernel (``pyprune_C::masked_attention``): the dense softmax in
float32 (float64 stays float64) with the visibility mask spelled out; any device, any floating dtype,
differentiable."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def visible_keys(queries: int, keys: int, key_valid: Optional[Tensor], prefix: int, device) -> Tensor:
    """(batch or 1, queries, keys) bool: query i sees key j when key_valid[b, j] and, for i < prefix, j < prefix."""
    rows = torch.arange(queries, device=device)[:, None]
    cols = torch.arange(keys, device=device)[None, :]
    allowed = (rows >= prefix) | (cols < prefix)
    return allowed[None] if key_valid is None else allowed[None] & key_valid[:, None, :]


def masked_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor], prefix: int,
                     scale: float) -> Tensor:
    B, H, Q, D = q.shape
    work = torch.promote_types(q.dtype, torch.float32)          # float32 at least, as the kernel
    scores = torch.matmul(q.to(work), k.to(work).transpose(-1, -2)) * scale
    seen = visible_keys(Q, k.shape[2], key_valid, prefix, q.device)[:, None]
    scores = scores.masked_fill(~seen, float("-inf"))
    # A row that sees no key: softmax of all -inf is NaN; the kernel gives zeros.
    probs = torch.softmax(scores, -1).masked_fill(~seen.any(-1, keepdim=True), 0.0)
    out = torch.matmul(probs, v.to(work))
    return out.transpose(1, 2).reshape(B, Q, H * D).to(q.dtype)
