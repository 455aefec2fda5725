"""Build pyprune and its C++/CUDA extension, pyprune._C.

Build switches (environment variables, each 0, 1 or auto; default auto):

=====================  ================================================================
PYPRUNE_BUILD_EXT      0: pure Python, every op on its reference. 1: the C++ extension
                       must build (errors fail the install). auto: try; on a compiler
                       error install without it and warn.
PYPRUNE_BUILD_CUDA     0: CPU kernels only. 1: CUDA kernels must build (needs a CUDA
                       torch and nvcc). auto: build them when torch has CUDA and
                       CUDA_HOME is found.
=====================  ================================================================

Install with ``pip install --no-build-isolation -e .``: the extension compiles
against the torch already installed (an isolated build would fetch another).
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def tri_state(name: str) -> str:
    value = os.environ.get(name, "auto").strip().lower()
    if value not in ("0", "1", "auto"):
        sys.exit(f"{name} must be 0, 1 or auto, got {value!r}")
    return value


def sources(*patterns: str) -> list[str]:
    found: dict[str, None] = {}
    for pattern in patterns:
        found.update(dict.fromkeys(sorted(glob.glob(os.path.join("csrc", pattern)))))
    return list(found)


def extension_setup() -> dict:
    build_ext_flag = tri_state("PYPRUNE_BUILD_EXT")
    build_cuda_flag = tri_state("PYPRUNE_BUILD_CUDA")
    if build_ext_flag == "0":
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if build_ext_flag == "1":
            sys.exit("PYPRUNE_BUILD_EXT=1 but torch is not importable; install torch first and "
                     "use pip install --no-build-isolation")
        print("pyprune: torch not importable at build time; installing without the extension")
        return {}

    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if build_cuda_flag == "1" and not has_cuda:
        sys.exit("PYPRUNE_BUILD_CUDA=1 but torch has no CUDA or CUDA_HOME is not set")
    with_cuda = has_cuda and build_cuda_flag != "0"

    # -fopenmp: at::parallel_for is an OpenMP template in the headers and runs
    # serially without it. -fno-trapping-math lets GCC turn float selects into
    # blends, which the vectorised exp/log loops need.
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-Wall", "-Wno-unknown-pragmas"]
    cpu_sources = sources("bindings/module.cpp", "bindings/*_cpu.cpp", "*/*_cpu.cpp")
    if with_cuda:
        extension = cpp_extension.CUDAExtension(
            "pyprune._C",
            cpu_sources + sources("bindings/*_cuda.cpp", "*/*.cu"),
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        extension = cpp_extension.CppExtension("pyprune._C", cpu_sources,
                                               extra_compile_args={"cxx": cxx_flags},
                                               extra_link_args=["-fopenmp"])

    class BuildExtension(cpp_extension.BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as error:  # compiler or linker failure
                if build_ext_flag == "1":
                    raise
                print(f"pyprune: WARNING: building pyprune._C failed ({error}); installing "
                      "without it, every op runs on its reference. Set PYPRUNE_BUILD_EXT=1 to "
                      "make this an error.")

    print(f"pyprune: building pyprune._C (CUDA kernels: {'yes' if with_cuda else 'no'})")
    return {"ext_modules": [extension],
            "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


setup(
    packages=find_packages(include=["pyprune", "pyprune.*"]),
    # The vendored public-domain corpora (short Bible verses, KJV -> WEB and es -> en) for the demo and tests.
    package_data={"pyprune.data": ["corpora/*/*.tsv.gz"]},
    **extension_setup(),
)
