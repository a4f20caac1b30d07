"""Loading models: the embedded default model, a `train/fit.py` run, or a converted checkpoint.

Every model directory holds what ``ISANet.save_pretrained`` writes: ``config.json`` (the
constructor arguments, class names and palette included) and ``model.safetensors``. Weights are
only ever read with safetensors, never unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from isa_explorer.models.isa.model import ISANet
from isa_explorer.models.prepare import prepare_for_inference

#: The model shipped with the package: ISANet (timm ResNet-10-T, output stride 8) trained with
#: ``train/fit.py --config synthetic-context`` (see its MODEL_CARD.md).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default_model"

_WEIGHTS = "model.safetensors"
_RUN_SUBDIRS = ("best", "final")  # what train/fit.py writes inside a run directory


class ModelNotFoundError(FileNotFoundError):
    """A model directory is missing or does not hold a saved model."""


def resolve_model_dir(path: str | Path) -> Path:
    """The directory holding ``config.json`` + ``model.safetensors`` for ``path``.

    Args:
        path: A model directory (``save_pretrained`` output, e.g. a converted mmseg checkpoint),
            or a ``train/fit.py`` run directory (its ``best/`` model, else ``final/``).

    Returns:
        The model directory.

    Raises:
        ModelNotFoundError: Nothing loadable there; the message says what was expected.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise ModelNotFoundError(
            f"model path {root} does not exist; pass a directory written by "
            "`model.save_pretrained`, `train/fit.py` or `isa-explorer convert`"
        )
    if root.is_file():
        raise ModelNotFoundError(
            f"{root} is a file; pass the directory that holds it (config.json + {_WEIGHTS}). "
            "An mmsegmentation .pth must be converted first: "
            f"`isa-explorer convert {root} OUT_DIR`"
        )
    for candidate in (root, *(root / sub for sub in _RUN_SUBDIRS)):
        if (candidate / "config.json").is_file() and (candidate / _WEIGHTS).is_file():
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
        path: A model or run directory (see :func:`resolve_model_dir`); ``None`` loads the
            embedded default model.
        device: Where to put the model.
        for_inference: Return it prepared for fast inference
            (:func:`~isa_explorer.models.prepare.prepare_for_inference`: BatchNorm folded,
            streamed ISA); such a model cannot be trained or saved.

    Returns:
        The model, in eval mode, with ``class_names`` and ``palette`` from its config.

    Raises:
        ModelNotFoundError: No saved model at ``path``.
        ValueError: The directory holds a model that is not an ISANet.
    """
    model_dir = resolve_model_dir(DEFAULT_MODEL_DIR if path is None else path)
    config = json.loads((model_dir / "config.json").read_text())
    arch = config.get("_model_class", "ISANet")
    if arch != "ISANet":
        raise ValueError(
            f"{model_dir} holds a {arch} model; ISA Explorer loads ISANet models only "
            "(train one with train/fit.py or convert an mmseg ISANet checkpoint)"
        )
    model = ISANet.from_pretrained(str(model_dir)).float().eval().to(device)
    return prepare_for_inference(model, inplace=True) if for_inference else model


def load_default_model(device: str | torch.device = "cpu", for_inference: bool = False) -> ISANet:
    """The embedded default model (trained on the synthetic long-range-context scenes)."""
    return load_model(None, device=device, for_inference=for_inference)


def model_card(path: str | Path | None = None) -> str:
    """The model card (``MODEL_CARD.md``) of a model directory, ``""`` when it has none."""
    model_dir = resolve_model_dir(DEFAULT_MODEL_DIR if path is None else path)
    card = model_dir / "MODEL_CARD.md"
    return card.read_text() if card.is_file() else ""
