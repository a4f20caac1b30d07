"""Sizes and cases of the GPU check (``run.py``): the full run and ``--smoke``.

A :class:`Plan` holds every size the sections use; :func:`full_plan` is the published setting
(R-50-D8, 512x1024 training crops, 1024x2048 images, 64x128 to 256x512 feature maps) and
:func:`smoke_plan` the same code at sizes a 2-core CPU runs in about a minute. A :class:`Case`
is one measurement, run and recorded on its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

#: The published recipe the training section runs.
RECIPE = "isanet_r50-d8_4xb2-40k_cityscapes-512x1024"
#: What a smoke run changes in the recipe: a ResNet-18 ISANet with a small head, tiny crops.
SMOKE_MODEL = (
    "model.encoder_name=resnet18",
    "model.decoder_channels=32",
    "model.decoder_isa_channels=16",
    "model.aux_channels=16",
)


@dataclass(frozen=True)
class Plan:
    """Every size of one GPU-check run.

    Attributes:
        smoke: The tiny CPU rehearsal (targets are not judged).
        device: ``"cuda"`` or ``"cpu"``.
        compile: Run the ``torch.compile`` cases.
        model_overrides: ``model.key=value`` overrides of :data:`RECIPE`.
        scale: ``(H, W)`` base scale of the training rescale; ``crop``: the training crop.
        train_iters: Iterations per training case (the trainer leaves the first
            ``min(5, iters // 4)`` out of ``sec_per_iter``).
        train_data: ``(H, W)`` of the generated Cityscapes scenes; ``train_scenes``,
            ``val_scenes``: how many per split.
        workers: DataLoader workers of a training case.
        image: ``(H, W)`` of whole-image inference.
        runs, warmup: Timed and untimed calls per measurement.
        features: Feature-map sizes of the head benchmarks.
        target_feature: The size the attention target is judged at.
        channels, isa_channels: Of the attention-module benchmark.
        head: The decoder of the head benchmarks: ``in_channels``, ``classes``, ``channels``,
            ``key_channels`` (:func:`isa_explorer.bench.decoder.head_config`; ``None``: the
            published one).
        budget_feature: Feature map of the token-budget sweep; ``budgets``: its budgets.
        bn_shape: ``(B, C, H, W)`` of the SyncBatchNorm check.
        recompile_sizes: Feature sizes fed in turn to the compiled decoder.
        compile_skip: Compiled cases a smoke run leaves out, with the reason.
    """

    smoke: bool
    device: str
    compile: bool
    model_overrides: tuple[str, ...]
    scale: tuple[int, int]
    crop: tuple[int, int]
    train_iters: int
    train_data: tuple[int, int]
    train_scenes: int
    val_scenes: int
    workers: int
    image: tuple[int, int]
    runs: int
    warmup: int
    features: tuple[tuple[int, int], ...]
    target_feature: tuple[int, int]
    channels: int
    isa_channels: int
    head: dict[str, int] | None
    budget_feature: tuple[int, int]
    budgets: tuple[int, ...]
    bn_shape: tuple[int, int, int, int]
    recompile_sizes: tuple[tuple[int, int], ...]
    compile_skip: dict[str, str] = field(default_factory=dict)


def full_plan(device: str = "cuda", compile: bool = True) -> Plan:
    """The published sizes, for one GPU."""
    return Plan(
        smoke=False,
        device=device,
        compile=compile,
        model_overrides=(),
        scale=(1024, 2048),
        crop=(512, 1024),
        train_iters=12,
        train_data=(1024, 2048),
        train_scenes=4,
        val_scenes=1,
        workers=max(2, min(8, (os.cpu_count() or 4) // 2)),
        image=(1024, 2048),
        runs=10,
        warmup=3,
        features=((64, 128), (128, 256), (256, 512)),
        target_feature=(128, 256),
        channels=512,
        isa_channels=256,
        head=None,
        budget_feature=(256, 512),
        budgets=(16384, 65536, 256 * 512),
        bn_shape=(2, 512, 64, 128),
        recompile_sizes=((64, 128), (60, 124), (56, 120), (52, 116)),
    )


#: Why a smoke run leaves compiled cases out: on 2 CPU cores inductor's C++ build of the
#: training graph of the smoke's ResNet-18 ISANet took 83 s (measured), of an inference graph
#: 20 s; the smoke must end within 2 minutes. ``tests/test_gpu_path.py`` compiles training
#: through ``train()`` on a smaller model instead.
SMOKE_TRAIN_COMPILE_SKIP = (
    "smoke: inductor builds the training graph in ~80 s on 2 CPU cores (measured), more than "
    "the smoke's 2 minutes allow; tests/test_gpu_path.py compiles train() on a smaller model"
)
SMOKE_INFERENCE_COMPILE_SKIP = "smoke: one compiled inference case (~20 s on 2 CPU cores)"


def smoke_plan(compile: bool = True) -> Plan:
    """The same sections at tiny sizes on the CPU (a rehearsal; about 80 s on 2 cores)."""
    return Plan(
        smoke=True,
        device="cpu",
        compile=compile,
        model_overrides=SMOKE_MODEL,
        scale=(128, 256),
        crop=(64, 128),
        train_iters=4,
        train_data=(128, 256),
        train_scenes=2,
        val_scenes=1,
        workers=0,
        image=(128, 256),
        runs=2,
        warmup=1,
        features=((8, 16), (16, 32)),
        target_feature=(16, 32),
        channels=64,
        isa_channels=32,
        head=dict(in_channels=64, classes=5, channels=32, key_channels=16),
        budget_feature=(32, 64),
        budgets=(256, 1024, 32 * 64),
        bn_shape=(2, 16, 8, 16),
        recompile_sizes=((16, 32), (20, 36), (24, 40), (28, 44)),
        compile_skip={
            "train fused compiled": SMOKE_TRAIN_COMPILE_SKIP,
            "train explicit compiled": SMOKE_TRAIN_COMPILE_SKIP,
            "inference bf16 compiled": SMOKE_INFERENCE_COMPILE_SKIP,
        },
    )


@dataclass
class Case:
    """One measurement of a section.

    Attributes:
        section: The section it belongs to.
        name: Unique name (``"train fused compiled"``).
        run: Returns the case's JSON-ready result.
        estimate_s: Seconds it is expected to take (for the time limit).
        compiled: A ``torch.compile`` case (run after the eager ones).
    """

    section: str
    name: str
    run: Callable[[], dict[str, Any]]
    estimate_s: float = 5.0
    compiled: bool = False


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """The context a case of ``dtype`` (``"bf16"`` or ``"fp32"``) runs in on ``device``."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
