"""ISA Explorer: Interlaced Sparse Self-Attention for semantic segmentation, explorable.

The README's API::

    import isa_explorer

    model = isa_explorer.load_default_model()          # or load_model("path/to/model_dir")
    cache = isa_explorer.capture_attention(model, image)  # image: (1, 3, H, W), 0-255 RGB
    maps = isa_explorer.query_maps(cache, x, y)        # long, short and combined maps of (x, y)

The top level is lazy (PEP 562): ``import isa_explorer`` imports neither torch nor the models,
so ``isa-explorer --help`` answers at once; each name below is imported on its first use.
``import isa_explorer.models`` (or the first use of any model name here) registers ``isanet``
with segmentation-models-pytorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: ``public name -> module that defines it``, imported on first access.
_LAZY: dict[str, str] = {
    "capture_attention": "isa_explorer.attention",
    "query_maps": "isa_explorer.attention",
    "DenseAttentionDecoder": "isa_explorer.heads.dense",
    "FCNHead": "isa_explorer.heads.fcn",
    "ISADecoder": "isa_explorer.heads.isa",
    "ISANet": "isa_explorer.models",
    "load_default_model": "isa_explorer.pretrained",
    "load_model": "isa_explorer.pretrained",
}

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

if TYPE_CHECKING:  # what type checkers and editors see; never run
    from isa_explorer.attention import capture_attention, query_maps
    from isa_explorer.heads.dense import DenseAttentionDecoder
    from isa_explorer.heads.fcn import FCNHead
    from isa_explorer.heads.isa import ISADecoder
    from isa_explorer.models import ISANet
    from isa_explorer.pretrained import load_default_model, load_model


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562) and keep the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'isa_explorer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return __all__
