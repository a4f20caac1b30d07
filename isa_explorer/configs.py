"""Training configurations: the published mmsegmentation ISANet recipes and the synthetic one.

``CONFIGS`` holds every ISANet run of mmsegmentation's model zoo (Cityscapes, ADE20K and PASCAL
VOC 2012 aug with R-50-D8 / R-101-D8) under mmseg's names, plus ``"synthetic-context"``, the
small CPU recipe of the embedded default model. :func:`get_config` returns a copy with
``key=value`` overrides applied; :meth:`TrainConfig.save` / :meth:`TrainConfig.load` round-trip
the effective config of a run through JSON.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isa_explorer.data.folder import FolderConfig
from isa_explorer.data.synthetic import SyntheticConfig
from isa_explorer.evaluation.inference import SLIDE_CROP, SLIDE_STRIDE
from isa_explorer.models.isa.model import ISANet

#: Keyword arguments of ISANet a config's ``model`` may set (its ``__init__`` parameters).
MODEL_KEYS = tuple(
    name
    for name, p in inspect.signature(ISANet.__init__).parameters.items()
    if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
)


def check_model_kwargs(model: dict[str, Any]) -> None:
    """Refuse ``model`` keys that are not ISANet arguments, naming the valid ones.

    Raises:
        ValueError: A misspelt or unknown key (with the closest valid name, if any).
    """
    for key in model:
        if key not in MODEL_KEYS:
            close = difflib.get_close_matches(key, MODEL_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown model key {key!r}{hint}; valid: {', '.join(MODEL_KEYS)}")


#: Fields holding ``(H, W)`` pairs: stored as tuples, written to JSON as lists.
_PAIRS = ("scale", "crop_size")
#: Flat names of the evaluation settings, as configs before the ``evaluation`` section wrote
#: them; still accepted in saved configs and ``--set``.
_FLAT_EVAL = {"eval_mode": "mode", "eval_crop": "crop", "eval_stride": "stride"}


@dataclass(frozen=True)
class EvalConfig:
    """How a run's validation set is evaluated (``--set evaluation.mode=slide``).

    Attributes:
        mode: ``"whole"`` or ``"slide"`` inference.
        crop: ``(H, W)`` window of slide inference.
        stride: ``(H, W)`` step of slide inference.
    """

    mode: str = "whole"
    crop: tuple[int, int] = SLIDE_CROP
    stride: tuple[int, int] = SLIDE_STRIDE

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(
                f"eval_mode must be 'whole' or 'slide', got {self.mode!r} (evaluation.mode)"
            )
        for key in ("crop", "stride"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError(f"evaluation.{key} must be an (H, W) pair, got {value!r}")
            object.__setattr__(self, key, (int(value[0]), int(value[1])))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | EvalConfig) -> EvalConfig:
        """From a (partial) dict; unknown keys raise ``ValueError`` naming the valid ones."""
        if isinstance(d, cls):
            return d
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown evaluation keys {unknown}; valid: {', '.join(valid)}")
        return cls(**d)


@dataclass
class TrainConfig:
    """Everything a training run depends on.

    Args:
        name: Name of the recipe.
        dataset: ``"cityscapes"``, ``"ade20k"``, ``"voc"``, ``"folder"`` or
            ``"synthetic-context"``.
        data_root: Dataset folder (``None`` for the synthetic dataset).
        train_split: Training split (VOC's ``"train"`` is the SBD-augmented one).
        val_split: Validation split.
        scale: ``(H, W)`` base scale of the random rescale and of the eval resize (the order does
            not matter: the image is fitted keeping its ratio); ``None``: no resize.
        crop_size: ``(H, W)`` training crop; ``None``: whole images (synthetic only).
        model: Keyword arguments of :class:`isa_explorer.ISANet` (names checked, see
            :func:`check_model_kwargs`).
        iters: Training iterations.
        batch_size: Images per process (GPU) and iteration.
        lr: Base learning rate of SGD.
        momentum: SGD momentum.
        weight_decay: SGD weight decay (on all parameters, as mmseg).
        poly_power: Power of the per-iteration poly schedule.
        min_lr: Learning rate the poly schedule ends at.
        aux_weight: Weight of the auxiliary head's loss.
        eval_interval: Evaluate every this many iterations (and at the end).
        ckpt_interval: Write ``checkpoints/last.pt`` every this many iterations (and at the end).
        log_interval: Log loss and learning rate every this many iterations.
        evaluation: How the validation set is evaluated (:class:`EvalConfig`; also read as
            ``eval_mode``, ``eval_crop``, ``eval_stride``).
        amp: bf16 autocast on CUDA (fp16 + loss scaling where bf16 is unsupported); off on CPU.
        channels_last: Model and inputs in channels-last memory format.
        compile: ``torch.compile`` the training step's model.
        clip_grad: Max gradient norm, or ``None`` for no clipping.
        seed: Seed of the model init, the data order and the augmentations.
        workers: DataLoader worker processes per process.
        synthetic: The synthetic dataset (:class:`~isa_explorer.data.synthetic.SyntheticConfig`).
        folder: Your own dataset (:class:`~isa_explorer.data.folder.FolderConfig`: classes,
            palette, ignore index, ``reduce_zero_label``, the split of a flat folder).
    """

    name: str = "custom"
    dataset: str = "synthetic-context"
    data_root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    scale: tuple[int, int] | None = None
    crop_size: tuple[int, int] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    iters: int = 1000
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    min_lr: float = 1e-4
    aux_weight: float = 0.4
    eval_interval: int = 250
    ckpt_interval: int = 250
    log_interval: int = 10
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    clip_grad: float | None = None
    seed: int = 0
    workers: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    folder: FolderConfig = field(default_factory=FolderConfig)

    def __post_init__(self) -> None:
        self.synthetic = SyntheticConfig.from_dict(self.synthetic)
        self.folder = FolderConfig.from_dict(self.folder)
        self.evaluation = EvalConfig.from_dict(self.evaluation)
        check_model_kwargs(self.model)
        for key in _PAIRS:
            value = getattr(self, key)
            if value is not None:
                if not isinstance(value, (list, tuple)) or len(value) != 2:
                    raise ValueError(f"{key} must be an (H, W) pair, got {value!r}")
                setattr(self, key, (int(value[0]), int(value[1])))
        for key in ("iters", "batch_size", "eval_interval", "ckpt_interval", "log_interval"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)!r}")

    @property
    def eval_mode(self) -> str:
        return self.evaluation.mode

    @property
    def eval_crop(self) -> tuple[int, int]:
        return self.evaluation.crop

    @property
    def eval_stride(self) -> tuple[int, int]:
        return self.evaluation.stride

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (pairs as lists)."""
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Config from a dict; unknown keys raise ``ValueError`` naming them.

        The flat ``eval_mode`` / ``eval_crop`` / ``eval_stride`` of older configs move into
        ``evaluation``.
        """
        d = dict(d)
        flat = {_FLAT_EVAL[k]: d.pop(k) for k in list(d) if k in _FLAT_EVAL}
        if flat:
            d["evaluation"] = {**dict(d.get("evaluation") or {}), **flat}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown config keys {unknown}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**copy.deepcopy(d))

    def save(self, path: str | Path) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}; give a config name or a JSON path")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(data)


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
        val_split="val",
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
        lr=0.01,  # SGD momentum, weight decay, poly schedule, aux weight: the defaults
        eval_interval=iters // 10,  # mmseg: 2k, 4k, 8k, 16k
        ckpt_interval=2000,
        log_interval=50,
        evaluation=EvalConfig(mode="slide" if slide else "whole"),
        amp=True,
        channels_last=True,
        compile=False,
        clip_grad=None,
        seed=0,
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
        amp=False,
        workers=0,
        synthetic=SyntheticConfig(),
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


def _parse_value(text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
        value = _parse_value(text.strip())
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
