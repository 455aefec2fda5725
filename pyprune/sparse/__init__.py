"""Block-sparse (32x32) weights: layouts, the linear op and path choice."""
from .attention import block_masked_attention
from .layout import BLOCK, BlockLayout, build_layout, expand_mask, layout_for
from .linear import PathChoice, block_sparse_linear, choose_path

__all__ = ["BLOCK", "BlockLayout", "PathChoice", "block_masked_attention", "block_sparse_linear", "build_layout",
           "choose_path", "expand_mask", "layout_for"]
