"""Writing an exported model: ONNX (dynamo exporter) or a ``torch.export`` ``.pt2``."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from isa_explorer.export.graph import ExportError, trace
from isa_explorer.export.runtime import _META_KEY, meta_path
from isa_explorer.models.isanet import ISANet

Format = Literal["onnx", "torch-export"]
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}
#: ONNX opset of the exported graph (the dynamo exporter's current default).
OPSET = 18


def export_model(
    model: ISANet,
    out: str | Path,
    fmt: Format = "onnx",
    static: Sequence[int] | None = None,
    argmax: bool = False,
    fp16: bool = False,
) -> Path:
    """Export ``model`` to ``out``.

    Args:
        model: A plain :class:`ISANet` (``load_model(path)``).
        out: The file to write (``.onnx`` / ``.pt2`` is appended if missing).
        fmt: ``"onnx"`` or ``"torch-export"``.
        static: ``(H, W)`` of a fixed-size export; ``None`` for any size from 32 px.
        argmax: Output the label map instead of logits.
        fp16: Network weights and compute in float16.

    Returns:
        The written file. A ``.pt2`` gets a ``.pt2.json`` of settings beside it; an ONNX file
        carries them as metadata.

    Raises:
        ExportError: An unsupported model or option.
    """
    if fmt not in SUFFIX:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(SUFFIX)}")
    out = Path(out)
    if out.suffix != SUFFIX[fmt]:
        out = out.with_name(out.name + SUFFIX[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    program = trace(model, static, argmax, fp16)
    settings = {
        "static": list(static) if static is not None else None,
        "argmax": argmax,
        "fp16": fp16,
        "classes": model.classes,
        "class_names": model.class_names,
        "palette": model.palette,
        "input": "float32 (N, 3, H, W) RGB 0-255",
        "output": "int64 (N, H, W) class ids" if argmax else "float32 (N, K, H, W) logits",
    }
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp_dir:
        tmp = Path(tmp_dir) / out.name  # written whole, then moved: no half-written file
        if fmt == "torch-export":
            torch.export.save(program, str(tmp))
            meta_path(out).write_text(json.dumps(settings, indent=2) + "\n")
        else:
            onnx_program = torch.onnx.export(
                program,
                input_names=["image"],
                output_names=["labels" if argmax else "logits"],
                opset_version=OPSET,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
            onnx_program.model.metadata_props[_META_KEY] = json.dumps(settings)
            onnx_program.save(str(tmp))
        tmp.replace(out)
    return out
