"""The explorer's model: its directory's config at once, its weights on first use, its head's
class (maps, titles) from the registry (:mod:`isa_explorer.heads`) by the config's name."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import torch

from isa_explorer import heads
from isa_explorer.attention import capture_attention
from isa_explorer.data.synthetic import SyntheticConfig
from isa_explorer.explorer.store import ImageState
from isa_explorer.models.isanet import ISANet
from isa_explorer.palette import palette_or_default
from isa_explorer.pretrained import (
    DEFAULT_MODEL_DIR,
    DEFAULT_MODELS_DIR,
    SYNTHETIC_ONLY,
    knows_synthetic_classes_only,
    load_model,
    read_config,
    resolve_model_dir,
)
from isa_explorer.zoo import ZooEntry, read_entry

#: Training size of models whose directory does not record one (the default model's).
DEFAULT_TRAIN_SIZE = SyntheticConfig.size


def read_train_size(model_dir: Path) -> tuple[int, int]:
    """``(H, W)`` the model was trained at, from its directory's json files, else 128x256."""
    for name in ("config.json", "train_config.json", "training.json"):
        try:
            config = json.loads((model_dir / name).read_text())
        except (OSError, ValueError):  # absent or not json
            continue
        for key in ("train_size", "crop_size", "image_size"):
            value = config.get(key) if isinstance(config, dict) else None
            if isinstance(value, list | tuple) and len(value) == 2:
                return int(value[0]), int(value[1])
    return DEFAULT_TRAIN_SIZE


class ExplorerModel:
    """A model for the explorer, loaded on first use (thread-safe).

    Args:
        path: A model or run directory (see :func:`isa_explorer.pretrained.load_model`);
            ``None`` for the embedded default model.
        device: Device to run on.
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        self.model_dir = resolve_model_dir(DEFAULT_MODEL_DIR if path is None else path)
        self.device = device
        self.train_size = read_train_size(self.model_dir)
        self.config: dict = read_config(self.model_dir)
        if self.config.get("image_mode", "rgb") != "rgb":
            raise ValueError(
                f"{self.model_dir} takes raw {len(self.config.get('mean', []))}-band images at "
                "full precision; the explorer shows models of 8-bit RGB images. Segment raw "
                "images with train/predict.py --checkpoint, evaluate with train/evaluate.py"
            )
        self._model: ISANet | None = None
        self._lock = threading.Lock()  # guards loading only; network passes run concurrently

    @property
    def model(self) -> ISANet:
        """The model, fused for inference (``load_model(..., for_inference=True)``), loaded on
        first access. It serves analysis and, through per-request copies, captum's gradients."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = load_model(self.model_dir, self.device, for_inference=True)
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def num_classes(self) -> int:
        return int(self.config.get("classes", 19))

    @property
    def class_names(self) -> list[str]:
        """Class names from the config (no weights loaded), else ``"0"``, ``"1"``, ..."""
        names = self.config.get("class_names")
        return list(names) if names else [str(i) for i in range(self.num_classes)]

    @property
    def palette(self) -> np.ndarray:
        """``(K, 3)`` uint8 class colours (the config's, else :func:`default_palette`)."""
        palette = palette_or_default(self.config.get("palette"), self.num_classes)
        return np.asarray(palette, dtype=np.uint8)

    @property
    def head(self) -> str:
        """The head's registry name (the config's ``head``)."""
        return str(self.config.get("head", "isa"))

    @property
    def head_class(self) -> type[heads.Head]:
        """The head's registered class: its maps, titles and captions."""
        return heads.get(self.head)

    @property
    def is_synthetic(self) -> bool:
        """Whether the model was trained on the synthetic context scenes (examples available)."""
        return knows_synthetic_classes_only(self.class_names)

    @property
    def zoo_entry(self) -> ZooEntry | None:
        """The zoo entry of a released model (head, dataset, published mIoU), else ``None``."""
        entry = read_entry(self.model_dir)
        if entry is not None and entry.head is None:  # cached before entries named their head
            entry = dataclasses.replace(entry, head=self.head)
        return entry

    @property
    def summary(self) -> str:
        """One markdown line saying which model this is; for a zoo model its head, backbone,
        dataset and published mIoU (``Model: **DANet (DAHead) R-50-D8, Cityscapes** ...:
        published mIoU 79.34.``)."""
        what = (
            f"{self.config.get('encoder_name', '?')}, {self.head} head, {self.num_classes} classes"
        )
        if (entry := self.zoo_entry) is not None:
            numbers = ""
            if entry.miou is not None:
                ms = f", {entry.miou_ms:.2f} multi-scale + flip" if entry.miou_ms else ""
                numbers = f": published mIoU {entry.miou:.2f}{ms}"
            return f"Model: **{entry.title}** `{entry.name}` ({what}){numbers}."
        if self.model_dir.parent == DEFAULT_MODELS_DIR:
            return (
                f"Model: the embedded default `{self.head}` model ({what}; the encoder shared by "
                f"the default model of every head). {self.upload_note}"
            ).rstrip()
        return f"Model: `{self.model_dir.name}` ({what}). {self.upload_note}".rstrip()

    @property
    def upload_note(self) -> str:
        """What to say when an image is uploaded: the synthetic model's limits, else nothing."""
        return SYNTHETIC_ONLY if self.is_synthetic else ""

    def analyse(self, rgb: np.ndarray) -> ImageState:
        """Run the model once on ``rgb`` ``(H, W, 3)`` uint8 and keep what clicks need."""
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))  # (3, H, W)
        model = self.model  # nothing is stored on it: threads share it without a lock
        if self.head_class.maps:
            cache = capture_attention(model, image)
            logits = cache.logits
            # Clicks need the queries/keys only: drop the full-resolution logits from the cache.
            cache = dataclasses.replace(cache, logits=torch.empty(0))
        else:
            cache = None
            with torch.inference_mode():
                logits = model.predict(model.normalize(image[None].to(self.device)))[0]
        with torch.inference_mode():
            confidence, labels = logits.float().softmax(0).max(0)  # (K, H, W) -> (H, W)
        return ImageState(
            rgb=rgb,
            labels=labels.to(torch.uint8 if self.num_classes <= 256 else torch.int32).numpy(),
            confidence=confidence.half().numpy(),
            cache=cache,
        )
