"""Run logging: a log file plus tqdm-friendly console output, and TensorBoard images."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from isa_explorer.images import bands_to_rgb8
from isa_explorer.palette import colourise

LOGGER_NAME = "isa_explorer.training"


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints above an active tqdm bar instead of breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never kill a run
            self.handleError(record)


def open_logger(run_dir: Path, enabled: bool) -> logging.Logger:
    """The run's logger: ``run_dir/log.txt`` (appended) and the console; silent if not enabled."""
    logger = logging.getLogger(LOGGER_NAME)
    close_logger(logger)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if enabled:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        for handler in (logging.FileHandler(run_dir / "log.txt"), _TqdmHandler()):
            handler.setFormatter(fmt)
            logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())
    return logger


def close_logger(logger: logging.Logger) -> None:
    """Detach and close the logger's handlers (the log file)."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@torch.inference_mode()
def prediction_grid(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    palette: Sequence[Sequence[int]],
    device: torch.device,
    max_images: int = 4,
    display_height: int = 256,
) -> torch.Tensor:
    """Rows of image | ground truth | prediction, uint8 ``(3, H', W')`` for TensorBoard.

    Args:
        model: ISANet (eval mode is set here).
        images: uint8 ``(B, 3, H, W)``, or raw bands ``(B, C, H, W)`` (shown stretched).
        masks: ``(B, H, W)`` class ids at the image size.
        palette: RGB colour per class.
        device: Where to run the model.
        max_images: Rows shown.
        display_height: Tiles taller than this are shrunk to it.
    """
    images = images[:max_images].as_subclass(torch.Tensor)
    masks = masks[:max_images].as_subclass(torch.Tensor).reshape(-1, *masks.shape[-2:])
    if masks.shape[-2:] != images.shape[-2:]:  # eval transforms resize the image only
        masks = F.interpolate(masks[:, None].float(), images.shape[-2:], mode="nearest")[:, 0]
    model.eval()
    x = model.normalize(images.to(device).float())
    pred = model.predict(x).argmax(1).cpu()  # (B, K, H, W) -> (B, H, W)
    tiles = []
    for img, gt, pr in zip(images, masks, pred, strict=True):
        if img.shape[0] != 3 or img.dtype != torch.uint8:  # raw bands: a stretched view
            img = torch.from_numpy(bands_to_rgb8(img.cpu().float().numpy())).permute(2, 0, 1)
        tiles += [img.cpu(), colourise(gt, palette), colourise(pr, palette)]
    grid = torch.stack(tiles)  # (3B, 3, H, W)
    if grid.shape[-2] > display_height:
        width = round(grid.shape[-1] * display_height / grid.shape[-2])
        grid = F.interpolate(grid, (display_height, width), mode="nearest")
    return make_grid(grid, nrow=3, padding=2)


def jsonable(value: Any) -> Any:
    """``value`` with nan/inf floats as ``None`` (strict JSON, as ``metrics.json`` is)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
