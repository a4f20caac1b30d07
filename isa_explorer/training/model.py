"""Building the model of a training config, with local or ImageNet encoder weights."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from isa_explorer.data.info import DatasetInfo
from isa_explorer.models.isanet import ISANet
from isa_explorer.safe_load import read_torch_file

_WEIGHT_FILES = (".safetensors", ".pt", ".pth", ".bin")
_CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "last_linear.")


def _is_path(value: str) -> bool:
    return "/" in value or value.endswith(_WEIGHT_FILES) or Path(value).expanduser().exists()


def _weights_error(weights: Any, encoder_name: Any, why: str) -> RuntimeError:
    """The error of named encoder weights that cannot be had: what to pass instead."""
    from huggingface_hub import constants

    cached = (
        ""
        if constants.HF_HUB_OFFLINE
        else "; weights already in the Hugging Face cache load offline with HF_HUB_OFFLINE=1"
    )
    return RuntimeError(
        f"could not load the {weights!r} weights of encoder {encoder_name!r} ({why}). Without "
        "internet access, pass --encoder-weights none (random init) or --encoder-weights FILE "
        f"(the path of the encoder's weights: .safetensors or a torch state dict){cached}"
    )


def _hub_reachable(url: str, timeout: float) -> bool:
    """Whether ``url`` answers at all (any HTTP status), within ``timeout`` seconds, no retries."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:  # an answer: the host is there
        return True
    except (OSError, ValueError):  # no route, refused, unknown host, timeout, bad URL
        return False
    return True


def fetch_encoder_weights(model_kwargs: dict[str, Any], timeout: float = 10.0) -> None:
    """Get a config's named encoder weights (``"imagenet"``) now: downloaded, or found in the
    cache, so that a run that cannot have them stops before it reads any data.

    Unless ``HF_HUB_OFFLINE`` is set (then the cache alone is used), the Hugging Face endpoint
    (``HF_ENDPOINT``) is asked first, once, with a ``timeout`` in seconds: an unreachable hub
    fails at once instead of after the hub client's retries (measured offline, huggingface_hub
    as pinned, tu-resnet50c: 46.5 s through the library alone, 0.02 s with this check; the
    client's backoff has no setting for it). ``None`` or a local file: nothing to do.

    Args:
        model_kwargs: A config's ``model`` dict.
        timeout: Seconds to wait for the hub's answer.

    Raises:
        RuntimeError: The weights cannot be had; the message names ``--encoder-weights none``
            and ``--encoder-weights FILE``.
    """
    from huggingface_hub import constants

    weights, name = model_kwargs.get("encoder_weights"), model_kwargs.get("encoder_name")
    if weights is None or (isinstance(weights, str) and _is_path(weights)):
        return
    if not constants.HF_HUB_OFFLINE and not _hub_reachable(constants.ENDPOINT, timeout):
        raise _weights_error(weights, name, f"{constants.ENDPOINT} cannot be reached")
    try:
        get_encoder(
            name,
            in_channels=model_kwargs.get("in_channels", 3),
            depth=model_kwargs.get("encoder_depth", 5),
            weights=_smp_weights(name, weights),
        )
    except Exception as e:
        raise _weights_error(weights, name, f"{type(e).__name__}: {e}") from e


def _smp_weights(encoder_name: Any, weights: Any) -> Any:
    """smp's name of named weights: timm (``tu-``) encoders take ``True`` for ``"imagenet"``
    (timm's default pretrained tag)."""
    if weights == "imagenet" and str(encoder_name or "").startswith("tu-"):
        return True
    return weights


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
    else:
        kwargs["encoder_weights"] = _smp_weights(kwargs.get("encoder_name"), weights)
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
        raise _weights_error(weights, kwargs.get("encoder_name"), f"{type(e).__name__}: {e}") from e
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
