"""pyprune ops: functional API over the ``pyprune::*`` torch.library ops."""
from . import attention_reference, ctc_reference, levenshtein_reference
from .attention import masked_attention
from .ctc import ctc_best_alignment, ctc_greedy_decode, ctc_greedy_draft, ctc_loss, ctc_loss_from_logits
from pyprune.sparse import block_masked_attention, block_sparse_linear

from .levenshtein import (apply_del_words, apply_ins_masks, apply_ins_words, edit_distance,
                          get_del_targets, get_edit_targets, get_ins_targets, suggested_ed2_path)

__all__ = [
    "attention_reference",
    "masked_attention",
    "block_masked_attention",
    "block_sparse_linear",
    "apply_del_words",
    "apply_ins_masks",
    "apply_ins_words",
    "edit_distance",
    "get_del_targets",
    "get_edit_targets",
    "get_ins_targets",
    "suggested_ed2_path",
    "levenshtein_reference",
    "ctc_best_alignment",
    "ctc_greedy_decode",
    "ctc_greedy_draft",
    "ctc_loss",
    "ctc_loss_from_logits",
    "ctc_reference",
]
