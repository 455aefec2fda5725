"""What several test files share (not a test module: pytest collects test_*.py only; the tests folder is on
sys.path under pytest's default import mode)."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISA_VARIANTS = ["base", "avx2", "avx512", "avx512bf16"]    # PYPRUNE_CPU_ISA levels (csrc/common/isa_dispatch.h)


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    """`code` (dedented) in a fresh interpreter from the repository root, with `env` added to the environment."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **env}, cwd=ROOT, timeout=300)


def assert_prints_ok(code: str, **env) -> None:
    """`code` run by ``run_python`` exits 0 having printed exactly "ok"."""
    done = run_python(code, **env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def assert_bfloat16_close(y, exact):
    """`y` (bfloat16) is `exact` rounded once: half an ulp (at most 2^-8 relative), plus float32 summation order."""
    assert bool(((y.double() - exact).abs() <= exact.abs() * 2.0 ** -8 + 1e-4).all())


def none_switch(monkeypatch, owner, name: str):
    """A switch over ``owner.name`` (a function that gathers a fused op's weights): switch(True) makes it
    return None, so the code under test takes its unfused path (the reference); switch(False) restores it."""
    original = getattr(owner, name)

    def switch(on: bool) -> None:
        monkeypatch.setattr(owner, name, (lambda *a: None) if on else original)
    return switch
