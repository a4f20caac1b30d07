"""Export ISANet to ONNX and ``torch.export`` with dynamic batch, height and width.

``isa-explorer export MODEL OUT`` (:mod:`~isa_explorer.export.cli`) writes the file;
:mod:`~isa_explorer.export.graph` traces it, :mod:`~isa_explorer.export.writer` saves it,
:mod:`~isa_explorer.export.runtime` loads and runs it with input checks.
"""

from isa_explorer.export.graph import MIN_SIDE, ExportError, ExportWrapper, trace
from isa_explorer.export.runtime import (
    ExportedInputError,
    OnnxSegmenter,
    TorchExportSegmenter,
    check_images,
    load_exported,
)
from isa_explorer.export.writer import export_model

__all__ = [
    "MIN_SIDE",
    "ExportError",
    "ExportWrapper",
    "ExportedInputError",
    "OnnxSegmenter",
    "TorchExportSegmenter",
    "check_images",
    "export_model",
    "load_exported",
    "trace",
]
