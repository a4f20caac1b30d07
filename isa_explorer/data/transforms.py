"""mmsegmentation's training and test pipelines as torchvision ``transforms.v2`` callables.

Every transform takes and returns ``(image, mask)``: ``tv_tensors.Image`` uint8 ``(3, H, W)``
and ``tv_tensors.Mask`` int64 ``(H, W)``. Geometric steps move both (masks always with nearest
interpolation); photometric steps touch the image only. Besides torchvision's flip, small
``v2.Transform`` subclasses do what mmseg does: :class:`RandomRescale` (``RandomResize``),
:class:`CatMaxRatioCrop` (``RandomCrop``), :class:`PhotoMetricDistortion` (v2's
``RandomPhotometricDistort`` also permutes channels and scales brightness instead of shifting)
and :class:`PadToSize` (pad bottom/right to the crop size: image 0, mask 255).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

#: Base scale (long, short edge) and crop size (H, W) of mmseg's configs per dataset (the same
#: for every head); Cityscapes' 769x769 configs: :data:`CITYSCAPES_769_SCALE`.
RECIPES: dict[str, dict[str, tuple[int, int]]] = {
    "cityscapes": {"scale": (2048, 1024), "crop_size": (512, 1024)},
    "ade20k": {"scale": (2048, 512), "crop_size": (512, 512)},
    "voc": {"scale": (2048, 512), "crop_size": (512, 512)},
}
#: Base scale (long, short edge) of mmseg's ``cityscapes_769x769.py``, the dataset config of the
#: 769x769 Cityscapes models: their training rescale and their test resize (not (2048, 1024)).
CITYSCAPES_769_SCALE: tuple[int, int] = (2049, 1025)


def rescale_size(size: tuple[int, int], scale: tuple[int, int], ratio: float = 1.0) -> list[int]:
    """Keep-ratio target size as mmcv's ``rescale_size``: fit within ``scale * ratio``.

    Args:
        size: Input ``(H, W)``.
        scale: ``(long edge, short edge)`` bound; the order does not matter.
        ratio: Multiplier of ``scale`` (mmseg truncates the scaled bound to ints).

    Returns:
        ``[H', W']``: the largest keep-ratio size with long edge <= ``max(scale)`` and short edge
        <= ``min(scale)``, rounded half up.
    """
    h, w = size
    bound = (int(scale[0] * ratio), int(scale[1] * ratio))
    factor = min(max(bound) / max(h, w), min(bound) / min(h, w))
    return [max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))]


class RandomRescale(v2.Transform):
    """Resize keeping the aspect ratio to a random multiple of a base scale (mmseg ``RandomResize``).

    The ratio is drawn uniformly from ``ratio_range`` (1.0 when ``None``); the image is fitted
    within ``scale * ratio`` (:func:`rescale_size`), bilinearly without antialiasing (as mmseg's
    OpenCV), the mask with nearest.

    Args:
        scale: ``(long, short)`` base scale, e.g. ``(2048, 1024)``.
        ratio_range: ``(min, max)`` ratio, or ``None`` for a fixed resize.
        antialias: Antialias image downscaling (``False`` matches mmseg).
    """

    def __init__(
        self,
        scale: tuple[int, int],
        ratio_range: tuple[float, float] | None = (0.5, 2.0),
        antialias: bool = False,
    ):
        super().__init__()
        if ratio_range is not None and not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be 0 < min <= max, got {ratio_range}")
        self.scale = tuple(scale)
        self.ratio_range = ratio_range
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        ratio = 1.0
        if self.ratio_range is not None:
            lo, hi = self.ratio_range
            ratio = lo + float(torch.rand(())) * (hi - lo)
        return {"size": rescale_size(v2.query_size(flat_inputs), self.scale, ratio)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        bilinear = v2.InterpolationMode.BILINEAR  # masks are always resized with nearest
        return self._call_kernel(
            F.resize, inpt, params["size"], interpolation=bilinear, antialias=self.antialias
        )


class KeepRatioResize(RandomRescale):
    """Test-time keep-ratio resize of the image only: mmseg evaluates at the label's size.

    Args:
        scale: ``(long, short)`` bound, e.g. ``(2048, 512)``.
        antialias: Antialias image downscaling (``False`` matches mmseg).
    """

    _transformed_types = (tv_tensors.Image, PIL.Image.Image, F.is_pure_tensor)

    def __init__(self, scale: tuple[int, int], antialias: bool = False):
        super().__init__(scale, None, antialias)


class CatMaxRatioCrop(v2.Transform):
    """Random crop where no single class covers too much (mmseg ``RandomCrop``).

    A window of ``min(crop_size, image size)`` is drawn uniformly and accepted if it holds two
    classes or more and the largest covers less than ``cat_max_ratio`` of the labelled pixels;
    after ``max_tries`` rejections one more is drawn and used. ``cat_max_ratio >= 1`` (or no
    mask) accepts the first window.

    Args:
        crop_size: ``(H, W)`` of the crop.
        cat_max_ratio: Largest share of one class in an accepted crop.
        ignore_index: Mask value not counted.
        max_tries: Windows tested before giving up (mmseg: 10).
    """

    def __init__(
        self,
        crop_size: tuple[int, int],
        cat_max_ratio: float = 0.75,
        ignore_index: int = 255,
        max_tries: int = 10,
    ):
        super().__init__()
        if min(crop_size) <= 0:
            raise ValueError(f"crop_size must be positive (H, W), got {crop_size}")
        self.crop_size = tuple(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        tries = self.max_tries if mask is not None and self.cat_max_ratio < 1.0 else 0
        for attempt in range(tries + 1):  # the last window is used as drawn
            top = int(torch.randint(0, h - ch + 1, ()))
            left = int(torch.randint(0, w - cw + 1, ()))
            if attempt == tries or self._accept(mask[..., top : top + ch, left : left + cw]):
                break
        return {"top": top, "left": left, "height": ch, "width": cw}

    def _accept(self, crop: torch.Tensor) -> bool:
        counts = torch.bincount(crop.reshape(-1).long(), minlength=self.ignore_index + 1)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class PhotoMetricDistortion(v2.Transform):
    """mmseg's ``PhotoMetricDistortion`` on uint8 images; masks pass through.

    In order, each step with probability 0.5: brightness ``+ U(-delta, delta)``; contrast
    ``* U(contrast_range)`` (here or after hue, by a coin flip); saturation ``* U(range)`` of the
    HSV saturation (hue and value kept); hue ``+ randint(-hue_delta, hue_delta)`` in OpenCV's
    0-180 hue units. Values are clipped to 0-255 and truncated after each step, as mmseg does.

    Args:
        brightness_delta: Largest brightness shift (0-255 units).
        contrast_range: Range of the contrast multiplier.
        saturation_range: Range of the saturation multiplier.
        hue_delta: Largest hue shift in OpenCV units (180 = full turn).
    """

    _transformed_types = (tv_tensors.Image, F.is_pure_tensor)

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _maybe_uniform(lo: float, hi: float) -> float | None:
        if torch.rand(()) < 0.5:
            return None
        return lo + float(torch.rand(())) * (hi - lo)

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        if any(isinstance(x, PIL.Image.Image) for x in flat_inputs):
            raise TypeError(
                "PhotoMetricDistortion needs tensor images; apply v2.PILToTensor() first"
            )

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        d = self.brightness_delta
        params: dict[str, Any] = {"brightness": self._maybe_uniform(-d, d)}
        params["contrast_first"] = bool(torch.randint(0, 2, ()))
        params["contrast"] = self._maybe_uniform(*self.contrast_range)
        params["saturation"] = self._maybe_uniform(*self.saturation_range)
        use_hue = bool(torch.randint(0, 2, ()))
        hue = int(torch.randint(-self.hue_delta, self.hue_delta, ()))
        params["hue"] = hue if use_hue else None
        return params

    @staticmethod
    def _saturate(x: torch.Tensor, alpha: float) -> torch.Tensor:
        """Scale HSV saturation of float RGB ``(..., 3, H, W)`` keeping hue and value."""
        v = x.amax(dim=-3, keepdim=True)  # (..., 1, H, W)
        spread = v - x.amin(dim=-3, keepdim=True)
        # Saturation s = spread / v; each channel is v - s * v * g with g fixed by the hue, so
        # scaling s scales (v - channel); s' is capped at 1, i.e. alpha at v / spread.
        a = torch.clamp(v / spread.clamp_min(1e-6), max=alpha)
        return v - a * (v - x)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.dtype != torch.uint8:
            raise TypeError(f"PhotoMetricDistortion expects a uint8 image, got {inpt.dtype}")
        x = inpt.as_subclass(torch.Tensor).float()
        if params["brightness"] is not None:
            x = (x + params["brightness"]).clamp(0, 255).floor()
        if params["contrast_first"] and params["contrast"] is not None:
            x = (x * params["contrast"]).clamp(0, 255).floor()
        if params["saturation"] is not None:
            x = self._saturate(x, params["saturation"]).clamp(0, 255).floor()
        out = x.to(torch.uint8)
        if params["hue"] is not None:
            out = F.adjust_hue(out, params["hue"] / 180.0)
        if not params["contrast_first"] and params["contrast"] is not None:
            out = (out.float() * params["contrast"]).clamp(0, 255).floor().to(torch.uint8)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class PadToSize(v2.Transform):
    """Pad at the bottom and right up to ``size`` (mmseg's ``Pad(size=crop_size)``).

    Args:
        size: ``(H, W)`` to reach; larger inputs are left unchanged.
        image_fill: Fill of the image (a number or one per channel).
        mask_fill: Fill of the mask (the ignore index).
    """

    def __init__(
        self, size: tuple[int, int], image_fill: float | Sequence[float] = 0, mask_fill: int = 255
    ):
        super().__init__()
        self.size = tuple(size)
        self.image_fill = list(image_fill) if isinstance(image_fill, Sequence) else image_fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(self.size[1] - w, 0), max(self.size[0] - h, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else self.image_fill
        return self._call_kernel(F.pad, inpt, params["padding"], fill=fill)


def build_train_transforms(
    scale: tuple[int, int],
    crop_size: tuple[int, int],
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
    image_fill: float | Sequence[float] = 0,
    photometric: bool = True,
) -> v2.Compose:
    """mmseg's training pipeline: rescale, crop, flip, photometric distortion, pad.

    Args:
        scale: ``(long, short)`` base scale (Cityscapes ``(2048, 1024)``, ADE20K/VOC ``(2048, 512)``).
        crop_size: ``(H, W)`` of the output (e.g. ``(512, 1024)``, ``(512, 512)``).
        ratio_range: Range of the random rescale ratio.
        cat_max_ratio: Largest share of one class in a crop (1.0 disables the check).
        ignore_index: Mask value of unlabelled pixels (not counted; used for padding).
        image_fill: Image padding value (0-255 pixel units).
        photometric: Include the photometric distortion (8-bit RGB only; ``False`` for raw
            images at full precision, whose bands are not colours).

    Returns:
        A callable ``(image, mask) -> (image, mask)`` with outputs of exactly ``crop_size``.
    """
    steps = [
        RandomRescale(scale, ratio_range),
        CatMaxRatioCrop(crop_size, cat_max_ratio, ignore_index),
        v2.RandomHorizontalFlip(p=0.5),
        PhotoMetricDistortion() if photometric else None,
        PadToSize(crop_size, image_fill, ignore_index),
    ]
    return v2.Compose([t for t in steps if t is not None])


def build_eval_transforms(scale: tuple[int, int] | None) -> v2.Transform:
    """mmseg's test pipeline: keep-ratio resize of the image only (the mask keeps its size).

    Args:
        scale: ``(long, short)`` bound, or ``None`` for no resize.

    Returns:
        A callable ``(image, mask) -> (image, mask)``.
    """
    return v2.Identity() if scale is None else KeepRatioResize(scale)


__all__ = [
    "CITYSCAPES_769_SCALE",
    "RECIPES",
    "CatMaxRatioCrop",
    "KeepRatioResize",
    "PadToSize",
    "PhotoMetricDistortion",
    "RandomRescale",
    "build_eval_transforms",
    "build_train_transforms",
    "rescale_size",
]
