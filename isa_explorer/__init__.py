"""ISA Explorer: Interlaced Sparse Self-Attention for semantic segmentation, explorable.

The README's API::

    import isa_explorer

    model = isa_explorer.load_default_model()          # or load_model("path/to/model_dir")
    cache = isa_explorer.capture_attention(model, image)  # image: (1, 3, H, W), 0-255 RGB
    maps = isa_explorer.query_maps(cache, x, y)        # long, short and combined maps of (x, y)
"""

from isa_explorer.attention import capture_attention, query_maps
from isa_explorer.models import DenseAttentionDecoder, FCNHead, ISADecoder, ISANet
from isa_explorer.pretrained import load_default_model, load_model

__all__ = [
    "DenseAttentionDecoder",
    "FCNHead",
    "ISADecoder",
    "ISANet",
    "__version__",
    "capture_attention",
    "load_default_model",
    "load_model",
    "query_maps",
]
__version__ = "0.1.0"
