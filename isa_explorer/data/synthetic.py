"""The synthetic long-range-context dataset: scenes whose labels depend on a far-away cue.

Every image holds one coloured *cue* patch near the left or right edge: red (context A) or blue
(context B). Grey squares and discs more than a third of the width away from the cue are
``object-red-context`` when the cue is red and ``object-blue-context`` when it is blue. They and
their surroundings look the same in both contexts, so no local window can tell the two classes
apart: only a model that relates them to the cue (e.g. through self-attention) can. Green discs,
yellow bars and the cue are classes a local window decides; everything else (a smooth texture,
faint distractor blobs) is background. Item ``i`` is generated on the fly, a pure function of
``(seed, i, size)`` (a few milliseconds for 256x512 on one core).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from isa_explorer.config_dict import FromDict
from isa_explorer.data.info import SYNTHETIC_INFO, DatasetInfo


@dataclass(frozen=True)
class SyntheticConfig(FromDict):
    """The synthetic-context data of a training recipe, the one home of its defaults; read like a
    mapping too (``cfg.synthetic["size"]``).

    Attributes:
        train_length: Training scenes (generated on the fly from ``train_seed``).
        val_length: Validation scenes.
        train_seed: Seed of the training scenes.
        val_seed: Seed of the validation scenes (disjoint from training).
        size: ``(H, W)`` of every scene.
    """

    train_length: int = 4000
    val_length: int = 64
    train_seed: int = 0
    val_seed: int = 10_000
    size: tuple[int, int] = (128, 256)
    section = "synthetic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", check_size(tuple(int(v) for v in self.size)))

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


#: Ids of the classes that only the far cue decides (grey objects in context A / B).
SYNTHETIC_CONTEXT_CLASSES: tuple[int, ...] = (3, 4)

_CUE_RGB = np.array([[215.0, 40.0, 40.0], [40.0, 70.0, 215.0]], dtype=np.float32)
_GREEN_RGB = np.array([40.0, 175.0, 60.0], dtype=np.float32)
_YELLOW_RGB = np.array([220.0, 200.0, 40.0], dtype=np.float32)
_GAP = 4  # free pixels around every object inside its grid cell
_MIN_FAR = 1 / 3  # minimum cue-to-object distance, as a fraction of the width


def _sizes(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Object and cue side ranges ``(lo, hi)`` in pixels for an ``h x w`` image."""
    s = min(h, w / 2) / 256
    obj = (max(24, round(28 * s)), max(32, round(44 * s)))
    cue = (max(32, round(36 * s)), max(40, round(52 * s)))
    return obj, cue


def _layout(h: int, w: int) -> tuple[int, np.ndarray, np.ndarray, int]:
    """Grid of object cells: ``(cell, cell_y0s, cell_x0s, far_x0)`` for a cue at the left."""
    (_, obj_hi), (_, cue_hi) = _sizes(h, w)
    cell = obj_hi + 2 * _GAP
    ny, nx = h // cell, w // cell
    y0s = (h - ny * cell) // 2 + cell * np.arange(ny)
    x0s = (w - nx * cell) // 2 + cell * np.arange(nx)
    # The rightmost cue edge is 4 + w // 20 + cue_hi; objects start more than w / 3 past it.
    far_x0 = max(w // 2, 4 + w // 20 + cue_hi + int(np.ceil(w * _MIN_FAR)) + 1)
    return cell, y0s, x0s, far_x0


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """Validate an ``(H, W)`` scene size; raises ``ValueError`` naming the problem and a fix."""
    h, w = (int(v) for v in size)
    cell, y0s, x0s, far_x0 = _layout(h, w) if h > 0 and w > 0 else (0, [], [], 0)
    if len(y0s) == 0 or not np.any(np.asarray(x0s) + _GAP >= far_x0):
        raise ValueError(
            f"size {(h, w)} is too small for the synthetic context scenes: they need room for "
            "a cue near one edge and objects more than a third of the width away; use at "
            "least (96, 192), e.g. (128, 256) or (256, 512)"
        )
    return h, w


@lru_cache(maxsize=16)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` linear interpolation matrix (align-corners) for smooth textures."""
    pos = np.linspace(0, n_in - 1, n_out, dtype=np.float32)
    lo = np.minimum(pos.astype(np.int64), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _disc(h: int, w: int) -> np.ndarray:
    """Boolean ``(h, w)`` ellipse filling its box."""
    yy = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / (h / 2)
    xx = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / (w / 2)
    return yy[:, None] ** 2 + xx[None, :] ** 2 <= 1.0


def _paint(canvas, labels, y0, x0, shape, colour, label) -> None:
    """Paint a boolean ``shape`` at ``(y0, x0)`` (clipped) into a ``(3, H, W)`` canvas."""
    h, w = shape.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, canvas.shape[1]), min(x0 + w, canvas.shape[2])
    if ya >= yb or xa >= xb:
        return
    m = shape[ya - y0 : yb - y0, xa - x0 : xb - x0]
    canvas[:, ya:yb, xa:xb][:, m] = np.asarray(colour, np.float32)[:, None]
    labels[ya:yb, xa:xb][m] = label


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random texture ``(3, h, w)`` float32 around a random dark colour."""
    gh, gw = 5, 9
    grid = rng.uniform(-28, 28, (3, gh, gw)).astype(np.float32)
    grid += rng.uniform(28, 78, (3, 1, 1)).astype(np.float32)
    # (h, gh) @ (3, gh, gw) @ (gw, w) -> (3, h, w)
    return np.matmul(_interp_matrix(h, gh) @ grid, _interp_matrix(w, gw).T)


def _distractors(rng, canvas, labels, h: int, w: int) -> None:
    """Faintly coloured ellipses (background class), never grey and never cue-coloured."""
    n = int(rng.integers(6, 13))
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
    ry, rx = rng.integers(6, 36, n), rng.integers(6, 36, n)
    grey = rng.uniform(70, 150, n)
    direction = rng.normal(size=(n, 3))
    direction -= direction.mean(1, keepdims=True)  # orthogonal to the grey axis
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-6
    colours = grey[:, None] + rng.uniform(30, 50, (n, 1)) * direction
    for i in range(n):
        shape = _disc(2 * int(ry[i]), 2 * int(rx[i]))
        _paint(canvas, labels, cy[i] - ry[i], cx[i] - rx[i], shape, colours[i], 0)


def _render(seed: int, index: int, size: tuple[int, int], context: int | None = None):
    """Scene ``(image (3, H, W) uint8, labels (H, W) int64)``; see :func:`generate`."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    if context not in (None, 0, 1):
        raise ValueError(f"context must be None, 0 (red cue) or 1 (blue cue), got {context!r}")
    h, w = check_size(size)
    rng = np.random.default_rng((int(seed), int(index), h, w))
    (obj_lo, obj_hi), (cue_lo, cue_hi) = _sizes(h, w)
    cell, y0s, x0s, far_x0 = _layout(h, w)
    drawn_context = int(rng.integers(0, 2))
    context = drawn_context if context is None else int(context)
    cue_right = bool(rng.integers(0, 2))

    canvas = _background(rng, h, w)
    labels = np.zeros((h, w), dtype=np.uint8)
    _distractors(rng, canvas, labels, h, w)

    def put(y0: int, x0: int, shape: np.ndarray, colour: np.ndarray, label: int) -> None:
        # The layout is drawn with the cue on the left and mirrored for a cue on the right
        # (all shapes are left-right symmetric).
        x0 = w - x0 - shape.shape[1] if cue_right else x0
        _paint(canvas, labels, y0, x0, shape, colour, label)

    # The cue: a square near the edge, drawn on top of the distractors.
    cue = int(rng.integers(cue_lo, cue_hi + 1))
    cue_x0 = 4 + int(rng.integers(0, w // 20 + 1))
    cue_y0 = int(rng.integers(4, h - cue - 3))
    cue_colour = _CUE_RGB[context] + rng.uniform(-20, 20, 3).astype(np.float32)
    put(cue_y0, cue_x0, np.ones((cue, cue), bool), cue_colour, 1 + context)

    # Grid cells: grey objects only far from the cue, local objects anywhere clear of it.
    cyy, cxx = (v.ravel() for v in np.meshgrid(y0s, x0s, indexing="ij"))
    far = cxx + _GAP >= far_x0
    clear = (cxx >= cue_x0 + cue + _GAP) | (cyy >= cue_y0 + cue + _GAP) | (cyy + cell <= cue_y0)
    far_cells = rng.permutation(np.flatnonzero(far))[: int(rng.integers(1, 5))]
    free = rng.permutation(np.flatnonzero(clear & ~np.isin(np.arange(len(far)), far_cells)))
    free = free[: int(rng.integers(1, 5))]
    room = cell - 2 * _GAP

    for i in far_cells:
        side = int(rng.integers(obj_lo, obj_hi + 1))
        y0, x0 = (v + _GAP + int(rng.integers(0, room - side + 1)) for v in (cyy[i], cxx[i]))
        shape = _disc(side, side) if rng.integers(0, 2) else np.ones((side, side), bool)
        grey = np.full(3, rng.uniform(135, 210), np.float32)
        put(y0, x0, shape, grey, 3 + context)

    for i in free:
        side = int(rng.integers(obj_lo, obj_hi + 1))
        y0, x0 = (v + _GAP + int(rng.integers(0, room - side + 1)) for v in (cyy[i], cxx[i]))
        jitter = rng.uniform(-20, 20, 3).astype(np.float32)
        if rng.integers(0, 2):
            put(y0, x0, _disc(side, side), _GREEN_RGB + jitter, 5)
        else:
            thin = max(12, side * 2 // 5)
            bar = np.ones((side, thin) if rng.integers(0, 2) else (thin, side), bool)
            put(y0, x0, bar, _YELLOW_RGB + jitter, 6)

    # Pixel noise in 0..15 (from random bytes: fast), then 8-bit.
    canvas += np.frombuffer(rng.bytes(3 * h * w), np.uint8).reshape(3, h, w) & 15
    np.clip(canvas, 0, 255, out=canvas)
    return canvas.astype(np.uint8), labels.astype(np.int64)


def generate(
    seed: int, index: int, size: tuple[int, int] = (256, 512), context: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Generate scene ``index`` of the dataset with ``seed``.

    Args:
        seed: Dataset seed (non-negative).
        index: Item index (non-negative).
        size: ``(H, W)`` of the scene, at least ``(96, 192)``.
        context: Force the cue's context (0 red, 1 blue) instead of the drawn one; every other
            pixel of the scene stays the same, so the context classes swap with the cue.

    Returns:
        ``(image, labels)``: ``(H, W, 3)`` uint8 RGB and ``(H, W)`` int64 class ids.
    """
    image, labels = _render(seed, index, size, context)
    return np.ascontiguousarray(image.transpose(1, 2, 0)), labels  # (3, H, W) -> (H, W, 3)


class SyntheticContextDataset(torch.utils.data.Dataset):
    """Generated long-range-context scenes (see the module docstring); no files needed.

    Args:
        length: Number of items.
        seed: Seed of the dataset; item ``i`` is a pure function of ``(seed, i, size)``.
        size: ``(H, W)`` of every scene.
        transforms: Optional callable ``(image, mask) -> (image, mask)``.

    Items:
        ``(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))``.
    """

    info: DatasetInfo = SYNTHETIC_INFO

    def __init__(
        self,
        length: int = 1000,
        seed: int = 0,
        size: tuple[int, int] = (256, 512),
        transforms: Callable | None = None,
    ):
        if length < 1:
            raise ValueError(f"length must be at least 1, got {length}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.length, self.seed, self.size = int(length), int(seed), check_size(size)
        self.transforms = transforms

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        image, labels = _render(self.seed, index % self.length, self.size)
        item = (
            tv_tensors.Image(torch.from_numpy(image)),
            tv_tensors.Mask(torch.from_numpy(labels)),
        )
        return self.transforms(*item) if self.transforms is not None else item
