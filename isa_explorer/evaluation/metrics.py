"""Segmentation metrics from a confusion matrix: IoU, accuracy, their means, a per-class table."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """Pixel confusion matrix ``(K, K)``: rows ground truth, columns prediction (as mmseg).

    Args:
        num_classes: Number of classes ``K``.
        ignore_index: Ground-truth value of pixels that are skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget all counted pixels."""
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of one batch.

        Args:
            pred: Predicted class ids, any integer shape.
            target: Ground-truth class ids of the same shape; ``ignore_index`` pixels are skipped.

        Raises:
            ValueError: Shapes differ, or ids outside ``0..K-1`` (besides ``ignore_index``).
        """
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in "
                "shape; resize the logits to the mask size before argmax"
            )
        k = self.num_classes
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        for name, ids in (("target", target), ("prediction", pred)):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= k):
                raise ValueError(
                    f"{name} holds class ids {int(ids.min())}..{int(ids.max())} outside 0..{k - 1} "
                    f"(ignore_index {self.ignore_index}); check num_classes and the label mapping"
                )
        if self.mat.device != pred.device:
            self.mat = self.mat.to(pred.device)
        self.mat += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices of all processes (when ``torch.distributed`` is initialised)."""
        if dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl" and self.mat.device.type != "cuda":
                self.mat = self.mat.cuda()
            dist.all_reduce(self.mat)

    def compute(self) -> dict:
        """Metrics of the counted pixels.

        Returns:
            ``{"mIoU", "mAcc", "aAcc"}`` floats in ``0..1`` (means over the classes present in the
            ground truth or the prediction; ``nan`` when nothing was counted) and
            ``{"IoU", "Acc"}`` lists per class (``nan`` where a class is absent: from both ground
            truth and prediction for IoU, from the ground truth for Acc).
        """
        mat = self.mat.double().cpu()
        tp = mat.diag()
        gt, pred = mat.sum(1), mat.sum(0)
        union = gt + pred - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.nan)
        total = float(gt.sum())
        return {
            "mIoU": float(iou.nanmean()),
            "mAcc": float(acc.nanmean()),
            "aAcc": float(tp.sum() / total) if total else math.nan,
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
        }


def format_table(metrics: dict, class_names: Sequence[str] | None = None) -> str:
    """Per-class IoU/Acc table (percent) followed by mIoU, mAcc and aAcc.

    Args:
        metrics: A dict with ``"IoU"``, ``"Acc"``, ``"mIoU"``, ``"mAcc"``, ``"aAcc"``.
        class_names: Names of the classes (default: their ids).

    Returns:
        The table as text; absent classes show ``-``.
    """
    ious, accs = metrics["IoU"], metrics["Acc"]
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(ious))]
    if len(names) != len(ious):
        raise ValueError(f"{len(names)} class names for {len(ious)} classes")

    def pct(v: float | None) -> str:
        return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}"

    width = max(len("Class"), *(len(n) for n in names))
    rule = "+" + "-" * (width + 2) + "+--------+--------+"
    lines = [rule, f"| {'Class':<{width}} |    IoU |    Acc |", rule]
    lines += [
        f"| {n:<{width}} | {pct(i):>6} | {pct(a):>6} |"
        for n, i, a in zip(names, ious, accs, strict=True)
    ]
    means = "  ".join(f"{key} {pct(metrics[key])}" for key in ("mIoU", "mAcc", "aAcc"))
    return "\n".join([*lines, rule, means])
