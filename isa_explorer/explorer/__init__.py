"""Interactive exploration of ISA models: the logic behind ``app.py``.

``Explorer`` (handlers) loads images, predicts and answers clicks from cached queries/keys;
``images`` validates user images; ``session`` holds the lazily loaded model and the bounded
per-session store; ``render`` draws overlays and heat maps; ``attribution`` runs captum.
"""

from isa_explorer.explorer.handlers import ClickResult, Explorer, ExplorerError
from isa_explorer.explorer.images import (
    MAX_SIDE,
    MIN_SIDE,
    ImageInputError,
    PreparedImage,
    load_image_file,
    prepare_image,
)
from isa_explorer.explorer.session import ExplorerModel, ImageState, SessionStore

__all__ = [
    "MAX_SIDE",
    "MIN_SIDE",
    "ClickResult",
    "Explorer",
    "ExplorerError",
    "ExplorerModel",
    "ImageInputError",
    "ImageState",
    "PreparedImage",
    "SessionStore",
    "load_image_file",
    "prepare_image",
]
