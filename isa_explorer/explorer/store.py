"""The explorer's per-session image store: one :class:`ImageState` per browser session holds
what clicks need (image, prediction, :class:`~isa_explorer.attention.AttentionCache`), so a
click never runs the network; :class:`SessionStore` bounds them in number and in bytes."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from isa_explorer.attention import AttentionCache


@dataclass
class ImageState:
    """What the explorer keeps of one analysed image.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 image.
        labels: ``(H, W)`` predicted class ids.
        confidence: ``(H, W)`` float16 softmax probability of the predicted class.
        cache: Queries/keys for the attention maps (``None`` for heads without attention).
        source: How the image was obtained, for the status line.
        query: The clicked pixel ``(x, y)``, if any. A click derives a new state with its
            query (:meth:`~isa_explorer.explorer.service.Explorer.click`); none is mutated.
        view: Arrays derived from the image once (``Explorer._view``), shared by the states
            derived from this one (the same image).
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

    def put(self, key: str, state: ImageState, replacing: ImageState | None = None) -> bool:
        """Store ``state`` for ``key`` and evict the least recently used; returns whether stored.

        With ``replacing``, only while ``key`` still holds that state: a click's new state
        never brings back an image that was replaced or discarded meanwhile.
        """
        with self._lock:
            if replacing is not None and self._items.get(key) is not replacing:
                return False
            self._items.pop(key, None)
            self._items[key] = state
            while len(self._items) > 1 and (
                len(self._items) > self.max_sessions or self._bytes() > self.max_bytes
            ):
                self._items.popitem(last=False)
            return True

    def update(self, key: str, change: Callable[[Any], Any]) -> Any:
        """Replace the state of ``key`` by ``change(state)`` in one step (no other thread
        stores between the read and the write): the new state, or ``None`` when ``key`` holds
        nothing or ``change`` returns ``None`` (then nothing is stored)."""
        with self._lock:
            state = self._items.get(key)
            new = None if state is None else change(state)
            if new is None:
                return None
            self._items[key] = new
            self._items.move_to_end(key)
            while len(self._items) > 1 and self._bytes() > self.max_bytes:
                self._items.popitem(last=False)
            return new

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
