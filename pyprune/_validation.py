"""The one shape of pyprune's input errors: a ValueError that names the argument."""
from __future__ import annotations

import math


def fail(name: str, expected: str, got) -> None:
    """Raise ``ValueError("<name>: expected <expected>, got <got>")``."""
    raise ValueError(f"{name}: expected {expected}, got {got}")


def finite_number(name: str, value) -> float:
    """`value` as a float; anything but a finite int or float (bools included) fails naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(name, "a finite number", value)
    return float(value)


def check_attention_inputs(q, k, v) -> tuple[int, int, int, int, int]:
    """(B, H, Lq, Lk, D) of attention inputs q (B, H, Lq, D) and k, v (B, H, Lk, D), floating-point 4-D
    tensors; anything else fails naming the argument."""
    from torch import Tensor
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4 or not t.dtype.is_floating_point:
            fail(name, "a floating-point tensor of shape (B, H, L, D)",
                 tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if k.shape != (B, H, Lk, D) or v.shape != k.shape:
        fail("k/v", f"shape (B={B}, H={H}, Lk, D={D}) for both", f"{tuple(k.shape)} and {tuple(v.shape)}")
    return B, H, Lq, Lk, D
