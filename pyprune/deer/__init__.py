"""DEER (Liang et al., ACL 2023): a BERT-family encoder as a non-autoregressive generator.

- ``DeerModel``: source + target slots through one encoder (source never sees
  the target), CTC generator and Levenshtein editor heads sharing it;
- ``DeerObjective``: Algorithm 1's loss (CTC with glancing, placeholder,
  insertion and deletion losses, pruning regulariser);
- ``Deer``: model + tokenizer + dynamic block pruning: ``generate`` at any
  trained keep ratio, ``save``/``load``;
- ``train`` (``pyprune.deer.train``), ``pyprune deer ...`` command line.
"""
from .api import Deer
from .generate import generate_ids
from .losses import DeerObjective, LossConfig, glance_ratio
from .model import DeerConfig, DeerModel, SourceCache, special_ids

__all__ = ["Deer", "DeerConfig", "DeerModel", "DeerObjective", "LossConfig", "SourceCache", "generate_ids",
           "glance_ratio", "special_ids"]
