"""Triton kernels shipped inside pyprune (import as ``pyprune.triton_kernels``).

Kept inside the package: a top-level ``triton_kernels`` module name is taken
by triton-lang's own kernel package. No Triton kernel is in use yet; the CTC
ops run on the C++ and CUDA kernels in csrc/.
"""
