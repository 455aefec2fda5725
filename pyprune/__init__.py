"""pyprune: fast non-autoregressive generation and structured pruning of
transformer language models (C++/CUDA/Triton kernels with PyTorch fallbacks)."""
from . import backends, nn, ops, pruning, sparse

__version__ = "0.1.0"
__all__ = ["backends", "nn", "ops", "pruning", "sparse", "__version__"]
