"""Load and run exported models: ONNX under onnxruntime, ``.pt2`` under ``torch.export``.

Both take ``(N, 3, H, W)`` (or one ``(3, H, W)`` / ``(H, W, 3)`` image) 0-255 RGB, any numeric
dtype, and check it before the graph sees it: three channels, both sides at least
:data:`~isa_explorer.export.graph.MIN_SIDE` (and the export size for a static export). The
export's settings travel in the file (ONNX metadata, a JSON file beside the ``.pt2``), so the
check knows them.
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isa_explorer.export.graph import MIN_SIDE

_META_KEY = "isa_explorer"
_RAW_TENSOR_PREFIXES = ("weight_", "tensor_")  # what torch.export stores as raw bytes


class ExportedInputError(ValueError):
    """An input the exported model cannot take (the message says what to pass)."""


def meta_path(pt2: str | Path) -> Path:
    """The JSON file of export settings written beside a ``.pt2`` program."""
    return Path(str(pt2) + ".json")


def check_images(images: Any, static: list[int] | None = None) -> np.ndarray:
    """``images`` as float32 ``(N, 3, H, W)``, or :class:`ExportedInputError`.

    Args:
        images: ``(N, 3, H, W)``, ``(3, H, W)`` or ``(H, W, 3)``, numpy array or tensor.
        static: The ``(H, W)`` of a static export, else ``None``.
    """
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None] if arr.shape[0] == 3 else arr.transpose(2, 0, 1)[None]  # -> (1, C, H, W)
    if arr.ndim != 4:
        raise ExportedInputError(
            f"expected images (N, 3, H, W) or one image (3, H, W) / (H, W, 3), got shape "
            f"{tuple(arr.shape)}"
        )
    if arr.shape[1] != 3:
        raise ExportedInputError(
            f"expected 3 channels (RGB) in dimension 1 of (N, 3, H, W), got {arr.shape[1]} "
            f"(shape {tuple(arr.shape)}); convert grey or RGBA images to RGB first"
        )
    h, w = arr.shape[2:]
    if min(h, w) < MIN_SIDE:
        raise ExportedInputError(
            f"the image is {h}x{w}; exported models need both sides >= {MIN_SIDE} pixels "
            "(upscale or pad it)"
        )
    if static is not None and [h, w] != list(static):
        raise ExportedInputError(
            f"this model was exported for {static[0]}x{static[1]} images (--static), got {h}x{w}; "
            "resize the input, or export again without --static for any size"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise ExportedInputError(f"expected numeric pixels 0-255, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class OnnxSegmenter:
    """An exported ``.onnx`` model under onnxruntime (CPU unless ``providers`` say otherwise).

    ``OnnxSegmenter("isanet.onnx", threads=2)(image)`` runs :func:`check_images`, then
    ``InferenceSession.run``: logits ``(N, K, H, W)`` float32, or ``(N, H, W)`` with --argmax.
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: list | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path), options, providers=providers or ["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map.get(_META_KEY)
        self.settings: dict = json.loads(meta) if meta else {}
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: Any) -> np.ndarray:
        x = check_images(images, self.settings.get("static"))
        return self.session.run(None, {self.input_name: x})[0]


#: Archive members a ``.pt2`` from ``isa-explorer export`` may hold (below its root folder).
_PT2_MEMBERS = re.compile(
    r"[^/]+/(data/weights/(weight_\d+|model_weights_config\.json)"
    r"|data/constants/(tensor_\d+|model_constants_config\.json)"
    r"|data/sample_inputs/model\.pt|models/model\.json"
    r"|archive_format|archive_version|\.data/version|byteorder|\.data/serialization_id)"
)


def check_pt2_holds_only_tensors(path: str | Path) -> None:
    """Refuse a ``.pt2`` archive that could make ``torch.export.load`` unpickle anything.

    ``torch.export.load`` unpickles weights and constants that an archive marks
    ``use_pickle``, custom objects, and the sample inputs when their safe load fails, each of
    which would run code from the file. The archives ``isa-explorer export`` writes hold raw
    tensors, JSON and sample inputs that load with ``weights_only=True``; every member is
    checked against that before loading.

    Raises:
        ExportedInputError: Not a ``.pt2`` archive, or one holding anything else.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            unknown = [n for n in names if not n.endswith("/") and not _PT2_MEMBERS.fullmatch(n)]
            configs = [
                n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))
            ]
            entries = [e for n in configs for e in json.loads(archive.read(n))["config"].values()]
            samples = [archive.read(n) for n in names if n.endswith("data/sample_inputs/model.pt")]
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError) as e:
        raise ExportedInputError(
            f"{path} is not a .pt2 archive written by torch.export ({e})"
        ) from None
    unsafe = unknown + [
        str(e.get("path_name"))
        for e in entries
        if e.get("use_pickle") or not str(e.get("path_name", "")).startswith(_RAW_TENSOR_PREFIXES)
    ]
    for data in samples:
        try:
            with warnings.catch_warnings(action="ignore"):  # warnings on odd protocols of junk
                torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001  (anything but plain tensors)
            unsafe.append("data/sample_inputs/model.pt")
    if unsafe or not configs:
        raise ExportedInputError(
            f"{path} holds {', '.join(unsafe[:3]) or 'no weights table'}, which ISA Explorer "
            "does not load (it could run code from the file); export the model again with "
            "`isa-explorer export`, which writes raw tensors only"
        )


class TorchExportSegmenter:
    """An exported ``.pt2`` program: ``torch.export.load(path).module()`` with input checks
    (after :func:`check_pt2_holds_only_tensors`)."""

    def __init__(self, path: str | Path):
        check_pt2_holds_only_tensors(path)
        self.module = torch.export.load(str(path)).module()
        meta = meta_path(path)
        self.settings: dict = json.loads(meta.read_text()) if meta.is_file() else {}

    def __call__(self, images: Any) -> np.ndarray:
        x = torch.from_numpy(check_images(images, self.settings.get("static")))
        with torch.no_grad():
            return self.module(x).numpy()


def load_exported(path: str | Path, threads: int | None = None):
    """:class:`OnnxSegmenter` for ``.onnx`` files, :class:`TorchExportSegmenter` for ``.pt2``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    if path.suffix == ".onnx":
        return OnnxSegmenter(path, threads)
    if path.suffix == ".pt2":
        return TorchExportSegmenter(path)
    raise ValueError(f"{path}: expected a .onnx or .pt2 file written by `isa-explorer export`")
