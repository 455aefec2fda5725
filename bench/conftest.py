"""pytest-benchmark setup: not part of the default test run (pytest's
testpaths is tests/). Run with: pytest bench --benchmark-only"""
import pytest
import torch

from pyprune.benchmarks.common import environment


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", help="cpu or cuda")
    parser.addoption("--bench-threads", type=int, default=2, help="CPU threads")


@pytest.fixture(scope="session")
def device(request):
    name = request.config.getoption("--bench-device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.set_num_threads(request.config.getoption("--bench-threads"))
    return name


@pytest.fixture
def record(benchmark, device):
    benchmark.extra_info.update(environment(device))
    return benchmark
