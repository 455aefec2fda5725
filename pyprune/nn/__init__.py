"""Drop-in nn.Modules backed by pyprune ops."""
from .ctc import CTCLoss, CTCLossFromLogits

__all__ = ["CTCLoss", "CTCLossFromLogits"]
