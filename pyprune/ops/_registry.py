"""Defining pyprune ops: one schema, a reference for every device, and the
compiled kernels owning their device when their backend is enabled."""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Callable, Optional

import torch

from pyprune import backends

# Backend that owns each device type.
DEVICE_BACKENDS = {"cpu": "cpp", "cuda": "cuda"}


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


class _Kernels:
    """Kernel lookup for one device: ``k.name`` is torch.ops.pyprune_C.name when
    the device's backend is enabled and that kernel is compiled for the device,
    else the reference module's function of the same name and signature."""

    def __init__(self, device_type: str, reference: ModuleType) -> None:
        backend = DEVICE_BACKENDS.get(device_type)
        self._compiled = backend is not None and backends.enabled(backend)
        self._key = _DISPATCH_KEYS.get(device_type)
        self._reference = reference

    def __getattr__(self, name: str):
        if self._compiled and backends.has_kernel(name, self._key):
            return getattr(torch.ops.pyprune_C, name)
        return getattr(self._reference, name)


def kernels(device_type: str, reference: ModuleType) -> _Kernels:
    """The kernels to use on a device (compiled where available, else reference)."""
    return _Kernels(device_type, reference)


def define(name: str, schema: str, body: Callable, reference: ModuleType,
           kernel_accepts: Optional[Callable[..., bool]] = None) -> str:
    """Define pyprune::name with ``schema``; body(kernels, *args) implements it.

    The reference composition is registered for every device; each device with
    a compiled backend gets its own registration that routes to the kernels at
    call time, so backends.disabled() takes effect without re-registering.
    `kernel_accepts(*args)`: whether the kernels take these arguments (dtypes,
    say); where it says no, the reference runs on any device.
    """
    qualname = f"pyprune::{name}"
    torch.library.define(qualname, schema)
    torch.library.impl(qualname, "default")(lambda *args: body(reference, *args))

    def routed(*args, _device: str):
        if kernel_accepts is not None and not kernel_accepts(*args):
            return body(reference, *args)
        return body(kernels(_device, reference), *args)

    for device_type in DEVICE_BACKENDS:
        torch.library.impl(qualname, device_type)(functools.partial(routed, _device=device_type))
    return qualname
