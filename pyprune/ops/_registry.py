"""Defining pyprune ops: one schema, a reference for every device, and the
compiled kernels owning their device when their backend is enabled."""
from __future__ import annotations

from types import ModuleType
from typing import Callable

import torch

from pyprune import backends

# Backend that owns each device type.
DEVICE_BACKENDS = {"cpu": "cpp", "cuda": "cuda"}


def kernels(device_type: str, reference: ModuleType):
    """The kernel namespace for a device: torch.ops.pyprune_C when its backend is
    enabled, else the reference module (same function names and signatures)."""
    backend = DEVICE_BACKENDS.get(device_type)
    if backend is not None and backends.enabled(backend):
        return torch.ops.pyprune_C
    return reference


def define(name: str, schema: str, body: Callable, reference: ModuleType) -> str:
    """Define pyprune::name with ``schema``; body(kernels, *args) implements it.

    The reference composition is registered for every device; each device with
    a compiled backend gets its own registration that routes to the kernels at
    call time, so backends.disabled() takes effect without re-registering.
    """
    qualname = f"pyprune::{name}"
    torch.library.define(qualname, schema)
    torch.library.impl(qualname, "default")(lambda *args: body(reference, *args))
    for device_type in DEVICE_BACKENDS:
        torch.library.impl(qualname, device_type)(
            lambda *args, _device=device_type: body(kernels(_device, reference), *args)
        )
    return qualname
