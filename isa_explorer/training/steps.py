"""Pieces of a training iteration: the loss, the poly schedule and the forward wrapper."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from isa_explorer.configs import TrainConfig


class NonFiniteLossError(RuntimeError):
    """The loss (or the weights) became nan/inf; the last good checkpoint is left as it was.

    Attributes:
        iteration: The iteration where it happened.
        checkpoint: Path of the last good checkpoint, or ``None`` if none was written.
    """

    def __init__(self, message: str, iteration: int, checkpoint: str | None):
        super().__init__(message)
        self.iteration, self.checkpoint = iteration, checkpoint


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: ``None`` without ``amp``, else bfloat16 (on the CPU too),
    or float16 on a CUDA device without bf16 (trained with loss scaling)."""
    if not cfg.amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


class TrainForward(nn.Module):
    """``model.forward_train`` as ``forward``, so DDP and ``torch.compile`` wrap the train pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_train(x)


def segmentation_loss(
    outputs: dict[str, torch.Tensor], target: torch.Tensor, aux_weight: float, ignore_index: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of the main head plus ``aux_weight`` times that of the auxiliary head.

    As mmseg's ``CrossEntropyLoss`` (``avg_non_ignore=False``): summed over labelled pixels and
    divided by all pixels, so a crop with no label gives 0, not nan.

    Args:
        outputs: ``{"out": (B, K, H, W), "aux": (B, K, H, W) (optional)}`` logits.
        target: ``(B, H, W)`` class ids with ``ignore_index``.
        aux_weight: Weight of the auxiliary loss.
        ignore_index: Unlabelled value.

    Returns:
        ``(total, {"main": ..., "aux": ...})``.
    """
    parts = {}
    for key, logits in outputs.items():
        ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
        parts["main" if key == "out" else key] = ce / target.numel()
    total = parts["main"]
    if "aux" in parts:
        total = total + aux_weight * parts["aux"]
    return total, parts


def poly_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """``LambdaLR`` factor of mmseg's ``PolyLR``: ``(lr - min_lr)(1 - t/T)^p + min_lr``."""
    base, low, total, power = cfg.lr, cfg.min_lr, cfg.iters, cfg.poly_power

    def factor(step: int) -> float:
        progress = min(step, total) / total
        return ((base - low) * (1 - progress) ** power + low) / base

    return factor


#: Config keys that may change when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = frozenset(
    {
        "workers",
        "log_interval",
        "eval_interval",
        "ckpt_interval",
        "data_root",
        "compile",
        "checkpoint_attention",
    }
)


def check_resume_config(saved: dict, current: dict) -> None:
    """Raise ``ValueError`` if a resumed run's config changes something that matters."""
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    bad = [k for k in changed if k not in RESUMABLE_CHANGES]
    if bad:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in bad)
        raise ValueError(
            f"the config differs from the checkpoint's in {details}. Resume with the run's own "
            "config (train/fit.py --resume --run-dir DIR, without --config) or start a new run "
            f"directory; only {sorted(RESUMABLE_CHANGES)} may change on resume"
        )


def all_finite(model: nn.Module) -> bool:
    """True if every parameter and buffer of ``model`` is finite."""
    tensors = [*model.parameters(), *model.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
