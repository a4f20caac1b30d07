"""Attention probes: where does one pixel look, in each ISA step and after both?

:func:`capture_attention` runs the model once and keeps the queries and keys of its attention
steps; :func:`query_maps` then answers for any query pixel in ``O(N)`` memory (never the
``N x N`` matrix), so clicking around an image costs no network forward.

For the paper's order (long-range, then short-range) the output at query ``p`` is, up to the
value/output projections, ``sum_j S[p, j] * sum_k L[j, k] v_k`` with ``j`` in ``p``'s local
block and ``k`` in ``j``'s long-range group. The *combined* map is the product of the two
sparse affinities, ``C[p, k] = sum_j S[p, j] L[j, k]``. ``p``'s block holds exactly one
position of every long-range group, so for each ``k`` exactly one ``j`` contributes:
``C[p, k] = S[p, j(k)] * L[j(k), k] > 0`` -- every position reaches every other one, and
``C[p]`` sums to one over the padded grid.

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

from isa_explorer.models.isa.decoder import GroupGrid
from isa_explorer.models.isa.model import ISANet
from isa_explorer.models.layers import eval_mode


def pixel_cells(pixels: int, cells: int, align_corners: bool = False) -> np.ndarray:
    """The feature cell of every pixel along one side of the image.

    The logits are the feature map upsampled bilinearly to the image (as in
    :class:`~isa_explorer.models.isa.model.ISANet`); pixel ``x`` reads source coordinate
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
    """Queries/keys of one image, captured by :func:`capture_attention`.

    Attributes:
        head: ``"isa"`` or ``"dense"``.
        order: ``"long-short"`` / ``"short-long"`` (ISA) or ``"dense"``.
        qk: ``{step}_q`` / ``{step}_k`` maps ``(Ck, hp, wp)`` (ISA: padded grid; dense: ``(Ck, h, w)``).
        grid: The ISA grouping geometry (``None`` for dense).
        scale: Affinity scale ``isa_channels ** -0.5``.
        feature_size: ``(h, w)`` of the feature map.
        image_size: ``(H, W)`` of the image.
        stride: The encoder's output stride (nominal pixels per feature cell; see
            :meth:`cell_edges` for the exact pixels of each cell).
        logits: ``(K, H, W)`` logits of the image.
        first_keys: ISA only: the first step's keys grouped the way one query's block (or
            group) meets them, contiguous, so a query costs one batched matmul instead of a
            strided copy of all keys: long-short ``(lh, lw, Ck, gh*gw)``, short-long
            ``(gh, gw, Ck, lh*lw)``.
        align_corners: The model's ``align_corners`` (maps pixels to cells).
        upsampled_size: ``(H', W')`` the logits were upsampled to before cropping to the image,
            when the model pads its input (``ISANet(pad_input=True)``); ``None``: the image's.
    """

    head: str
    order: str
    qk: dict[str, torch.Tensor]
    grid: GroupGrid | None
    scale: float
    feature_size: tuple[int, int]
    image_size: tuple[int, int]
    stride: int
    logits: torch.Tensor
    first_keys: torch.Tensor | None = field(default=None, repr=False)
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
        """Memory held by the cache (queries, keys and logits)."""
        tensors = [*self.qk.values(), self.logits]
        if self.first_keys is not None:
            tensors.append(self.first_keys)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class AttentionMaps:
    """Attention maps of one query pixel on the feature grid ``(h, w)``.

    ``maps`` holds ``long``, ``short`` and ``combined`` (ISA) or ``dense``; each sums to at
    most one (exactly one over the padded grid).
    """

    query: tuple[int, int]
    query_feature: tuple[int, int]
    maps: dict[str, torch.Tensor]
    image_size: tuple[int, int]
    stride: int
    pixel_cells: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _image_maps: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def long_range(self) -> torch.Tensor:
        return self.maps["long"]

    @property
    def short_range(self) -> torch.Tensor:
        return self.maps["short"]

    @property
    def combined(self) -> torch.Tensor:
        return self.maps["combined"]

    def on_image(self, name: str) -> torch.Tensor:
        """Map ``name`` at image size ``(H, W)``: each pixel takes its cell's value."""
        if name not in self._image_maps:
            m = self.maps[name]  # (h, w)
            if self.pixel_cells is None:  # cells of exactly stride x stride pixels
                H, W = self.image_size
                rows = np.minimum(np.arange(H) // self.stride, m.shape[0] - 1)
                cols = np.minimum(np.arange(W) // self.stride, m.shape[1] - 1)
            else:
                rows, cols = self.pixel_cells
            self._image_maps[name] = m[torch.from_numpy(rows)][:, torch.from_numpy(cols)]
        return self._image_maps[name]


@torch.inference_mode()
def capture_attention(
    model: nn.Module, image: torch.Tensor, stride: int | None = None
) -> AttentionCache:
    """Run ``model`` once and keep what :func:`query_maps` needs.

    Nothing is written on the model: the queries and keys come back from its forward
    (``return_attention=True``), so several threads may capture on one eval-mode model at
    once. The model may be plain or fused for inference
    (:func:`~isa_explorer.models.fuse_for_inference`). It runs in eval mode: a model in
    training mode is switched to eval for the capture and back after it (as
    :meth:`ISANet.predict` does), so it is left in the mode it was in.

    Args:
        model: An :class:`ISANet` with an ``"isa"`` or ``"dense"`` head, or a bare
            :class:`ISADecoder` / :class:`DenseAttentionDecoder` (plain or fused).
        image: For an ``ISANet``: one RGB image ``(3, H, W)`` or ``(1, 3, H, W)``, 0-255
            (uint8 or float). For a bare decoder: its input feature map ``(1, Cin, h, w)``.
        stride: Bare decoders only: pixels per feature cell of the image the features stand
            for (default 8); an ``ISANet`` uses its encoder's output stride.

    Returns:
        The cache of queries, keys and logits (``(K, H, W)``, at image resolution).

    Raises:
        ValueError: A head without attention, or an input of the wrong shape.
    """
    is_net = isinstance(model, ISANet)
    decoder = model.decoder if is_net else model
    order = getattr(decoder, "order", None)  # ISA heads
    if not hasattr(decoder, "global_relation") and not hasattr(decoder, "relation"):
        name = model.head if is_net else type(decoder).__name__
        raise ValueError(f"the model's {name!r} head has no attention to probe")
    if is_net:
        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"expected one RGB image (3, H, W), got shape {tuple(image.shape)}")
        device = next(model.parameters()).device
        x = model.normalize(image.to(device))
        logits, attn = model.predict(x, return_attention=True)  # at the image's own size
        stride, image_size = model.output_stride, tuple(image.shape[-2:])
    else:
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one feature map (1, C, h, w), got {tuple(image.shape)}")
        stride = 8 if stride is None else stride
        image_size = (image.shape[-2] * stride, image.shape[-1] * stride)
        with eval_mode(decoder):  # as ISANet.predict: probes are of the eval-mode model
            logits, attn = decoder(image, return_attention=True)  # (1, K, h, w)
        logits = F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)
    grid = attn.get("grid")
    # (Ck, hp, wp) maps, contiguous: the probes view them as (Ck, gh, lh, gw, lw).
    qk = {k: v[0].contiguous() for k, v in attn.items() if k != "grid"}
    if order is not None:
        head, feature_size = "isa", (grid.h, grid.w)
        scale = decoder.global_relation.scale
        first_keys = _group_first_keys(qk, grid, order)
    else:
        head, order, first_keys = "dense", "dense", None
        feature_size = tuple(qk["dense_q"].shape[-2:])
        scale = decoder.relation.scale
    align_corners = bool(getattr(model, "align_corners", False)) if is_net else False
    upsampled = None
    if is_net and model.pad_input:
        upsampled = tuple(n + -n % stride for n in image_size)
    return AttentionCache(
        head,
        order,
        qk,
        grid,
        scale,
        feature_size,
        image_size,
        stride,
        logits[0],
        first_keys,
        align_corners,
        upsampled,
    )


def _group_first_keys(qk: dict[str, torch.Tensor], g: GroupGrid, order: str) -> torch.Tensor:
    """The first step's keys ``(Ck, hp, wp)`` regrouped for :func:`_isa_maps` (contiguous)."""
    first = order.split("-")[0]
    k = qk[f"{first}_k"]
    ck = k.shape[0]
    kv = k.view(ck, g.gh, g.lh, g.gw, g.lw)  # [c, m, a, n, b] = position (m*lh + a, n*lw + b)
    if first == "long":  # per block offset (a, b): its long-range group (m, n)
        return kv.permute(2, 4, 0, 1, 3).reshape(g.lh, g.lw, ck, g.gh * g.gw).contiguous()
    return kv.permute(1, 3, 0, 2, 4).reshape(g.gh, g.gw, ck, g.lh * g.lw).contiguous()


def query_maps(cache: AttentionCache, x: int, y: int) -> AttentionMaps:
    """Long-range, short-range and combined maps (or the dense map) of image pixel ``(x, y)``.

    Memory and time are ``O(N * Ck)`` for ``N`` feature positions: one query against the keys
    it meets, never the ``N x N`` affinity.
    """
    fx, fy = cache.to_feature(x, y)
    with torch.inference_mode():
        if cache.head == "dense":
            maps = {"dense": _dense_map(cache, fx, fy)}
        else:
            maps = _isa_maps(cache, fx, fy)
    return AttentionMaps((x, y), (fx, fy), maps, cache.image_size, cache.stride, cache.pixel_cells)


def _softmax(logits: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    # float64: the combined map multiplies two softmax weights, keep tiny ones non-zero.
    logits = logits.double()
    flat = logits.flatten(-len(dims))
    return flat.softmax(-1).view_as(logits)


def _dense_map(cache: AttentionCache, fx: int, fy: int) -> torch.Tensor:
    q, k = cache.qk["dense_q"], cache.qk["dense_k"]  # (Ck, h, w)
    logits = torch.einsum("c,chw->hw", q[:, fy, fx], k) * cache.scale
    return _softmax(logits, (0, 1))


def _isa_maps(cache: AttentionCache, fx: int, fy: int) -> dict[str, torch.Tensor]:
    g = cache.grid
    bi, bj, li, lj = g.locate(fx, fy)  # the query's block and its offset in it
    py, px = bi * g.lh + li, bj * g.lw + lj  # padded coordinates of the query
    first, second = cache.order.split("-")
    q1 = cache.qk[f"{first}_q"]  # (Ck, hp, wp); the first step's keys come grouped
    q2, k2 = cache.qk[f"{second}_q"], cache.qk[f"{second}_k"]
    ck = q1.shape[0]
    # Viewed as (Ck, gh, lh, gw, lw): [.., m, a, n, b] is position (m*lh + a, n*lw + b).
    k2v = k2.view(ck, g.gh, g.lh, g.gw, g.lw)
    q1v = q1.view(ck, g.gh, g.lh, g.gw, g.lw)
    s = cache.scale
    if first == "long":
        # Second step (short): p's weights over its block (a, b).
        w2 = _softmax(torch.einsum("c,cab->ab", q2[:, py, px], k2v[:, bi, :, bj, :]) * s, (0, 1))
        # First step (long) for every j = (bi, a, bj, b) of p's block over its group (m, n).
        qb = q1v[:, bi, :, bj, :].permute(1, 2, 0).reshape(g.lh * g.lw, 1, ck)  # (lh*lw, 1, Ck)
        kg = _first_keys(cache).view(g.lh * g.lw, ck, g.gh * g.gw)  # (lh*lw, Ck, gh*gw)
        logits1 = torch.bmm(qb, kg).view(g.lh, g.lw, g.gh, g.gw)
        w1 = _softmax(logits1 * s, (2, 3))  # (lh, lw, gh, gw)
        combined = (w2[:, :, None, None] * w1).permute(2, 0, 3, 1)  # (gh, lh, gw, lw)
        long_w, short_w = w1[li, lj], w2  # p's own first-step weights: (gh, gw)
    else:
        # Second step (long): p's weights over its long-range group (m, n).
        w2 = _softmax(torch.einsum("c,cmn->mn", q2[:, py, px], k2v[:, :, li, :, lj]) * s, (0, 1))
        # First step (short) for every j = (m, li, n, lj) of p's group over its block (a, b).
        qg = q1v[:, :, li, :, lj].permute(1, 2, 0).reshape(g.gh * g.gw, 1, ck)  # (gh*gw, 1, Ck)
        kg = _first_keys(cache).view(g.gh * g.gw, ck, g.lh * g.lw)  # (gh*gw, Ck, lh*lw)
        logits1 = torch.bmm(qg, kg).view(g.gh, g.gw, g.lh, g.lw)
        w1 = _softmax(logits1 * s, (2, 3))  # (gh, gw, lh, lw)
        combined = (w2[:, :, None, None] * w1).permute(0, 2, 1, 3)  # (gh, lh, gw, lw)
        long_w, short_w = w2, w1[bi, bj]
    hp, wp = g.padded
    long_map = torch.zeros(g.gh, g.lh, g.gw, g.lw, dtype=long_w.dtype)
    long_map[:, li, :, lj] = long_w
    short_map = torch.zeros_like(long_map)
    short_map[bi, :, bj, :] = short_w
    maps = {"long": long_map, "short": short_map, "combined": combined}
    return {k: g.crop(v.reshape(hp, wp)).float() for k, v in maps.items()}


def _first_keys(cache: AttentionCache) -> torch.Tensor:
    if cache.first_keys is None:  # a cache built by hand: group once, keep it
        cache.first_keys = _group_first_keys(cache.qk, cache.grid, cache.order)
    return cache.first_keys


def affinity_matrices(cache: AttentionCache) -> dict[str, torch.Tensor]:
    """The full sparse affinities of both ISA steps as dense ``(Np, Np)`` matrices.

    For teaching and tests on small maps only (``Np`` = padded positions, row-major): memory is
    ``Np^2``. ``C = A_second @ A_first`` is the combined affinity.
    """
    g = cache.grid
    if g is None:
        raise ValueError("affinity_matrices is for ISA heads")
    out = {}
    for step in ("long", "short"):
        q, k = cache.qk[f"{step}_q"].flatten(1).double(), cache.qk[f"{step}_k"].flatten(1).double()
        logits = (q.T @ k) * cache.scale  # (Np, Np)
        same = g.group_ids(step)  # (Np,)
        logits = logits.masked_fill(same[:, None] != same[None, :], float("-inf"))
        out[step] = logits.softmax(-1)
    return out
