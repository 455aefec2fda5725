"""Import behaviour: a missing extension warns once and falls back; backend
switches; the Triton package lives inside pyprune."""
import os

import pytest

import pyprune
from helpers import ROOT, run_python


def test_import_without_extension_warns_once_and_uses_references():
    result = run_python("""
        import importlib.abc, sys, warnings
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "pyprune._C":
                    raise ImportError("simulated: extension missing")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import pyprune
            import pyprune.ops
        messages = [str(w.message) for w in caught if "pyprune._C" in str(w.message)]
        assert len(messages) == 1, messages
        assert not pyprune.backends.available("cpp")
        import torch, torch.nn.functional as F
        lp = torch.randn(12, 3, 5, dtype=torch.float64).log_softmax(-1)
        targets = torch.randint(1, 5, (3, 4))
        args = (lp, targets, [12, 10, 9], [4, 3, 2])
        torch.testing.assert_close(pyprune.ops.ctc_loss(*args), F.ctc_loss(*args))
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_environment_switch_disables_a_backend():
    result = run_python("""
        import pyprune
        print(pyprune.backends.available("cpp"), pyprune.backends.enabled("cpp"))
    """, PYPRUNE_DISABLE_BACKENDS="cpp,triton")
    assert result.returncode == 0, result.stderr
    available, enabled = result.stdout.split()
    assert enabled == "False"


def test_disabled_context_restores_state():
    before = pyprune.backends.summary()
    with pyprune.backends.disabled("cpp", "cuda"):
        assert not pyprune.backends.enabled("cpp")
    assert pyprune.backends.summary() == before


def test_triton_kernels_ship_inside_the_package():
    import pyprune.triton_kernels

    assert pyprune.triton_kernels.__name__ == "pyprune.triton_kernels"
    assert not os.path.exists(os.path.join(ROOT, "triton_kernels"))


def test_cli_info_runs():
    result = run_python("from pyprune.cli import main; raise SystemExit(main(['info']))")
    assert result.returncode == 0 and "cpp" in result.stdout


@pytest.mark.parametrize("cap", ["base", "avx2"])
def test_info_names_the_cpu_kernel_variant_and_the_cap_applies(cap):
    import pyprune
    if not pyprune.backends.available("cpp"):
        pytest.skip("C++ extension not built")
    found = pyprune.backends.cpu_isa()
    assert found in ("base", "avx2", "avx512", "avx512bf16")
    if cap == "avx2" and found == "base":
        pytest.skip("this CPU (or build) has no AVX2 variant")
    # Capped at or below what the CPU has, the cap is what runs.
    result = run_python("from pyprune.cli import main; raise SystemExit(main(['info']))", PYPRUNE_CPU_ISA=cap)
    assert result.returncode == 0 and f"(CPU kernels: {cap})" in result.stdout, result.stdout + result.stderr
