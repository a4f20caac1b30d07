"""Building the model of a training config, with local or ImageNet encoder weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from isa_explorer.data.info import DatasetInfo
from isa_explorer.models.isanet import ISANet
from isa_explorer.safe_load import read_torch_file

_WEIGHT_FILES = (".safetensors", ".pt", ".pth", ".bin")
_CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "last_linear.")


def _is_path(value: str) -> bool:
    return "/" in value or value.endswith(_WEIGHT_FILES) or Path(value).expanduser().exists()


def build_model(model_kwargs: dict[str, Any], info: DatasetInfo | None = None) -> ISANet:
    """An :class:`ISANet` from a config's ``model`` dict.

    ``encoder_weights`` may be ``None``, an smp weights name (``"imagenet"``) or the path of a
    local file (safetensors or a torch state dict) loaded into ``model.encoder``.

    Args:
        model_kwargs: ISANet keyword arguments.
        info: The dataset's info; its class names and palette are saved with the model, and its
            class count must match ``classes``.

    Raises:
        ValueError: ``classes`` differs from the dataset's class count.
        RuntimeError: The ImageNet weights could not be downloaded (the message says what to
            pass instead) or a weight file does not fit the encoder.
    """
    kwargs = dict(model_kwargs)
    weights = kwargs.get("encoder_weights")
    local = weights if isinstance(weights, str) and _is_path(weights) else None
    if local is not None:
        kwargs["encoder_weights"] = None
    elif weights == "imagenet" and str(kwargs.get("encoder_name", "")).startswith("tu-"):
        kwargs["encoder_weights"] = True  # timm encoders: the default pretrained tag
    if info is not None:
        classes = kwargs.setdefault("classes", info.num_classes)
        if classes != info.num_classes:
            raise ValueError(
                f"model.classes={classes} but {info.name} has {info.num_classes} classes; "
                f"set model.classes={info.num_classes}"
            )
        kwargs.setdefault("class_names", list(info.class_names))
        kwargs.setdefault("palette", [list(c) for c in info.palette])
        if info.mean is not None:  # the dataset's own normalisation (raw images)
            kwargs.setdefault("in_channels", len(info.mean))
            kwargs.setdefault("mean", list(info.mean))
            kwargs.setdefault("std", list(info.std))
        if info.image_mode != "rgb":
            kwargs.setdefault("image_mode", info.image_mode)
    try:
        model = ISANet(**kwargs)
    except Exception as e:
        if kwargs.get("encoder_weights") is None:
            raise
        raise RuntimeError(
            f"could not load the {weights!r} weights of encoder "
            f"{kwargs.get('encoder_name')!r} ({type(e).__name__}: {e}). Without internet access, "
            "pass --encoder-weights none (random init) or --encoder-weights /path/to/encoder "
            "(.safetensors or a torch state dict of the encoder)"
        ) from e
    if local is not None:
        load_encoder_weights(model.encoder, local)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = read_torch_file(path, "encoder weights")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise RuntimeError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local weight file into an smp encoder, strictly.

    Accepted layouts: the encoder's own state dict, a whole ISANet state dict (``encoder.``
    keys), or a timm classification model's (keys without the smp ``model.`` prefix; its
    classifier is dropped).

    Raises:
        FileNotFoundError: No file at ``path``.
        RuntimeError: The keys or shapes do not fit the encoder (the message lists them).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder weights file {path} not found; pass an existing .safetensors / .pt file, "
            "'imagenet' or 'none'"
        )
    state = _read_state_dict(path)
    expected = set(encoder.state_dict())
    candidates = [
        state,
        {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")},
        {f"model.{k}": v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)},
    ]
    fitting = [c for c in candidates if set(c) == expected]
    if not fitting:
        best = max(candidates, key=lambda c: len(expected & set(c)))
        missing, unexpected = sorted(expected - set(best)), sorted(set(best) - expected)
        raise RuntimeError(
            f"{path} does not fit encoder {type(encoder).__name__}: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}. Expected the "
            f"encoder's state dict (keys like {sorted(expected)[:3]}), an ISANet state dict, or "
            "a timm model of the same architecture"
        )
    try:
        encoder.load_state_dict(fitting[0], strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{path} does not fit the encoder: {e}") from e
