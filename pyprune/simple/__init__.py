"""SIMPLE end to end: learn masks once, extract and distil compressed LMs, evaluate, export."""
from .pipeline import (METHODS, SimpleConfig, baseline_importance, finetune, latency_ms, learn_masks, lm_chunks,
                       lm_loss, pair_rows, perplexity, swap_to_relu)

__all__ = ["METHODS", "SimpleConfig", "baseline_importance", "finetune", "latency_ms", "learn_masks", "lm_chunks",
           "lm_loss", "pair_rows", "perplexity", "swap_to_relu"]
