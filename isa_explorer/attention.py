"""Attention probes: where does one pixel look, in each step of a head's attention?

:func:`capture_attention` runs the model once and keeps its head's record; :func:`query_maps`
then answers for any query pixel through the head's own
:meth:`~isa_explorer.heads.protocol.Head.query_maps`, in ``O(N)`` memory (never the ``N x N``
matrix), with no network forward. The head declares which maps it has and what they mean
(:mod:`isa_explorer.heads`).

Pixels and feature cells: the network runs at the image's own size, so an ``H``-pixel side
has ``h = ceil(H / stride)`` cells (timm and smp CNN encoders) and the logits are the cells
upsampled bilinearly. Pixel ``y`` belongs to the cell nearest to its source coordinate in that
upsampling (:func:`pixel_cells`); when ``H`` is a multiple of the stride that is simply
``y // stride``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from isa_explorer import heads
from isa_explorer.heads.protocol import Head, Record
from isa_explorer.models.isanet import ISANet
from isa_explorer.models.layers import eval_mode


def pixel_cells(pixels: int, cells: int, align_corners: bool = False) -> np.ndarray:
    """The feature cell of every pixel along one side of the image.

    The logits are the feature map upsampled bilinearly to the image (as in
    :class:`~isa_explorer.models.isanet.ISANet`); pixel ``x`` reads source coordinate
    ``u = (x + 0.5) * cells / pixels - 0.5`` (``x * (cells - 1) / (pixels - 1)`` with
    ``align_corners``), and belongs to the nearest cell, ``round(u)``.

    Args:
        pixels: Image side length.
        cells: Feature map side length.
        align_corners: The model's ``align_corners``.

    Returns:
        ``(pixels,)`` int64 cell indices, non-decreasing, from 0 to ``cells - 1``.
    """
    x = np.arange(pixels, dtype=np.float64)
    if align_corners:
        u = x * ((cells - 1) / (pixels - 1)) if pixels > 1 else np.zeros_like(x)
    else:
        u = (x + 0.5) * (cells / pixels) - 0.5
    return np.clip(np.floor(u + 0.5), 0, cells - 1).astype(np.int64)


@dataclass
class AttentionCache:
    """What one image's head attended with, captured by :func:`capture_attention`.

    Attributes:
        head: The head's class (its maps, reach and probe math; :mod:`isa_explorer.heads`).
        record: The head's record of the image (batch of one).
        feature_size: ``(h, w)`` of the feature map.
        image_size: ``(H, W)`` of the image.
        stride: The encoder's output stride (nominal pixels per feature cell; see
            :meth:`cell_edges` for the exact pixels of each cell).
        logits: ``(K, H, W)`` logits of the image.
        align_corners: The model's ``align_corners`` (maps pixels to cells).
        upsampled_size: ``(H', W')`` the logits were upsampled to before cropping to the image,
            when the model pads its input (``ISANet(pad_input=True)``); ``None``: the image's.
    """

    head: type[Head]
    record: Record
    feature_size: tuple[int, int]
    image_size: tuple[int, int]
    stride: int
    logits: torch.Tensor
    align_corners: bool = False
    upsampled_size: tuple[int, int] | None = None

    @cached_property
    def pixel_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)``: the feature row of every image row, the column of every column."""
        (H, W), (h, w) = self.image_size, self.feature_size
        Hu, Wu = self.upsampled_size or self.image_size
        rows = pixel_cells(Hu, h, self.align_corners)[:H]
        return rows, pixel_cells(Wu, w, self.align_corners)[:W]

    def cell_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` pixel edges of the cells: cell ``(fx, fy)`` covers image rows
        ``rows[fy]:rows[fy + 1]`` and columns ``cols[fx]:cols[fx + 1]`` (``(h + 1,)``,
        ``(w + 1,)``)."""
        (h, w), (rc, cc) = self.feature_size, self.pixel_cells
        return np.searchsorted(rc, np.arange(h + 1)), np.searchsorted(cc, np.arange(w + 1))

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)``: the image row and column of every cell's centre pixel (``(h,)``,
        ``(w,)``), which gives a cell its class (its centre pixel's)."""
        return tuple((e[:-1] + np.maximum(e[1:] - 1, e[:-1])) // 2 for e in self.cell_edges())

    def to_feature(self, x: int, y: int) -> tuple[int, int]:
        """Image pixel ``(x, y)`` -> feature cell ``(fx, fy)``; raises ``ValueError`` outside."""
        H, W = self.image_size
        if not (0 <= x < W and 0 <= y < H):
            raise ValueError(f"pixel (x={x}, y={y}) is outside the {W}x{H} image")
        rows, cols = self.pixel_cells
        return int(cols[x]), int(rows[y])

    def cell_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of an image-sized ``(H, W)`` map over the pixels of each cell -> ``(h, w)``."""
        (h, w), (rows, cols) = self.feature_size, self.pixel_cells
        ids = torch.from_numpy(rows[:, None] * w + cols[None, :]).flatten()  # (H*W,) cell ids
        v = values.flatten().double()
        sums = torch.bincount(ids, weights=v, minlength=h * w)
        counts = torch.bincount(ids, minlength=h * w).clamp_min(1)
        return (sums / counts).view(h, w).float()

    @property
    def nbytes(self) -> int:
        """Memory held by the cache (the record and the logits)."""
        return self.record.nbytes + self.logits.numel() * self.logits.element_size()


@dataclass
class AttentionMaps:
    """The maps of one query pixel, named and ordered as its head declares (``maps[name]``).

    Attributes:
        query: Image pixel ``(x, y)``.
        query_feature: Its feature cell ``(fx, fy)``.
        maps: ``{name: (h, w)}`` on the feature grid (cropped where the head pads).
        padded: ``{name: (hp, wp)}`` float64 on the head's padded grid, each summing to one:
            ``1 - maps[name].sum()`` is the share of attention on padding.
        reach: ``{step: (h, w) bool}``: the cells each step can reach from the query.
        image_size: ``(H, W)``.
        stride: Nominal pixels per cell.
        pixel_cells: The cell row of every image row and column of every column.
    """

    query: tuple[int, int]
    query_feature: tuple[int, int]
    maps: dict[str, torch.Tensor]
    padded: dict[str, torch.Tensor]
    reach: dict[str, torch.Tensor]
    image_size: tuple[int, int]
    stride: int
    pixel_cells: tuple[np.ndarray, np.ndarray] = field(repr=False)
    _image_maps: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.maps[name]

    def on_image(self, name: str) -> torch.Tensor:
        """Map ``name`` at image size ``(H, W)``: each pixel takes its cell's value."""
        if name not in self._image_maps:
            rows, cols = (torch.from_numpy(c) for c in self.pixel_cells)
            self._image_maps[name] = self.maps[name][rows][:, cols]  # (h, w) -> (H, W)
        return self._image_maps[name]


@torch.inference_mode()
def capture_attention(
    model: nn.Module, image: torch.Tensor, stride: int | None = None
) -> AttentionCache:
    """Run ``model`` once and keep what :func:`query_maps` needs.

    Nothing is written on the model (the record comes back from its forward), so several
    threads may capture on one model at once; it may be plain or fused for inference
    (:func:`~isa_explorer.models.fuse_for_inference`). It runs in eval mode and is left in
    the mode it was in (as :meth:`ISANet.predict`).

    Args:
        model: An :class:`ISANet` whose head has attention maps, or such a head on its own.
        image: For an ``ISANet``: one RGB image ``(3, H, W)`` or ``(1, 3, H, W)``, 0-255
            (uint8 or float). For a bare head: its input feature map ``(1, Cin, h, w)``.
        stride: Bare heads only: pixels per feature cell of the image the features stand
            for (default 8); an ``ISANet`` uses its encoder's output stride.

    Returns:
        The cache of the record and the logits (``(K, H, W)``, at image resolution).

    Raises:
        ValueError: A head without attention, or an input of the wrong shape.
    """
    head = heads.of(model)
    if not head.maps:
        raise ValueError(f"the model's {head.name!r} head has no attention to probe")
    align_corners, upsampled = False, None
    if isinstance(model, ISANet):
        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"expected one RGB image (3, H, W), got shape {tuple(image.shape)}")
        x = model.normalize(image.to(next(model.parameters()).device))
        logits, record = model.predict(x, return_attention=True)  # at the image's own size
        stride, image_size = model.output_stride, tuple(image.shape[-2:])
        align_corners = bool(model.align_corners)
        if model.pad_input:
            upsampled = tuple(n + -n % stride for n in image_size)
    else:
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one feature map (1, C, h, w), got {tuple(image.shape)}")
        stride = 8 if stride is None else stride
        image_size = (image.shape[-2] * stride, image.shape[-1] * stride)
        with eval_mode(model):  # as ISANet.predict: probes are of the eval-mode model
            logits, record = model(image, return_attention=True)  # (1, K, h, w)
        logits = F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)
    return AttentionCache(
        head, record, record.size, image_size, stride, logits[0], align_corners, upsampled
    )


def query_maps(cache: AttentionCache, x: int, y: int) -> AttentionMaps:
    """The maps of image pixel ``(x, y)``, as its head declares them, in ``O(N * Ck)`` memory
    and time for ``N`` feature positions (one query against the keys it meets, never the
    ``N x N`` affinity)."""
    fx, fy = cache.to_feature(x, y)
    with torch.inference_mode():
        padded = cache.head.query_maps(cache.record, fx, fy)
        maps = {k: cache.record.crop(v).float() for k, v in padded.items()}
        reach = cache.head.reach(cache.record, fx, fy)
    return AttentionMaps(
        (x, y), (fx, fy), maps, padded, reach, cache.image_size, cache.stride, cache.pixel_cells
    )
