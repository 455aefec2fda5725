"""pyprune ops: functional API over the ``pyprune::*`` torch.library ops."""
from . import ctc_reference
from .ctc import ctc_best_alignment, ctc_greedy_decode, ctc_loss, ctc_loss_from_logits

__all__ = [
    "ctc_best_alignment",
    "ctc_greedy_decode",
    "ctc_loss",
    "ctc_loss_from_logits",
    "ctc_reference",
]
