"""Training configurations: the published mmsegmentation ISANet recipes and the synthetic one.

``CONFIGS`` holds every ISANet run of mmsegmentation's model zoo (Cityscapes, ADE20K and PASCAL
VOC 2012 aug with R-50-D8 / R-101-D8) under mmseg's names, ``"synthetic-context"`` (the small
CPU recipe of the embedded default model) and ``"folder"``. :func:`get_config` returns a copy
with ``key=value`` overrides applied (the dataclasses: :mod:`isa_explorer.train_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from isa_explorer.evaluation.inference import SLIDE_CROP
from isa_explorer.train_config import (
    _FLAT_EVAL,
    MODEL_KEYS,
    EvalConfig,
    TrainConfig,
    check_model_kwargs,
)

# The published recipes ------------------------------------------------------------------------

_DATASETS = {
    # dataset: (classes, batch per GPU, base scale (H, W))
    "cityscapes": (19, 2, (1024, 2048)),
    "ade20k": (150, 4, (512, 2048)),
    "voc": (21, 4, (512, 2048)),
}
_MMSEG_DATASET_NAME = {"cityscapes": "cityscapes", "ade20k": "ade20k", "voc": "voc12aug"}
_SCHEDULES = {
    "cityscapes": (((512, 1024), (40_000, 80_000)), ((769, 769), (40_000, 80_000))),
    "ade20k": (((512, 512), (80_000, 160_000)),),
    "voc": (((512, 512), (20_000, 40_000)),),
}
_ENCODERS = {"r50": "tu-resnet50c", "r101": "tu-resnet101c"}


def _published(dataset: str, depth: str, crop: tuple[int, int], iters: int) -> TrainConfig:
    classes, batch, scale = _DATASETS[dataset]
    slide = crop == SLIDE_CROP  # mmseg tests its 769x769 models with that window
    name = (
        f"isanet_{depth}-d8_4xb{batch}-{iters // 1000}k_"
        f"{_MMSEG_DATASET_NAME[dataset]}-{crop[0]}x{crop[1]}"
    )
    return TrainConfig(
        name=name,
        dataset=dataset,
        train_split="train_aug" if dataset == "voc" else "train",
        scale=scale,
        crop_size=crop,
        model=dict(
            encoder_name=_ENCODERS[depth],
            encoder_weights="imagenet",
            encoder_output_stride=8,
            classes=classes,
            decoder_channels=512,
            decoder_isa_channels=256,
            decoder_down_factor=[8, 8],
            decoder_dropout=0.1,
            head="isa",
            aux_head=True,
            aux_channels=256,
            align_corners=slide,  # mmseg's 769x769 Cityscapes models use align_corners=True
        ),
        iters=iters,
        batch_size=batch,
        lr=0.01,  # SGD momentum, weight decay, poly schedule, aux weight, seed: the defaults
        eval_interval=iters // 10,  # mmseg: 2k, 4k, 8k, 16k
        ckpt_interval=2000,
        log_interval=50,
        evaluation=EvalConfig(mode="slide" if slide else "whole"),
        amp=True,
        channels_last=True,
        workers=4,
    )


def _build_configs() -> dict[str, TrainConfig]:
    configs: dict[str, TrainConfig] = {}
    for dataset, schedules in _SCHEDULES.items():
        for depth in _ENCODERS:
            for crop, iter_list in schedules:
                for iters in iter_list:
                    cfg = _published(dataset, depth, crop, iters)
                    configs[cfg.name] = cfg
    configs["synthetic-context"] = TrainConfig(
        name="synthetic-context",
        dataset="synthetic-context",
        model=dict(
            encoder_name="tu-resnet10t",
            encoder_weights=None,
            encoder_output_stride=8,
            classes=7,
            decoder_channels=128,
            decoder_isa_channels=64,
            head="isa",
            aux_head=False,
        ),
        iters=500,
        batch_size=8,
        lr=0.05,
        eval_interval=100,
        ckpt_interval=50,
        log_interval=10,
    )
    # Your own data: the ADE20K R-50-D8 recipe (pipeline, model, optimiser) from random weights
    # (nothing is downloaded unless --encoder-weights says so), classes from the data, scale
    # following crop_size (4x its long side), a shorter schedule.
    ade = _published("ade20k", "r50", (512, 512), 80_000)
    model = {k: v for k, v in ade.model.items() if k != "classes"}
    configs["folder"] = dataclasses.replace(
        ade,
        name="folder",
        dataset="folder",
        train_split="train",
        scale=None,
        model={**model, "encoder_weights": None},
        iters=20_000,
        eval_interval=2000,
        ckpt_interval=1000,
    )
    return configs


#: Every published ISANet recipe (mmseg's names), ``"synthetic-context"`` and ``"folder"``.
CONFIGS: dict[str, TrainConfig] = _build_configs()


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """A copy of ``cfg`` with ``"key=value"`` / ``"model.key=value"`` overrides applied.

    Values are parsed as JSON when possible (``3``, ``0.02``, ``true``, ``[96,192]``), ``none``
    or ``null`` is ``None``, anything else stays a string.

    Raises:
        ValueError: An override without ``=`` or naming an unknown key.
    """
    data = cfg.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value (e.g. iters=2000)")
        text = text.strip()
        try:
            value = None if text.lower() in ("none", "null") else json.loads(text)
        except json.JSONDecodeError:
            value = text
        if key in _FLAT_EVAL:  # the flat names of older configs
            key = f"evaluation.{_FLAT_EVAL[key]}"
        head, dot, sub = key.partition(".")
        if head not in data:
            raise ValueError(f"unknown config key {head!r} in {item!r}; known: {', '.join(data)}")
        if dot:
            if not isinstance(data[head], dict):
                raise ValueError(f"{head!r} is not a dict; set it as {head}=value")
            data[head][sub] = value
        else:
            data[head] = value
    return TrainConfig.from_dict(data)


def get_config(name: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """A fresh copy of a named config (or of a saved ``config.json``) with overrides applied.

    Args:
        name: A key of :data:`CONFIGS`, or the path of a JSON config (e.g. a run's
            ``config.json``, which reproduces that run).
        overrides: ``"key=value"`` or ``"model.key=value"`` strings.

    Raises:
        KeyError: Unknown name that is not a JSON file either.
    """
    if name in CONFIGS:
        cfg = copy.deepcopy(CONFIGS[name])
    elif name.endswith(".json") or Path(name).is_file():
        cfg = TrainConfig.load(name)
    else:
        raise KeyError(f"unknown config {name!r}; give a JSON file or one of: {', '.join(CONFIGS)}")
    return apply_overrides(cfg, overrides)


__all__ = [
    "CONFIGS",
    "folder_scale",
    "MODEL_KEYS",
    "EvalConfig",
    "TrainConfig",
    "apply_overrides",
    "check_model_kwargs",
    "get_config",
]


def folder_scale(cfg: TrainConfig) -> tuple[int, int]:
    """The rescale bound of a folder run: ``scale``, else ``(4 * long crop side, short side)``
    (the ADE20K recipe's ratio of scale to crop)."""
    if cfg.scale is not None:
        return cfg.scale
    crop = cfg.crop_size or (512, 512)
    return (4 * max(crop), min(crop))
