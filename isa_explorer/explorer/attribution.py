"""Attribution maps with captum: which pixels made the model predict a class?

Both methods are bounded in cost so a click stays interactive on a CPU: ``"LayerGradCam"`` on
the decoder's last feature layer (``out_conv``'s batch norm, before its ReLU), one forward and
backward pass at most :data:`GRADCAM_MAX_SIDE` pixels; ``"IntegratedGradients"`` on the input
pixels from a black baseline, at most :data:`IG_MAX_STEPS` passes in batches of
:data:`IG_BATCH` at most :data:`IG_MAX_SIDE` pixels. The target is a class, scored by its mean
logit over the pixels predicted as it (all pixels if none), or the logit of one pixel.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
from PIL import Image
from torch import nn

from isa_explorer.explorer import render
from isa_explorer.explorer.service import Explorer, ExplorerError
from isa_explorer.models.isanet import ISANet
from isa_explorer.models.layers import ConvBNReLU

METHODS = ("LayerGradCam", "IntegratedGradients")
#: Longest side the image is resized to for Grad-CAM.
GRADCAM_MAX_SIDE = 512
#: Longest side the image is resized to for Integrated Gradients.
IG_MAX_SIDE = 256
#: Most interpolation steps of Integrated Gradients, and images per batch.
IG_MAX_STEPS = 32
IG_BATCH = 4


@dataclass
class Attribution:
    """An attribution map.

    Attributes:
        heat: ``(h, w)`` float32 map in ``[0, 1]`` at the resolution it was computed at.
        size: ``(h, w)`` the image was resized to for the computation.
        method: ``"LayerGradCam"`` or ``"IntegratedGradients"``.
        target: Class id explained.
        pixel: Pixel ``(x, y)`` (image coordinates) explained, or ``None`` for the class.
        seconds: Time taken.
        note: How the target was scored, for the user.
    """

    heat: np.ndarray
    size: tuple[int, int]
    method: str
    target: int
    pixel: tuple[int, int] | None
    seconds: float
    note: str


def feature_layer(model: ISANet) -> nn.Module:
    """The decoder's last feature layer: ``out_conv.bn``, else its last batch norm (in a
    model fused for inference, the ``nn.Identity`` in its place: the same output)."""
    out_conv = getattr(model.decoder, "out_conv", None)
    if out_conv is not None and hasattr(out_conv, "bn"):
        return out_conv.bn
    layers = [m for m in model.decoder.modules() if isinstance(m, ConvBNReLU)]
    if not layers:
        raise ValueError("the model's decoder has no batch-norm layer to attribute to")
    return layers[-1].bn


def attribute(
    model: ISANet,
    rgb: np.ndarray,
    labels: np.ndarray,
    target: int,
    pixel: tuple[int, int] | None = None,
    method: str = "LayerGradCam",
    n_steps: int = 8,
    region: np.ndarray | None = None,
) -> Attribution:
    """Attribute class ``target`` of an image with captum (the app's and notebook 3's one core).

    Args:
        model: The model (eval mode; plain or fused for inference).
        rgb: ``(H, W, 3)`` uint8 image.
        labels: ``(H, W)`` predicted classes of the image (they pick the scored pixels).
        target: Class id to explain.
        pixel: Explain the logit of this pixel ``(x, y)`` instead of the class over its region.
        method: ``"LayerGradCam"`` or ``"IntegratedGradients"``.
        n_steps: Integrated Gradients steps (clamped to ``1..IG_MAX_STEPS``).
        region: ``(H, W)`` bool: score the class over these pixels instead of those predicted
            as it (e.g. one object).

    Returns:
        The attribution map at the (bounded) resolution it was computed at.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0 <= target < model.classes:
        raise ValueError(f"class {target} is not in 0..{model.classes - 1}")
    start = time.perf_counter()
    H, W = rgb.shape[:2]
    small, side = rgb, GRADCAM_MAX_SIDE if method == "LayerGradCam" else IG_MAX_SIDE
    if (s := side / max(H, W)) < 1:  # the longest side down to `side`, aspect kept
        size = (max(8, round(W * s)), max(8, round(H * s)))
        small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    h, w = small.shape[:2]
    device = next(model.parameters()).device
    image = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)))[None].to(device)
    x = model.normalize(image.float())  # (1, 3, h, w)
    if pixel is not None:
        px, py = min(int(pixel[0] * w / W), w - 1), min(int(pixel[1] * h / H), h - 1)
        note = f"logit of class {target} at pixel ({pixel[0]}, {pixel[1]})"

        def score(inp: torch.Tensor) -> torch.Tensor:  # (B, 3, h, w) -> (B, K)
            return model(inp)[:, :, py, px]
    else:
        chosen = labels == target if region is None else np.asarray(region, dtype=bool)
        lab = Image.fromarray(chosen.astype(np.uint8))
        mask = torch.from_numpy(np.asarray(lab.resize((w, h), Image.Resampling.NEAREST)) > 0)
        where = "the pixels predicted as it" if region is None else "the given region"
        note = f"mean logit of class {target} over {where}"
        if not mask.any():
            mask = torch.ones(h, w, dtype=torch.bool)
            note = f"mean logit of class {target} over the whole image (no pixel predicted as it)"
        weight = (mask.float() / mask.sum()).to(device)

        def score(inp: torch.Tensor) -> torch.Tensor:  # (B, 3, h, w) -> (B, K)
            return (model(inp) * weight).sum((2, 3))

    with torch.enable_grad():
        if method == "LayerGradCam":
            cam = LayerGradCam(score, feature_layer(model))
            attr = cam.attribute(x, target=target, relu_attributions=True)  # (1, 1, hf, wf)
            heat = LayerAttribution.interpolate(attr, (h, w), "bilinear")[0, 0]
        else:
            steps = int(np.clip(n_steps, 1, IG_MAX_STEPS))
            ig = IntegratedGradients(score)
            black = model.normalize(torch.zeros_like(image, dtype=torch.float32))
            attr = ig.attribute(
                x, black, target=target, n_steps=steps, internal_batch_size=IG_BATCH
            )  # (1, 3, h, w)
            heat = attr[0].abs().sum(0)
            heat = F.avg_pool2d(heat[None, None], 5, 1, 2)[0, 0]  # light smoothing
            note += f", n_steps={steps}"
    heat = heat.detach().float().cpu().numpy()
    top = float(np.percentile(heat, 99.5)) if method != "LayerGradCam" else float(heat.max())
    heat = np.clip(heat / top, 0, 1) if top > 0 else np.zeros_like(heat)
    pixel = None if pixel is None else (int(pixel[0]), int(pixel[1]))
    seconds = time.perf_counter() - start
    return Attribution(heat.astype(np.float32), (h, w), method, int(target), pixel, seconds, note)


#: Target choice meaning "the predicted class of the clicked pixel, at that pixel".
CLICKED_PIXEL = "predicted class at the clicked pixel"


def explain(
    explorer: Explorer,
    key: str,
    target: str = CLICKED_PIXEL,
    method: str = "LayerGradCam",
    n_steps: int = 8,
    opacity: float = 0.6,
) -> tuple[np.ndarray, str]:
    """Attribution of the session's image, drawn over it at display size.

    Args:
        explorer: The explorer holding the session's image.
        key: Session key.
        target: :data:`CLICKED_PIXEL` or a class name (scored over its predicted pixels).
        method: One of :data:`METHODS`.
        n_steps: Integrated Gradients steps.
        opacity: Heat map opacity.

    Returns:
        ``(panel (dh, dw, 3) uint8, markdown description)``.
    """
    state = explorer.state(key)
    names = explorer.model.class_names
    if target == CLICKED_PIXEL:
        if state.query is None:
            raise ExplorerError(
                "no pixel clicked yet: click the prediction in the Explore tab, or pick a class"
            )
        x, y = state.query
        cls, pixel = int(state.labels[y, x]), (x, y)
    elif target in names:
        cls, pixel = names.index(target), None
    else:
        raise ExplorerError(f"unknown target {target!r}: pick {CLICKED_PIXEL!r} or a class name")
    if method not in METHODS:
        raise ExplorerError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    # captum registers hooks on the layer it explains: each request gets its own copy of the
    # model, so concurrent requests never see each other's hooks (the model is never locked).
    model = copy.deepcopy(explorer.model.model)
    result = attribute(model, state.rgb, state.labels, cls, pixel, method, n_steps)
    d = explorer.display(state)
    panel = render.heat_overlay(explorer._view(state, "rgb"), result.heat, opacity)
    if pixel is not None:
        panel = render.mark_query(panel, *pixel, d)
    h, w = result.size
    text = (
        f"**{method}** for **{names[cls]}** ({result.note}); computed at {w}x{h} pixels "
        f"in {result.seconds:.1f} s. Brighter = more evidence for the class."
    )
    return np.asarray(panel), text
