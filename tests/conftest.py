import contextlib
import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter (set before
# anything imports triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from hypothesis import settings

import pyprune

# Property tests draw the same examples on every run: a failure in CI is
# reproducible, never a coin toss.
settings.register_profile("pyprune", derandomize=True, deadline=None)
settings.load_profile("pyprune")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(params=["cpp", "reference"])
def backend(request):
    """Run the test once on the C++ kernels and once on the references."""
    if request.param == "cpp":
        if not pyprune.backends.available("cpp"):
            if os.environ.get("PYPRUNE_REQUIRE_EXT") == "1":
                pytest.fail("PYPRUNE_REQUIRE_EXT=1 but the C++ extension is not loaded: "
                            f"{pyprune.backends.extension_error()}")
            pytest.skip("C++ extension not built")
        context = contextlib.nullcontext()
    else:
        context = pyprune.backends.disabled("cpp", "cuda")
    with context:
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
