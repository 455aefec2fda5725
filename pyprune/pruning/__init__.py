"""Structured pruning of transformers models (DEER block movement pruning, SIMPLE masks).

- ``StructuredMasks``: SIMPLE's learnable masks on heads, FFN neurons and the
  shared hidden dimension;
- ``BlockMovementPruning``: DEER's movement scores on 32x32 attention blocks
  and FFN neurons with global thresholds for several keep ratios;
- ``extract`` / ``PrunePlan``: which components a sub-network keeps;
- ``compact``: the physically smaller model (masked == compacted outputs);
- ``save_pretrained`` / ``from_pretrained``: atomic saving, loading of models
  with per-layer sizes (uniform ones also load in plain transformers).
"""
from .arch import SUPPORTED, model_spec
from .compact import compact
from .masks import MaskedNorm, StructuredMasks
from .plan import Importance, PrunePlan, extract, extract_fraction
from .pretrained import from_pretrained, save_pretrained

__all__ = ["SUPPORTED", "Importance", "MaskedNorm", "PrunePlan", "StructuredMasks", "compact", "extract",
           "extract_fraction", "from_pretrained", "model_spec", "save_pretrained"]
