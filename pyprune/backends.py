"""Which compiled backends are loaded, and switches to turn them off.

Every pyprune op has a pure-PyTorch reference that runs on any device. The
compiled backends own their device when they are present and enabled:

==========  ==========================================  ======================
backend     what                                        device
==========  ==========================================  ======================
``cpp``     C++ kernels in the ``pyprune._C`` extension  CPU
``cuda``    CUDA kernels in the same extension           CUDA
``triton``  Triton kernels (``pyprune.triton_kernels``)  CUDA (CPU when
                                                         ``TRITON_INTERPRET=1``)
==========  ==========================================  ======================

Disable a backend for the whole process with the environment variable
``PYPRUNE_DISABLE_BACKENDS=cpp,cuda`` (read at import), or for a block of code::

    with pyprune.backends.disabled("cpp"):
        loss = pyprune.ops.ctc_loss(...)   # runs the reference

A disabled or missing backend falls back to the reference. The raw kernels
stay callable by name: ``torch.ops.pyprune_C.<op>`` for cpp/cuda, and
``pyprune.ops.ctc_reference`` for the references.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from typing import Iterator, Optional

import torch

BACKENDS = ("cpp", "cuda", "triton")

_state = threading.local()
_env_disabled = frozenset(
    name.strip() for name in os.environ.get("PYPRUNE_DISABLE_BACKENDS", "").split(",") if name.strip()
)
_extension_error: str | None = None


def _load_extension() -> bool:
    """Import pyprune._C once; on failure warn once and keep the references."""
    global _extension_error
    try:
        from pyprune import _C  # noqa: F401  (registers torch.ops.pyprune_C)
    except ImportError as error:  # missing, or built against another torch
        _extension_error = str(error)
        warnings.warn(
            "pyprune: the compiled extension pyprune._C could not be loaded "
            f"({error}); every op runs on its pure-PyTorch reference. "
            "Rebuild with `pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


_extension_loaded = _load_extension()


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the extension registered pyprune_C::op for a dispatch key
    ("CPU", "CUDA"). Fixed once the extension is loaded, so cached."""
    return _extension_loaded and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"pyprune_C::{op}", dispatch_key
    )


def cpu_isa() -> Optional[str]:
    """The instruction-set variant the C++ CPU kernels run on this machine ("base", "avx2", "avx512" or
    "avx512bf16", which adds bfloat16 dot products; ``PYPRUNE_CPU_ISA`` caps it), None without the extension."""
    return torch.ops.pyprune_C.cpu_isa() if available("cpp") else None


@functools.lru_cache(maxsize=None)
def _cuda_device_present() -> bool:
    return torch.cuda.is_available()


def available(name: str) -> bool:
    """Whether backend ``name`` is built and loadable in this process."""
    if name == "cpp":
        return has_kernel("ctc_forward", "CPU")
    if name == "cuda":
        return has_kernel("ctc_forward", "CUDA") and _cuda_device_present()
    if name == "triton":
        return _triton_importable()
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def _runtime_disabled() -> set[str]:
    if not hasattr(_state, "disabled"):
        _state.disabled = set()
    return _state.disabled


def enabled(name: str) -> bool:
    """Whether ops route to backend ``name``: available and not switched off."""
    return name not in _env_disabled and name not in _runtime_disabled() and available(name)


@contextlib.contextmanager
def disabled(*names: str) -> Iterator[None]:
    """Run the enclosed code with the named backends off (this thread only)."""
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    current = _runtime_disabled()
    added = set(names) - current
    current.update(added)
    try:
        yield
    finally:
        current.difference_update(added)


def extension_error() -> str | None:
    """Why pyprune._C failed to load, or None when it loaded."""
    return _extension_error


def summary() -> dict[str, bool]:
    """Backend name -> enabled, for logs and benchmark records."""
    return {name: enabled(name) for name in BACKENDS}
