"""Drop-in nn.Modules backed by pyprune ops."""
from .ctc import CTCLoss, CTCLossFromLogits
from .packed import PackedLinear, fuse_gelu, pack_linears
from .sparse import BlockSparseLinear

__all__ = ["BlockSparseLinear", "CTCLoss", "CTCLossFromLogits", "PackedLinear", "fuse_gelu", "pack_linears"]
