"""Dataset descriptions: class names, palette and ignore index."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the tools need to know about a dataset's labels.

    Args:
        name: Dataset name (``"cityscapes"``, ``"synthetic-context"``, ...).
        class_names: One name per class id.
        palette: One RGB colour per class id.
        ignore_index: Label value of pixels that are not evaluated.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)
