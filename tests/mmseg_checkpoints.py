"""mmseg-format checkpoints made from a key listing (``name<TAB>shape`` per line): every key
and shape of a released model, random values on the scale the layers expect."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch


def state_from_listing(listing: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under every key and shape of ``listing``.

    Convolutions and linear maps get ``N(0, 1 / fan_in)`` (activations keep their scale through
    a full ResNet-50 and head), norms ``U(0.5, 1.5)`` weights and ``N(0, 0.1^2)`` biases and
    means, variances ``U(0.5, 1.5)``, scalars (CC's and DA's ``gamma``) ``U(0.5, 1.5)``, EMA's
    bases unit columns: no layer is an identity and none explodes.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for line in listing.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        shape = tuple(int(s) for s in re.findall(r"\d+", shape))
        norm_like = len(shape) == 1 or (len(shape) == 3 and shape[1:] == (1, 1))
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith(("running_var", "gamma.scale")) or (key.endswith("weight") and norm_like):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("bases"):
            state[key] = torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=1)
        elif key.endswith("weight"):
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        else:  # biases, running means
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    return state


def save_mmseg_checkpoint(state: dict[str, torch.Tensor], path: Path, **meta) -> Path:
    """``state`` saved as mmseg (mmengine) saves a checkpoint: ``{"meta", "state_dict"}``."""
    torch.save({"meta": {"mmseg_version": "1.2.2", **meta}, "state_dict": state}, path)
    return path
