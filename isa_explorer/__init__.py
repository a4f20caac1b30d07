"""ISA Explorer: Interlaced Sparse Self-Attention for semantic segmentation, explorable."""

from isa_explorer.models import DenseAttentionDecoder, FCNHead, ISADecoder, ISANet

__all__ = ["DenseAttentionDecoder", "FCNHead", "ISADecoder", "ISANet"]
__version__ = "0.1.0"
