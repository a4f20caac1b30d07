"""Interactive exploration of ISA models: the logic behind ``app.py``.

``service`` (:class:`Explorer`) loads images, predicts and answers clicks from cached
queries/keys; ``uploads`` checks user images; ``model`` holds the lazily loaded model and
``store`` the bounded per-session store; ``render`` draws overlays and heat maps;
``attribution`` runs captum.
"""

from isa_explorer.explorer.served_model import ExplorerModel
from isa_explorer.explorer.service import ClickResult, Explorer, ExplorerError
from isa_explorer.explorer.store import ImageState, SessionStore
from isa_explorer.explorer.uploads import (
    MAX_SIDE,
    MIN_SIDE,
    CheckedImage,
    ImageInputError,
    check_image,
    load_image_file,
)

__all__ = [
    "MAX_SIDE",
    "MIN_SIDE",
    "CheckedImage",
    "ClickResult",
    "Explorer",
    "ExplorerError",
    "ExplorerModel",
    "ImageInputError",
    "ImageState",
    "SessionStore",
    "check_image",
    "load_image_file",
]
