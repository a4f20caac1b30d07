"""Reading ``torch.save`` files safely, with one clear sentence for every kind of bad file.

Every ``.pth`` the project reads goes through :func:`read_torch_file`:
``torch.load(..., weights_only=True)``, which never runs code from the file. A file that is not
a checkpoint (empty, truncated, an HTML error page, random bytes, a directory) raises
:class:`CheckpointFileError` naming the problem and the fix, never suggesting unsafe loading.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTO = 0x80  # the legacy (pre-1.6) format starts with a pickle protocol opcode


class CheckpointFileError(ValueError):
    """A file that cannot be read as a weights-only PyTorch checkpoint (the message says why)."""


def read_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors.

    Args:
        path: The file.
        what: What the file should be, for the messages (``"checkpoint"``, ``"encoder weights"``).

    Returns:
        The loaded object (dicts, lists, tensors and plain values only).

    Raises:
        CheckpointFileError: Missing, a directory, empty, truncated or damaged, not a PyTorch
            file, or holding Python objects that safe loading refuses.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointFileError(f"{path} is a directory, not a {what} file: pass the file itself")
    if not path.is_file():
        raise CheckpointFileError(f"{what} file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFileError(
            f"{path} is empty (0 bytes): the download or copy did not finish; fetch it again"
        )
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointFileError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        with warnings.catch_warnings():  # the unpickler warns about odd protocols of junk files
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointFileError(
                f"{path} holds Python objects besides tensors (it needs {found.group(1)}); "
                "ISA Explorer reads weights only (torch.load(weights_only=True)). Save the "
                "weights alone where the model lives (torch.save(model.state_dict(), FILE)) "
                "and pass that file"
            ) from None
        raise CheckpointFileError(_not_a_checkpoint(path, head, size, what, str(e))) from None
    except Exception:  # noqa: BLE001  (the unpickler raises anything on junk: EOF, Key, Index...)
        raise CheckpointFileError(_not_a_checkpoint(path, head, size, what)) from None


def _not_a_checkpoint(path: Path, head: bytes, size: int, what: str, error: str = "") -> str:
    """Why ``path`` (first bytes ``head``) failed to load, in one sentence."""
    names = _intact_zip_names(path) if head.startswith(_ZIP_MAGIC) else None
    if names is not None:
        if "data.pkl" not in " ".join(names):
            return f"{path} is a zip archive but not a PyTorch {what} (no data.pkl inside)"
        found = re.search(r"(Unsupported operand \d+|Unsupported class \S+)", error)
        why = f" ({found.group(1)})" if found else ""
        return (
            f"{path} is a PyTorch {what} that safe loading cannot read{why}: it was saved with a "
            "pickle protocol or objects torch.load(weights_only=True) does not support; save "
            "the weights again with a plain torch.save(state_dict, FILE)"
        )
    if head.startswith(_ZIP_MAGIC):
        return (
            f"{path} is not a complete PyTorch {what}: its zip archive ({size} bytes) is "
            "truncated or damaged; fetch the file again"
        )
    if head and head[0] == _PICKLE_PROTO:
        return (
            f"{path} is a damaged or truncated PyTorch {what} (legacy pickle format, {size} "
            "bytes); fetch the file again"
        )
    text = _as_text(head)
    if text is not None:
        return (
            f"{path} is a text file, not a PyTorch {what} (it starts with {text!r}); a failed "
            "download often saves an error page: fetch the file again"
        )
    return (
        f"{path} is not a PyTorch {what} (it starts with bytes {head[:8].hex(' ')}; a .pth file "
        "is the zip archive torch.save writes)"
    )


def _as_text(head: bytes) -> str | None:
    """The first line of ``head`` if it reads as printable text, else ``None``."""
    text = head.decode("utf-8", errors="replace").rstrip("\ufffd")  # a character cut at 64 B
    if not text or not all(c.isprintable() and c != "\ufffd" or c in "\t\r\n" for c in text):
        return None
    line = text.strip().splitlines()[0] if text.strip() else text
    return line[:40]


def _intact_zip_names(path: Path) -> list[str] | None:
    """The members of ``path`` if it is a complete zip archive whose members all pass their CRC
    check, else ``None``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist() if archive.testzip() is None else None
    except (zipfile.BadZipFile, OSError, EOFError):
        return None
