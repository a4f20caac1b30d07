"""Training configurations: the published mmsegmentation recipes and the synthetic one.

``CONFIGS`` holds every released run of mmsegmentation's model zoo for ISANet and the context
heads NL, CC, DA, GC (Cityscapes, ADE20K and PASCAL VOC 2012 aug with R-50-D8 / R-101-D8) and
EMA (Cityscapes, 80k) under mmseg's names (:data:`PUBLISHED` lists them by head),
``"synthetic-context"`` (the small CPU recipe of the embedded default model) and ``"folder"``
(your own data; :func:`folder_config` gives it for any head). :func:`get_config` returns a copy
with ``key=value`` overrides applied (the dataclasses: :mod:`isa_explorer.train_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from isa_explorer import heads
from isa_explorer.data.transforms import CITYSCAPES_769_SCALE, RECIPES
from isa_explorer.evaluation.inference import SLIDE_CROP
from isa_explorer.heads import ema
from isa_explorer.train_config import (
    _FLAT_EVAL,
    MODEL_KEYS,
    EvalConfig,
    TrainConfig,
    check_model_kwargs,
)

# The published recipes ------------------------------------------------------------------------

_DATASETS = {"cityscapes": (19, 2), "ade20k": (150, 4), "voc": (21, 4)}  # classes, batch per GPU
_MMSEG_DATASET_NAME = {"cityscapes": "cityscapes", "ade20k": "ade20k", "voc": "voc12aug"}
_SCHEDULES = {
    "cityscapes": (((512, 1024), (40_000, 80_000)), ((769, 769), (40_000, 80_000))),
    "ade20k": (((512, 512), (80_000, 160_000)),),
    "voc": (((512, 512), (20_000, 40_000)),),
}
_ENCODERS = {"r50": "tu-resnet50c", "r101": "tu-resnet101c"}
#: mmseg's ``cityscapes_769x769.py`` resizes to (2049, 1025), train and test (H, W here).
_SLIDE_SCALE = tuple(sorted(CITYSCAPES_769_SCALE))
#: head -> (mmseg's model name, the config name's prefix; the ``model`` settings of the head in
#: mmseg's ``_base_/models/{name}_r50-d8.py``, beside the common ones of :func:`_published`)
HEAD_RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "isa": ("isanet", {"decoder_isa_channels": 256, "decoder_down_factor": [8, 8]}),
    "nl": ("nonlocal", {"head_options": {"reduction": 2}}),
    "cc": ("ccnet", {"head_options": {"recurrence": 2}}),
    "da": ("danet", {"head_options": {"pam_channels": 64}}),
    "gc": ("gcnet", {"head_options": {"ratio": 0.25}}),
    "ema": ("emanet", {"decoder_channels": 256, "head_options": dict(ema.OPTIONS)}),
}
#: The heads mmseg released on Cityscapes only, 80k iterations only (the others: every schedule).
_CITYSCAPES_80K_ONLY = ("ema",)


def _published(
    dataset: str, depth: str, crop: tuple[int, int], iters: int, head: str = "isa"
) -> TrainConfig:
    classes, batch = _DATASETS[dataset]
    slide = crop == SLIDE_CROP  # mmseg tests its 769x769 models with that window
    # The base scale (H, W) of the training rescale and the test resize.
    scale = _SLIDE_SCALE if slide else tuple(sorted(RECIPES[dataset]["scale"]))
    prefix, settings = HEAD_RECIPES[head]
    name = (
        f"{prefix}_{depth}-d8_4xb{batch}-{iters // 1000}k_"
        f"{_MMSEG_DATASET_NAME[dataset]}-{crop[0]}x{crop[1]}"
    )
    return TrainConfig(
        name=name,
        dataset=dataset,
        train_split="train_aug" if dataset == "voc" else "train",
        scale=scale,
        crop_size=crop,
        model={
            "encoder_name": _ENCODERS[depth],
            "encoder_weights": "imagenet",
            "encoder_output_stride": 8,
            "classes": classes,
            "decoder_channels": 512,
            "decoder_dropout": 0.1,
            "head": head,
            "aux_head": True,
            "aux_channels": 256,
            "align_corners": slide,  # mmseg's 769x769 Cityscapes models use align_corners=True
            **copy.deepcopy(settings),  # the head's own (EMANet: 256 channels)
        },
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
    for head in HEAD_RECIPES:
        only_80k = head in _CITYSCAPES_80K_ONLY
        for dataset, schedules in _SCHEDULES.items():
            if only_80k and dataset != "cityscapes":
                continue
            for depth in _ENCODERS:
                for crop, iter_list in schedules:
                    for iters in (80_000,) if only_80k else iter_list:
                        cfg = _published(dataset, depth, crop, iters, head)
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
    configs["folder"] = folder_config()
    return configs


def folder_config(head: str | None = None) -> TrainConfig:
    """The own-data recipe (``--config folder``; ``--head HEAD`` for another head).

    The ADE20K R-50-D8 recipe of ``head`` (pipeline, optimiser, auxiliary head, the head's
    published settings of :data:`HEAD_RECIPES`; a head without a published recipe gets the
    common settings alone) from the ImageNet encoder, as every published recipe; classes from the
    data, scale following ``crop_size`` (:func:`folder_scale`), 20k iterations.

    Args:
        head: A registered head (:func:`isa_explorer.heads.names`); ``None``: the model's
            default head with ISANet's published settings.

    Returns:
        The config, named ``"folder"`` without a head and ``"folder-HEAD"`` with one (the default
        run directory ``runs/NAME`` keeps the heads' runs apart).

    Raises:
        ValueError: ``head`` is not registered (the message lists the registered ones).
    """
    if head is not None:
        heads.get(head)  # a registered head (else the error lists them)
    ade = _published("ade20k", "r50", (512, 512), 80_000, head if head in HEAD_RECIPES else "isa")
    model = {k: v for k, v in ade.model.items() if k != "classes"}
    if head is not None and head not in HEAD_RECIPES:  # drop ISANet's own settings
        model = {k: v for k, v in model.items() if k not in HEAD_RECIPES["isa"][1]}
    return dataclasses.replace(
        ade,
        name="folder" if head is None else f"folder-{head}",
        dataset="folder",
        train_split="train",
        scale=None,
        model={**model, "head": head or ade.model["head"]},
        iters=20_000,
        eval_interval=2000,
        ckpt_interval=1000,
    )


#: Every published recipe (mmseg's names: 84), ``"synthetic-context"`` and ``"folder"``.
CONFIGS: dict[str, TrainConfig] = _build_configs()
#: head -> the names of its published recipes in :data:`CONFIGS` (mmseg's order).
PUBLISHED: dict[str, list[str]] = {
    head: [name for name in CONFIGS if name.startswith(f"{prefix}_")]
    for head, (prefix, _) in HEAD_RECIPES.items()
}


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """A copy of ``cfg`` with ``"key=value"`` / ``"model.key=value"`` overrides applied.

    Values are parsed as JSON when possible (``3``, ``0.02``, ``true``, ``[96,192]``), ``none``
    or ``null`` is ``None``, ``True``/``False`` in any case are booleans, anything else stays a
    string.

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
            words = {"none": None, "null": None, "true": True, "false": False}
            value = words[text.lower()] if text.lower() in words else json.loads(text)
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
    "HEAD_RECIPES",
    "MODEL_KEYS",
    "PUBLISHED",
    "EvalConfig",
    "TrainConfig",
    "apply_overrides",
    "check_model_kwargs",
    "folder_config",
    "folder_scale",
    "get_config",
]


def folder_scale(cfg: TrainConfig) -> tuple[int, int]:
    """The rescale bound of a folder run: ``scale``, else ``(4 * long crop side, short side)``
    (the ADE20K recipe's ratio of scale to crop)."""
    if cfg.scale is not None:
        return cfg.scale
    crop = cfg.crop_size or (512, 512)
    return (4 * max(crop), min(crop))
