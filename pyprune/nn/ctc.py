"""CTC loss modules."""
from __future__ import annotations

from torch import Tensor, nn

from pyprune.ops import ctc_loss, ctc_loss_from_logits


class CTCLoss(nn.CTCLoss):
    """Drop-in for :class:`torch.nn.CTCLoss` (same arguments, state_dict and
    forward signature) computed by :func:`pyprune.ops.ctc_loss`."""

    def forward(self, log_probs: Tensor, targets: Tensor, input_lengths: Tensor,
                target_lengths: Tensor) -> Tensor:
        return ctc_loss(log_probs, targets, input_lengths, target_lengths, self.blank,
                        self.reduction, self.zero_infinity)


class CTCLossFromLogits(nn.Module):
    """CTC loss on raw logits with label smoothing, fused with log_softmax
    (:func:`pyprune.ops.ctc_loss_from_logits`)."""

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False,
                 label_smoothing: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        self.blank = blank
        self.reduction = reduction
        self.zero_infinity = zero_infinity
        self.label_smoothing = label_smoothing
        self.batch_first = batch_first

    def forward(self, logits: Tensor, targets: Tensor, input_lengths: Tensor,
                target_lengths: Tensor) -> Tensor:
        return ctc_loss_from_logits(logits, targets, input_lengths, target_lengths, self.blank,
                                    self.reduction, self.zero_infinity, self.label_smoothing,
                                    self.batch_first)

    def extra_repr(self) -> str:
        return (f"blank={self.blank}, reduction={self.reduction!r}, "
                f"zero_infinity={self.zero_infinity}, label_smoothing={self.label_smoothing}, "
                f"batch_first={self.batch_first}")
