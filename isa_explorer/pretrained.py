"""Loading models: the embedded default model, a `train/fit.py` run, a converted checkpoint,
or a released mmseg model by name (:mod:`isa_explorer.zoo`).

Every model directory holds what ``ISANet.save_pretrained`` writes: ``config.json`` (the
constructor arguments, class names and palette included) and ``model.safetensors``. The embedded
default models share one encoder: each head's directory holds ``head.safetensors`` (the head's
tensors) and its ``config.json`` names the shared encoder file (``"_encoder_weights"``, relative
to the directory). Weights are only ever read with safetensors, never unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from isa_explorer.data.info import SYNTHETIC_INFO
from isa_explorer.models.fusion import fuse_for_inference
from isa_explorer.models.isanet import ISANet

#: The models shipped with the package: one timm ResNet-10-T encoder (output stride 8) and a head
#: of each kind trained on it, frozen, on the synthetic context scenes
#: (``isa-explorer experiment context``; each head's MODEL_CARD.md).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "assets" / "default_models"
#: The head of the default model, and its directory: the ISA head on the shared encoder.
DEFAULT_HEAD = "isa"
DEFAULT_MODEL_DIR = DEFAULT_MODELS_DIR / DEFAULT_HEAD
#: Said wherever a model of the synthetic scenes meets a real image (the app, ``predict``).
SYNTHETIC_ONLY = (
    "This model knows the synthetic scenes' classes only (coloured objects and cues), so a "
    "photo comes back in those classes. For real images use a released model: "
    "`python app.py --checkpoint cityscapes-r50` (street scenes, 19 classes) or "
    "`--checkpoint ade20k-r50` (150 classes), the same with `isa-explorer predict`; "
    "`isa-explorer zoo list` shows all 84 (ISANet and five other heads)."
)


def knows_synthetic_classes_only(class_names: list[str] | tuple[str, ...]) -> bool:
    """Whether a model's classes are the synthetic context scenes' (the default model's)."""
    return tuple(class_names) == SYNTHETIC_INFO.class_names


_WEIGHTS = "model.safetensors"
_HEAD_WEIGHTS = "head.safetensors"  # a model whose encoder is a shared file
_ENCODER_KEY = "_encoder_weights"  # config.json: that file, relative to the model directory
_RUN_SUBDIRS = ("best", "final")  # what train/fit.py writes inside a run directory


class ModelNotFoundError(FileNotFoundError):
    """A model directory is missing or does not hold a saved model."""


class DamagedModelError(ValueError):
    """A model directory's ``config.json`` or ``model.safetensors`` cannot be read."""


def resolve_model_dir(path: str | Path, progress: bool = True) -> Path:
    """The directory holding ``config.json`` + ``model.safetensors`` for ``path``.

    Args:
        path: A model directory (``save_pretrained`` output, e.g. a converted mmseg checkpoint),
            a ``train/fit.py`` run directory (its ``best/`` model, else ``final/``), or the name
            of a zoo model (``cityscapes-r50``, ``isanet_r50-d8_4xb2-80k_cityscapes-512x1024``;
            ``isa-explorer zoo list``), downloaded and converted on first use. An existing
            path wins over a zoo name.
        progress: Show a progress bar when a zoo model is downloaded.

    Returns:
        The model directory.

    Raises:
        ModelNotFoundError: Nothing loadable there; the message says what was expected.
        isa_explorer.zoo.ZooError: A zoo model could not be downloaded or converted.
    """
    root = Path(path).expanduser()
    if not root.exists():
        from isa_explorer import zoo  # imported here: zoo imports the converter and configs

        entry = zoo.find_entry(str(path))
        if entry is not None:
            return zoo.fetch(entry, progress=progress)
        looks_like_path = any(c in str(path) for c in "/\\") or str(path).startswith((".", "~"))
        what = (
            f"model path {root} does not exist"
            if looks_like_path
            else f"model {str(path)!r} is neither an existing path nor a zoo model name"
        )
        raise ModelNotFoundError(
            f"{what}; pass a directory written by `model.save_pretrained`, `train/fit.py` or "
            "`isa-explorer convert`, or a name from `isa-explorer zoo list` (e.g. cityscapes-r50)"
        )
    if root.is_file():
        raise ModelNotFoundError(
            f"{root} is a file; pass the directory that holds it (config.json + {_WEIGHTS}). "
            "An mmsegmentation .pth must be converted first: "
            f"`isa-explorer convert {root} OUT_DIR`"
        )
    for candidate in (root, *(root / sub for sub in _RUN_SUBDIRS)):
        if (candidate / "config.json").is_file() and _has_weights(candidate):
            return candidate
    raise ModelNotFoundError(
        f"no saved model in {root}: expected config.json and {_WEIGHTS} there, or in its "
        f"{' or '.join(s + '/' for s in _RUN_SUBDIRS)} subdirectory (a train/fit.py run)"
    )


def load_model(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    for_inference: bool = False,
) -> ISANet:
    """Load a saved ISANet in eval mode, in float32.

    Args:
        path: A model or run directory, or a zoo model name (see :func:`resolve_model_dir`);
            ``None`` loads the embedded default model.
        device: Where to put the model.
        for_inference: Return it fused for inference
            (:func:`~isa_explorer.models.fusion.fuse_for_inference`: BatchNorm folded into
            the convolutions, in place); such a model cannot be trained or saved.

    Returns:
        The model, in eval mode, with ``class_names`` and ``palette`` from its config.

    Raises:
        ModelNotFoundError: No saved model at ``path``.
        DamagedModelError: Its config or weights file cannot be read.
        ValueError: The directory holds a model that is not an ISANet.
        isa_explorer.zoo.ZooError: A zoo model could not be downloaded or converted.
    """
    model_dir = resolve_model_dir(DEFAULT_MODEL_DIR if path is None else path)
    config = read_config(model_dir)
    arch = config.get("_model_class", "ISANet")
    if arch != "ISANet":
        raise ValueError(
            f"{model_dir} holds a {arch} model; ISA Explorer loads ISANet models only "
            "(train one with train/fit.py or convert an mmseg ISANet checkpoint)"
        )
    try:
        model = ISANet(**config)  # keys starting with "_" are not constructor arguments
    except (TypeError, ValueError) as e:  # a config the model does not take
        raise DamagedModelError(
            f"{model_dir / 'config.json'} does not describe an ISANet this version builds "
            f"({e})" + _zoo_hint(model_dir)
        ) from None
    state = _read_weights(model_dir, config)
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise DamagedModelError(
            f"{model_dir}: the weights file does not fit its config.json: {len(missing)} tensor(s) "
            f"missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}); the "
            "folder mixes two models or is incomplete" + _zoo_hint(model_dir)
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise DamagedModelError(
            f"{model_dir}: the weights file does not fit its config.json ({e})"
            + _zoo_hint(model_dir)
        ) from None
    model = model.float().eval().to(device)
    return fuse_for_inference(model) if for_inference else model


def _has_weights(model_dir: Path) -> bool:
    return (model_dir / _WEIGHTS).is_file() or (model_dir / _HEAD_WEIGHTS).is_file()


def _read_weights(model_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    """The state dict of a model directory: ``model.safetensors``, or the shared encoder file
    named in its config plus ``head.safetensors``."""
    files = [model_dir / _WEIGHTS]
    if not files[0].is_file():
        shared = config.get(_ENCODER_KEY)
        if not isinstance(shared, str) or Path(shared).is_absolute():
            raise DamagedModelError(
                f"{model_dir / 'config.json'} has {_HEAD_WEIGHTS} beside it but names no shared "
                f"encoder file: set {_ENCODER_KEY!r} to its path relative to {model_dir}"
            )
        files = [model_dir / shared, model_dir / _HEAD_WEIGHTS]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            part = load_file(file)
        except FileNotFoundError:
            raise DamagedModelError(
                f"{file} is missing: {model_dir} keeps its encoder in a shared file; copy the "
                "whole folder that holds both" + _zoo_hint(model_dir)
            ) from None
        except (SafetensorError, OSError) as e:
            raise DamagedModelError(
                f"{file} is damaged ({e}); copy or download the model again" + _zoo_hint(model_dir)
            ) from None
        if set(part) & set(state):
            raise DamagedModelError(f"{file} repeats tensors of {files[0]}: not a model's parts")
        state.update(part)
    return state


def read_config(model_dir: str | Path) -> dict:
    """A model directory's ``config.json``; :class:`DamagedModelError` if it is not JSON."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DamagedModelError(f"{path} cannot be read ({e})" + _zoo_hint(path.parent)) from None
    if not isinstance(config, dict):
        raise DamagedModelError(f"{path} holds a {type(config).__name__}, not a model config")
    return config


def _zoo_hint(model_dir: Path) -> str:
    if (model_dir / "zoo.json").is_file():
        return f"; `isa-explorer zoo remove {model_dir.name}` deletes it, the next use refetches"
    return ""


def default_heads() -> list[str]:
    """The heads with an embedded default model (``isa`` first)."""
    found = sorted(p.name for p in DEFAULT_MODELS_DIR.iterdir() if (p / "config.json").is_file())
    return sorted(found, key=lambda name: name != DEFAULT_HEAD)


def load_default_model(
    device: str | torch.device = "cpu", for_inference: bool = False, head: str = DEFAULT_HEAD
) -> ISANet:
    """An embedded default model: ``head`` on the shared encoder, trained on the synthetic
    long-range-context scenes (``isa``: the ISA head; :func:`default_heads` lists them all).

    Raises:
        ValueError: No default model of that head (the message lists those there are).
    """
    if head not in (known := default_heads()):
        raise ValueError(
            f"no embedded default model for head {head!r}: choose from {', '.join(known)}"
        )
    return load_model(DEFAULT_MODELS_DIR / head, device=device, for_inference=for_inference)


def model_card(path: str | Path | None = None) -> str:
    """The model card (``MODEL_CARD.md``) of a model directory, ``""`` when it has none."""
    model_dir = resolve_model_dir(DEFAULT_MODEL_DIR if path is None else path)
    card = model_dir / "MODEL_CARD.md"
    return card.read_text() if card.is_file() else ""
