"""Compile-check the CUDA torch bindings (csrc/bindings/*_cuda.cpp) on a
machine whose torch has no CUDA: g++ -fsyntax-only against torch's headers
and the CUDA toolkit's. torch's CPU wheel ships c10/cuda but not the header
CMake generates for it, so a one-line stand-in is provided."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuda_include_dir() -> str | None:
    """The first candidate toolkit whose include/ has cuda_runtime.h (nvcc may be
    a link in /usr/local/bin while the headers live in /usr/local/cuda)."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda",
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None]
    for home in filter(None, candidates):
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return os.path.join(home, "include")
    return None


def main() -> int:
    cuda_include = cuda_include_dir()
    if cuda_include is None:
        print("check_cuda_bindings: no CUDA toolkit headers found", file=sys.stderr)
        return 1
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "bindings", "*_cuda.cpp")))
    with tempfile.TemporaryDirectory() as stub:
        os.makedirs(os.path.join(stub, "c10", "cuda", "impl"))
        with open(os.path.join(stub, "c10", "cuda", "impl", "cuda_cmake_macros.h"), "w") as header:
            header.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes = [stub, *cpp_extension.include_paths(), cuda_include,
                    sysconfig.get_paths()["include"]]
        command = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", *[f"-I{path}" for path in includes]]
        for source in sources:
            result = subprocess.run(command + [source], capture_output=True, text=True)
            status = "ok" if result.returncode == 0 else "FAILED"
            print(f"check_cuda_bindings: {os.path.relpath(source, ROOT)}: {status}")
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
