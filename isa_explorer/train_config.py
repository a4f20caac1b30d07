"""The training config: :class:`TrainConfig` (everything a run depends on) and its
:class:`EvalConfig` section, with their checks and JSON round trip.

The named recipes built from them live in :mod:`isa_explorer.configs`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isa_explorer.config_dict import FromDict
from isa_explorer.data.folder import FolderConfig
from isa_explorer.data.synthetic import SyntheticConfig
from isa_explorer.evaluation.inference import SLIDE_CROP, SLIDE_STRIDE
from isa_explorer.models.isanet import ISANet

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


#: Flat names of the evaluation settings, as configs before the ``evaluation`` section wrote
#: them; still accepted in saved configs and ``--set``.
_FLAT_EVAL = {"eval_mode": "mode", "eval_crop": "crop", "eval_stride": "stride"}


@dataclass(frozen=True)
class EvalConfig(FromDict):
    """How a run's validation set is evaluated (``--set evaluation.mode=slide``).

    Attributes:
        mode: ``"whole"`` or ``"slide"`` inference.
        crop: ``(H, W)`` window of slide inference.
        stride: ``(H, W)`` step of slide inference.
    """

    mode: str = "whole"
    crop: tuple[int, int] = SLIDE_CROP
    stride: tuple[int, int] = SLIDE_STRIDE
    section = "evaluation"

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


@dataclass
class TrainConfig(FromDict):
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
        amp: bf16 autocast on CUDA and on the CPU (fp16 + loss scaling on GPUs without bf16).
        channels_last: Model and inputs in channels-last memory format.
        compile: ``torch.compile`` the training step's model.
        checkpoint_attention: Full activation checkpointing of the head's attention
            (:meth:`~isa_explorer.heads.protocol.Head.set_full_checkpoint`; refused by heads
            without it): less memory, a second forward in backward, the same numbers.
        clip_grad: Max gradient norm, or ``None`` for no clipping.
        freeze_encoder: Train the head only: the encoder's weights (``model.encoder_weights``)
            stay fixed and its BatchNorm layers keep their running statistics (eval mode), so
            no gradient or activation of the encoder is kept.
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
    checkpoint_attention: bool = False
    clip_grad: float | None = None
    freeze_encoder: bool = False
    seed: int = 0
    workers: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    folder: FolderConfig = field(default_factory=FolderConfig)
    section = "config"

    def __post_init__(self) -> None:
        self.synthetic = SyntheticConfig.from_dict(self.synthetic)
        self.folder = FolderConfig.from_dict(self.folder)
        self.evaluation = EvalConfig.from_dict(self.evaluation)
        check_model_kwargs(self.model)
        for key in ("scale", "crop_size"):  # (H, W) pairs: tuples here, lists in JSON
            value = getattr(self, key)
            if value is not None:
                if not isinstance(value, (list, tuple)) or len(value) != 2:
                    raise ValueError(f"{key} must be an (H, W) pair, got {value!r}")
                setattr(self, key, (int(value[0]), int(value[1])))
        for f in dataclasses.fields(self):  # a flag given as "yes" or "False" must not be truthy
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"{f.name} must be true or false, got {getattr(self, f.name)!r}")
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
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Config from a dict; unknown keys raise ``ValueError`` naming the valid ones. The flat
        ``eval_mode`` / ``eval_crop`` / ``eval_stride`` of older configs move into ``evaluation``.
        """
        d = dict(d)
        flat = {_FLAT_EVAL[k]: d.pop(k) for k in list(d) if k in _FLAT_EVAL}
        if flat:
            d["evaluation"] = {**dict(d.get("evaluation") or {}), **flat}
        return super().from_dict(copy.deepcopy(d))

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
