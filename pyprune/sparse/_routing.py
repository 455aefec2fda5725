"""Where the block-sparse ops run: Triton kernels or the dense reference."""
from __future__ import annotations

import os
from typing import Callable

import torch

from pyprune import backends

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_usable(device: torch.device) -> bool:
    """Triton enabled, and on CUDA or (for testing) CPU under TRITON_INTERPRET=1."""
    if not backends.enabled("triton"):
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def triton_or_reference(triton_impl: Callable, reference: Callable,
                        supports: Callable[[torch.Tensor], bool] = lambda first: True) -> Callable:
    """A device's implementation: the Triton kernels when usable there (checked
    per call, so backends.disabled("triton") takes effect), the dtype is one
    they take (float64 runs on the reference) and `supports(first argument)`
    holds; else the reference."""
    def impl(*args):
        first = args[0]
        if first.dtype in KERNEL_DTYPES and triton_usable(first.device) and supports(first):
            return triton_impl(*args)
        return reference(*args)
    return impl
