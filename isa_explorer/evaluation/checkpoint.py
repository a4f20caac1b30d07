"""Load the model a command-line tool is pointed at: a saved/converted directory or the default."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from torch import nn


def load_any_model(path: str | Path | None = None, device: str = "cpu") -> nn.Module:
    """Load an ISANet for inference, in eval mode on ``device``.

    Uses :func:`isa_explorer.pretrained.load_model` when that module is installed (it also
    knows the embedded default model, ``path=None``), else ``ISANet.from_pretrained``.

    Args:
        path: A directory written by ``save_pretrained`` or ``isa-explorer convert``,
            or ``None`` for the default model.
        device: Where to put the model.

    Raises:
        FileNotFoundError: ``path`` holds no saved model (the message says what was expected).
    """
    if importlib.util.find_spec("isa_explorer.pretrained") is not None:
        pretrained = importlib.import_module("isa_explorer.pretrained")
        return pretrained.load_model(path, device=device).eval()
    if path is None:
        raise ValueError("no default model is installed; pass a model directory (--checkpoint)")
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no config.json: pass a directory written by model.save_pretrained(...)"
        )
    from isa_explorer.models.isa.model import ISANet

    return ISANet.from_pretrained(str(path)).to(device).eval()


__all__ = ["load_any_model"]
