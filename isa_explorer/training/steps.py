"""Pieces of a training iteration: the loss, the poly schedule and the forward wrapper."""

from __future__ import annotations

from collections.abc import Callable, Mapping

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


def trained_parameters(model: nn.Module, cfg: TrainConfig) -> list[nn.Parameter]:
    """The parameters the optimiser updates: all, or the head's with ``cfg.freeze_encoder``
    (the encoder's are then frozen here, so autograd keeps nothing of the encoder)."""
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: nn.Module, cfg: TrainConfig) -> None:
    """Put ``model`` in training mode, its encoder in eval mode if ``cfg.freeze_encoder``."""
    model.train()
    if cfg.freeze_encoder:
        model.encoder.eval()


class TrainForward(nn.Module):
    """``model.forward_train`` as ``forward``, so DDP and ``torch.compile`` wrap the train pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_train(x)


def segmentation_loss(
    outputs: dict[str, torch.Tensor], target: torch.Tensor, weights: Mapping, ignore_index: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the cross-entropies of the model's training outputs.

    As mmseg's ``CrossEntropyLoss`` (``avg_non_ignore=False``): summed over labelled pixels and
    divided by all pixels, so a crop with no label gives 0, not nan.

    Args:
        outputs: ``{"out": (B, K, H, W), ...}`` logits (``model.forward_train``).
        target: ``(B, H, W)`` class ids with ``ignore_index``.
        weights: Loss weight of each output (:func:`loss_weights`).
        ignore_index: Unlabelled value.

    Returns:
        ``(total, parts)``: the unweighted parts by output, ``"out"`` logged as ``"main"``.
    """
    total, parts = 0.0, {}
    for key, logits in outputs.items():
        ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
        if key not in weights:
            raise KeyError(f"no loss weight for the output {key!r}: add it to loss_weights")
        part = parts["main" if key == "out" else key] = ce / target.numel()
        total = total + weights[key] * part
    return total, parts


def loss_weights(model: nn.Module, aux_weight: float) -> dict[str, float]:
    """The loss weight of each training output of ``model``: its head's
    (:attr:`~isa_explorer.heads.protocol.Head.loss_weights`) and ``aux_weight`` for ``"aux"``."""
    return {**type(model.decoder).loss_weights, "aux": aux_weight}


def poly_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """``LambdaLR`` factor of mmseg's ``PolyLR``: ``(lr - min_lr)(1 - t/T)^p + min_lr``."""
    base, low, total, power = cfg.lr, cfg.min_lr, cfg.iters, cfg.poly_power

    def factor(step: int) -> float:
        progress = min(step, total) / total
        return ((base - low) * (1 - progress) ** power + low) / base

    return factor


#: Config keys that may change when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = frozenset(
    {"workers", "data_root", "compile", "checkpoint_attention"}  # how it runs
    | {"log_interval", "eval_interval", "ckpt_interval"}  # what it records, and when
)


def check_resume_config(saved: dict, current: dict) -> None:
    """Raise ``ValueError`` if a resumed run's config changes something that matters.

    A key the saved config lacks (a run of an earlier version) counts as its default value.
    """
    saved = TrainConfig.from_dict(saved).to_dict()
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
