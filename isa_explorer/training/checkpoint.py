"""Atomic training checkpoints (model, optimiser, schedule, RNG and data position) and model dirs.

Written to a temporary file and moved over the old one (``os.replace``): a run killed at any
moment leaves the previous or the new checkpoint, never a torn one. Everything in it loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from isa_explorer.safe_load import read_torch_file

CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The state of every random generator this process uses (torch, CUDA, numpy, python)."""
    name, key, pos, has_gauss, np_gauss = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": name,
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    n = state["numpy"]
    key = n["key"].numpy().astype(np.uint32)
    np.random.set_state((n["bit_generator"], key, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"version": CHECKPOINT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: No checkpoint at ``path``.
        ValueError: The file is not a checkpoint of this trainer, or is damaged
            (:class:`~isa_explorer.safe_load.CheckpointFileError`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_torch_file(path, "train/fit.py checkpoint")
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is not a train/fit.py checkpoint (version {CHECKPOINT_VERSION}); "
            "start a new run directory or pass the right one"
        )
    return state


def save_model_dir(model: nn.Module, path: str | Path) -> None:
    """``model.save_pretrained(path)``, replacing an older save without a torn state.

    The model is written to a sibling temporary folder, contiguous (safetensors cannot hold
    channels-last tensors), then swapped in.
    """
    path = Path(path)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    channels_last = any(
        p.dim() == 4
        and p.is_contiguous(memory_format=torch.channels_last)
        and not p.is_contiguous()
        for p in model.parameters()
    )
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    try:
        model.save_pretrained(tmp)
    finally:
        if channels_last:
            model.to(memory_format=torch.channels_last)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
