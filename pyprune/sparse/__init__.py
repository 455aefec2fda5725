"""Block-sparse (32x32) weights: layouts, the linear op and path choice."""
from .layout import BLOCK, BlockLayout, build_layout, expand_mask, layout_for
from .linear import PathChoice, block_sparse_linear, choose_path

__all__ = ["BLOCK", "BlockLayout", "PathChoice", "block_sparse_linear", "build_layout",
           "choose_path", "expand_mask", "layout_for"]
