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
from . import importance
from .compact import compact, count_parameters
from .distill import (KeyValueRecorder, ProgressiveSchedule, causal_distillation, hidden_distillation,
                      logits_distillation)
from .masks import MaskedNorm, StructuredMasks
from .movement import DEFAULT_KEEP, BlockMovementPruning, MovementLinear
from .plan import Importance, PrunePlan, extract, extract_fraction
from .pretrained import from_pretrained, save_pretrained

__all__ = ["DEFAULT_KEEP", "SUPPORTED", "BlockMovementPruning", "Importance", "KeyValueRecorder", "MaskedNorm",
           "MovementLinear", "ProgressiveSchedule", "PrunePlan", "StructuredMasks", "causal_distillation",
           "compact", "count_parameters", "extract", "extract_fraction", "from_pretrained",
           "hidden_distillation", "importance", "logits_distillation", "model_spec", "save_pretrained"]
