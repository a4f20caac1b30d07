"""Evaluate a segmentation model on a dataset as mmsegmentation does: mIoU, mAcc, aAcc.

Predictions are counted at the labels' resolution in one confusion matrix over the whole set
(:class:`~isa_explorer.evaluation.metrics.ConfusionMatrix`: absent classes are left out).

Example:
    >>> from torch.utils.data import DataLoader
    >>> from isa_explorer.data import build_dataset
    >>> data = build_dataset("synthetic-context", None, "val", length=8, size=(128, 256))
    >>> metrics = evaluate(model, DataLoader(data, batch_size=4), data.info.num_classes)
    >>> print(format_table(metrics, data.info.class_names))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from isa_explorer.distributed import world
from isa_explorer.evaluation.inference import SLIDE_CROP, SLIDE_STRIDE, Mode, scores_at
from isa_explorer.evaluation.metrics import ConfusionMatrix


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    mode: Mode = "whole",
    crop_size: tuple[int, int] = SLIDE_CROP,
    stride: tuple[int, int] = SLIDE_STRIDE,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    ignore_index: int = 255,
    class_names: Sequence[str] | None = None,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Segmentation metrics of a model over a loader (summed over processes when distributed).

    Args:
        model: Normalised images -> logits at the input size; put in eval mode on ``device``.
        loader: Yields ``(images, masks)``: uint8 ``(B, 3, H, W)`` 0-255 RGB and int
            ``(B, H', W')`` labels (``ignore_index`` = unlabelled). The labels may be larger or
            smaller than the images (eval transforms resize the image only).
        num_classes: Number of classes ``K``.
        mode: ``"whole"`` or ``"slide"`` inference (see :func:`inference`).
        crop_size: Sliding window ``(H, W)``.
        stride: Sliding window step ``(H, W)``.
        scales: Test scales relative to the image size (:data:`MS_SCALES` for mmseg's ms test).
        flip: Add horizontally flipped images (averaging softmax over all augmentations).
        device: Where to run the model.
        progress: Show a tqdm progress bar (on the first process only).
        ignore_index: Label value of unlabelled pixels.
        class_names: Names of the classes, returned under ``"class_names"`` (default: ids).
        normalize: uint8-valued float images -> model input (default: ``model.normalize``).

    Returns:
        ``ConfusionMatrix.compute()``'s ``mIoU, mAcc, aAcc, IoU, Acc`` plus ``class_names``
        and ``num_images`` (over all processes).

    Raises:
        ValueError: No ``normalize`` and the model has none, or a label/class-count mismatch.
    """
    normalize = normalize if normalize is not None else getattr(model, "normalize", None)
    if normalize is None:
        raise ValueError(
            f"{type(model).__name__} has no normalize(); pass normalize=<0-255 images -> input>"
        )
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    model.eval().to(device)
    matrix = ConfusionMatrix(num_classes, ignore_index)
    rank, world_size = world()
    n_images = torch.zeros((), dtype=torch.int64)
    bar = tqdm(loader, desc="evaluate", unit="batch", disable=not progress or rank != 0)
    for images, masks in bar:
        images = images.as_subclass(torch.Tensor).to(device)
        masks = masks.as_subclass(torch.Tensor).to(device)
        if images.ndim == 3:  # a single image (3, H, W)
            images, masks = images[None], masks[None]
        masks = masks.reshape(masks.shape[0], *masks.shape[-2:])  # (B, H', W')
        x = normalize(images.float())
        out_size = tuple(masks.shape[-2:])
        scores = scores_at(model, x, out_size, mode, crop_size, stride, scales, flip, num_classes)
        matrix.update(scores.argmax(dim=1), masks)
        n_images += images.shape[0]
        if not bar.disable:
            bar.set_postfix(mIoU=f"{100 * matrix.compute()['mIoU']:.2f}")
    bar.close()
    matrix.reduce_from_all_processes()
    if world_size > 1:
        n_images = n_images.to(matrix.mat.device)
        torch.distributed.all_reduce(n_images)
    metrics = matrix.compute()
    metrics["class_names"] = list(class_names or map(str, range(num_classes)))
    metrics["num_images"] = int(n_images)
    return metrics


__all__ = ["evaluate"]
