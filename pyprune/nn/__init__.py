"""Drop-in nn.Modules backed by pyprune ops."""
from .ctc import CTCLoss, CTCLossFromLogits
from .sparse import BlockSparseLinear

__all__ = ["BlockSparseLinear", "CTCLoss", "CTCLossFromLogits"]
