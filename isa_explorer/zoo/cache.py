"""The local zoo: released models downloaded once, converted once, then loaded offline.

Layout under ``$ISA_EXPLORER_HOME`` (default ``~/.cache/isa_explorer``)::

    downloads/FILE.pth(.part)   the mmseg checkpoint while it is fetched and converted
    zoo/NAME/                   the converted model: config.json, model.safetensors,
                                zoo.json (the entry), MODEL_CARD.md
    */.locks/                   lock files (several processes may ask for one model)

A model directory appears only complete: it is written to a temporary sibling and renamed.
Once it exists, loading it needs no network; the downloaded ``.pth`` is then deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from filelock import FileLock

from isa_explorer.convert import ConversionError, convert_checkpoint
from isa_explorer.paths import home
from isa_explorer.zoo.download import DownloadError, download
from isa_explorer.zoo.entries import ZooEntry, ZooError, entries, get_entry

ENTRY_FILE = "zoo.json"
zoo_home = home  # the zoo lives in the project's home folder


def model_dir(entry: ZooEntry | str) -> Path:
    """Where the converted model of ``entry`` (an entry or a name) lives in the cache."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    root = (zoo_home() / "zoo").resolve()
    target = (root / entry.name).resolve()
    if target.parent != root:  # entries are validated; this guards hand-made ones too
        raise ZooError(f"zoo entry name {entry.name!r} does not name a folder of {root}")
    return target


def cached_names() -> list[str]:
    """Names of the zoo models already in the cache (loading them is offline)."""
    try:
        return [name for name, entry in entries().items() if is_cached(entry)]
    except ZooError:
        return []


def is_cached(entry: ZooEntry | str) -> bool:
    """Whether ``entry``'s converted model is in the cache (then loading it is offline)."""
    d = model_dir(entry)
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def fetch(name: str | ZooEntry, progress: bool = True) -> Path:
    """The cached model directory of zoo model ``name``: downloaded and converted if needed.

    Args:
        name: Entry name, mmseg 0.x name or alias (see ``isa-explorer zoo list``).
        progress: Show a progress bar while downloading.

    Returns:
        The model directory (load it with :func:`isa_explorer.load_model`).

    Raises:
        ZooError: Unknown name, download failed (the message names the URL and the manual
            alternative), hash mismatch, a file that no head converts, or one of another
            head than the entry declares.
    """
    entry = get_entry(name) if isinstance(name, str) else name
    target = model_dir(entry)
    if is_cached(entry):
        return target
    locks = target.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(locks / f"{target.name}.lock"):  # one conversion per model, across processes
        if is_cached(entry):  # another process finished it meanwhile
            return target
        checkpoint = zoo_home() / "downloads" / entry.filename
        try:
            download(entry.url, checkpoint, entry.sha256, progress)
        except DownloadError as e:
            raise ZooError(
                f"{e}.\nWithout network access here: download it elsewhere, then either convert "
                f"it yourself, `isa-explorer convert {entry.filename} DIR` and pass DIR instead of "
                f"the name, or copy it to {checkpoint} and use the name again"
            ) from None
        _convert_into(entry, checkpoint, target)
        checkpoint.unlink(missing_ok=True)
    return target


def remove(name: str | ZooEntry) -> bool:
    """Delete a cached model (and any partial download of it); ``True`` if there was one."""
    entry = get_entry(name) if isinstance(name, str) else name
    target = model_dir(entry)
    found = target.exists()
    shutil.rmtree(target, ignore_errors=True)
    for leftover in (entry.filename, entry.filename + ".part"):
        path = zoo_home() / "downloads" / leftover
        found |= path.exists()
        path.unlink(missing_ok=True)
    return found


def read_entry(model_directory: str | Path) -> ZooEntry | None:
    """The zoo entry a cached model directory was made from (``None`` for other models)."""
    path = Path(model_directory) / ENTRY_FILE
    try:  # a missing file is an OSError too
        return ZooEntry.from_dict(json.loads(path.read_text()), str(path))
    except (OSError, ValueError):
        return None


def _convert_into(entry: ZooEntry, checkpoint: Path, target: Path) -> None:
    """Convert ``checkpoint`` and write the model directory ``target`` atomically."""
    try:
        model, report = convert_checkpoint(
            checkpoint, dataset=entry.dataset, align_corners=entry.align_corners
        )
    except ConversionError as e:
        what = entry.head_title or "mmseg"
        raise ZooError(
            f"{entry.name}: the downloaded file is not a usable {what} checkpoint ({e})"
        ) from None
    converted = replace(entry, head=report.spec.head)  # what the cache records
    if entry.head is not None and entry.head != converted.head:
        raise ZooError(
            f"{entry.name}: the entry declares the {entry.head!r} head ({entry.head_title}) but "
            f"{checkpoint.name} is a {converted.head!r} head checkpoint ({converted.head_title}); "
            "correct the entry's head or url, or leave its head out to take the file's"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, dataset=report.dataset)
        (tmp / ENTRY_FILE).write_text(json.dumps(converted.to_dict(), indent=2) + "\n")
        (tmp / "MODEL_CARD.md").write_text(model_card(converted, str(report)))
        shutil.rmtree(target, ignore_errors=True)  # an incomplete older copy
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_card(entry: ZooEntry, report: str = "") -> str:
    """The ``MODEL_CARD.md`` of a zoo model: what it is, its published numbers, its source."""
    lines = [
        f"# {entry.name}",
        "",
        (" ".join(p for p in (entry.head_title, entry.backbone) if p) or "Model")
        + f" trained on {entry.dataset_title}"
        + (f", {entry.crop[0]}x{entry.crop[1]} crops" if entry.crop else "")
        + (f", {entry.iters // 1000}k iterations" if entry.iters else "")
        + " (mmsegmentation model zoo, Apache-2.0).",
        "",
    ]
    if entry.miou is not None:
        ms = f", {entry.miou_ms:.2f} multi-scale + flip" if entry.miou_ms is not None else ""
        test = "whole image" if entry.test_mode == "whole" else f"slide {entry.test_crop}"
        lines += [f"Published val mIoU: **{entry.miou:.2f}** single scale ({test}){ms}.", ""]
    lines += [f"Source: {entry.url} (SHA-256 {entry.sha256}...).", ""]
    if report:
        lines += ["Conversion:", "", "```", report, "```", ""]
    return "\n".join(lines)
