"""The explorer's model (loaded once, lazily) and its bounded per-session image store.

One :class:`ImageState` per browser session holds what clicks need -- the image, its
prediction and its :class:`~isa_explorer.attention.AttentionCache` -- so a click never runs the
network. :class:`SessionStore` keeps them in a least-recently-used map bounded both in number
of sessions and in bytes: many visitors cannot grow the server's memory without limit.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from isa_explorer.attention import AttentionCache, capture_attention
from isa_explorer.data.synthetic import SyntheticConfig
from isa_explorer.models.isa.model import ISANet
from isa_explorer.palette import palette_or_default
from isa_explorer.pretrained import (
    DEFAULT_MODEL_DIR,
    SYNTHETIC_ONLY,
    knows_synthetic_classes_only,
    load_model,
    read_config,
    resolve_model_dir,
)
from isa_explorer.zoo import ZooEntry, read_entry

#: Training size of models whose directory does not record one (the default model's).
DEFAULT_TRAIN_SIZE = SyntheticConfig.size
_SIZE_KEYS = ("train_size", "crop_size", "image_size")
_SIDE_FILES = ("config.json", "train_config.json", "training.json")


def read_train_size(model_dir: Path) -> tuple[int, int]:
    """``(H, W)`` the model was trained at, from its directory's json files, else 128x256."""
    for name in _SIDE_FILES:
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key in _SIZE_KEYS:
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
        return str(self.config.get("head", "isa"))

    @property
    def is_synthetic(self) -> bool:
        """Whether the model was trained on the synthetic context scenes (examples available)."""
        return knows_synthetic_classes_only(self.class_names)

    @property
    def has_attention(self) -> bool:
        return self.head in ("isa", "dense")

    @property
    def zoo_entry(self) -> ZooEntry | None:
        """The zoo entry of a released model (dataset, published mIoU), else ``None``."""
        return read_entry(self.model_dir)

    @property
    def summary(self) -> str:
        """One markdown line saying which model this is (and, for zoo models, how good)."""
        what = (
            f"{self.config.get('encoder_name', '?')}, {self.head} head, {self.num_classes} classes"
        )
        entry = self.zoo_entry
        if entry is not None:
            numbers = ""
            if entry.miou is not None:
                ms = f", {entry.miou_ms:.2f} multi-scale + flip" if entry.miou_ms else ""
                numbers = f": published mIoU {entry.miou:.2f}{ms}"
            return f"Model: **{entry.dataset_title}** `{entry.name}` ({what}){numbers}."
        text = f"Model: `{self.model_dir.name}` ({what})."
        if self.is_synthetic:
            text += " " + SYNTHETIC_ONLY
        return text

    @property
    def upload_note(self) -> str:
        """What to say when an image is uploaded: the synthetic model's limits, else nothing."""
        return SYNTHETIC_ONLY if self.is_synthetic else ""

    def analyse(self, rgb: np.ndarray) -> ImageState:
        """Run the model once on ``rgb`` ``(H, W, 3)`` uint8 and keep what clicks need."""
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))  # (3, H, W)
        model = self.model  # nothing is stored on it: threads share it without a lock
        if self.has_attention:
            cache = capture_attention(model, image)
            logits = cache.logits
            # Clicks need the queries/keys only: drop the full-resolution logits from the cache.
            cache = dataclasses.replace(cache, logits=torch.empty(0))
        else:
            cache = None
            with torch.inference_mode():
                logits = model.predict(model.normalize(image[None].to(self.device)))[0]
        with torch.inference_mode():
            probs = logits.float().softmax(0)  # (K, H, W)
            confidence, labels = probs.max(0)
        return ImageState(
            rgb=rgb,
            labels=labels.to(torch.uint8 if self.num_classes <= 256 else torch.int32).numpy(),
            confidence=confidence.half().numpy(),
            cache=cache,
        )


@dataclass
class ImageState:
    """What the explorer keeps of one analysed image.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 image.
        labels: ``(H, W)`` predicted class ids.
        confidence: ``(H, W)`` float16 softmax probability of the predicted class.
        cache: Queries/keys for the attention maps (``None`` for heads without attention).
        source: How the image was obtained, for the status line.
        query: The last clicked pixel ``(x, y)``, if any.
        view: Display arrays derived from the image, computed once (see ``explorer.handlers``).
    """

    rgb: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    cache: AttentionCache | None
    source: str = ""
    query: tuple[int, int] | None = None
    view: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return self.rgb.shape[0], self.rgb.shape[1]

    @property
    def nbytes(self) -> int:
        n = self.rgb.nbytes + self.labels.nbytes + self.confidence.nbytes
        n += sum(v.nbytes for v in self.view.values() if isinstance(v, np.ndarray))
        return n + (self.cache.nbytes if self.cache is not None else 0)


class SessionStore:
    """Thread-safe LRU of :class:`ImageState` per session key, bounded in count and bytes.

    Args:
        max_sessions: Most sessions kept; the least recently used is dropped first.
        max_bytes: Most bytes kept over all sessions (the newest entry is always kept).
    """

    def __init__(self, max_sessions: int = 16, max_bytes: int = 1 << 30):
        if max_sessions < 1 or max_bytes < 1:
            raise ValueError("max_sessions and max_bytes must be positive")
        self.max_sessions, self.max_bytes = int(max_sessions), int(max_bytes)
        self._items: OrderedDict[str, ImageState] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, state: ImageState) -> None:
        """Store ``state`` for ``key`` (replacing any) and evict the least recently used."""
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = state
            while len(self._items) > 1 and (
                len(self._items) > self.max_sessions or self._bytes() > self.max_bytes
            ):
                self._items.popitem(last=False)

    def get(self, key: str) -> ImageState | None:
        """The state of ``key`` (marked as recently used), ``None`` if absent or evicted."""
        with self._lock:
            state = self._items.get(key)
            if state is not None:
                self._items.move_to_end(key)
            return state

    def discard(self, key: str) -> None:
        """Drop the state of ``key`` (a closed browser tab), if any."""
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes()

    def _bytes(self) -> int:
        return sum(s.nbytes for s in self._items.values())
