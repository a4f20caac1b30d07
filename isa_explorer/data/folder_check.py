"""The data check of a folder dataset: every pair scanned, every problem named with its file.

Problems that block training (unless ``--allow-data-issues``): mask values outside the
classes (and not ignore), RGB mask colours outside the palette, image/mask size mismatches,
images without masks and masks without images, unreadable files, a missing split. Classes
that never appear only warn. The report also gives every class's pixel share. It is cached
under ``$ISA_EXPLORER_HOME/data_checks/``, keyed by the folder, the settings and every file's
size and modification time (a restart does not rescan); ``--check-data`` always rescans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from isa_explorer.data.common import DatasetNotFoundError, EmptySplitError
from isa_explorer.data.folder import (
    IGNORE,
    FolderConfig,
    FolderSpec,
    colour_codes,
    read_mask_array,
    resolve_spec,
    split_files,
    to_class_ids,
)
from isa_explorer.images import CorruptFileError, read_bands
from isa_explorer.paths import home

_CACHE_VERSION = 2
_SHOWN = 8  # values / colours listed per file


@dataclass
class Problem:
    """One problem: its kind, the file (relative to the root) and what is wrong."""

    kind: str
    file: str
    detail: str


@dataclass
class DataReport:
    """What :func:`check_folder` found.

    Attributes:
        root: The dataset folder.
        classes: Class names.
        splits: ``{split: {"pairs": n, "layout": ...}}``.
        problems: Blocking problems, each naming a file.
        warnings: Non-blocking findings (classes that never appear).
        pixels: Labelled pixels per class (all splits).
        ignored: Pixels of ``ignore_index``.
        image_mode: ``"rgb"`` or ``"raw"`` (how images are read).
        mean: Raw images: per-band mean over the ``train`` split (what a model normalises with).
        std: Raw images: per-band std.
        cached: Whether this report came from the cache.
    """

    root: str
    classes: list[str]
    splits: dict[str, dict] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pixels: list[int] = field(default_factory=list)
    ignored: int = 0
    image_mode: str = "rgb"
    mean: list[float] | None = None
    std: list[float] | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        """No blocking problem."""
        return not self.problems

    def format(self) -> str:
        """The report as text: counts, problems by file, warnings, class pixel shares."""
        parts = ", ".join(
            f"{s}: {v['pairs']} pairs ({v['layout']})" for s, v in self.splits.items()
        )
        lines = [f"data check of {self.root}: {len(self.classes)} classes; {parts}"]
        if self.cached:
            lines[0] += " [cached: files unchanged since the last check]"
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s) (they block training unless "
                         "--allow-data-issues):")  # fmt: skip
            lines += [f"  {p.kind}: {p.file}: {p.detail}" for p in self.problems]
        else:
            lines.append("no problems")
        lines += [f"warning: {w}" for w in self.warnings]
        total = sum(self.pixels) + self.ignored
        if total:
            shares = ", ".join(
                f"{n} {c / total:.1%}" for n, c in zip(self.classes, self.pixels, strict=True)
            )
            lines.append(f"pixels per class: {shares}; ignored {self.ignored / total:.1%}")
        if self.image_mode == "raw" and self.mean is not None:
            stats = ", ".join(
                f"{m:.4g} / {s:.4g}" for m, s in zip(self.mean, self.std, strict=True)
            )
            lines.append(f"raw images, {len(self.mean)} band(s), mean / std per band: {stats}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataReport:
        d = dict(d)
        d["problems"] = [Problem(**p) for p in d.get("problems", [])]
        return cls(**d)


class DataCheckError(ValueError):
    """The data check found problems that block training (the message is the report)."""


class BandStats:
    """Per-band mean and std of raw images, and a check that all have one band count."""

    def __init__(self) -> None:
        self.sum = self.sumsq = None
        self.count = 0
        self.first: str | None = None

    def add(self, bands: np.ndarray, name: str, accumulate: bool = True) -> list[Problem]:
        """Check one image ``(C, H, W)`` (a problem if its band count is not the first's) and,
        with ``accumulate``, add it to the statistics."""
        flat = bands.reshape(bands.shape[0], -1).astype(np.float64)
        if self.sum is None:
            self.sum, self.sumsq, self.first = np.zeros(len(flat)), np.zeros(len(flat)), name
        if len(flat) != len(self.sum):
            detail = f"{len(flat)} band(s), but {self.first} has {len(self.sum)}"
            return [Problem("band count mismatch", name, detail)]
        if accumulate:
            self.sum += flat.sum(1)
            self.sumsq += (flat**2).sum(1)
            self.count += flat.shape[1]
        return []

    def mean_std(self) -> tuple[list[float], list[float]] | None:
        if not self.count:
            return None
        mean = self.sum / self.count
        std = np.sqrt(np.maximum(self.sumsq / self.count - mean**2, 0.0))
        return [float(v) for v in mean], [float(max(v, 1e-6)) for v in std]


def _scan_pair(
    image: Path,
    mask: Path,
    spec: FolderSpec,
    root: Path,
    pixels: np.ndarray,
    stats: BandStats | None = None,
    accumulate: bool = True,
) -> tuple[list[Problem], int]:
    """Problems of one pair; adds its class pixels to ``pixels``; returns the ignored count."""
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    problems = []
    image_size = None
    try:
        if spec.raw:
            bands = read_bands(image)  # (C, H, W) float32
            image_size = bands.shape[1:]
            if stats is not None:
                problems += stats.add(bands, rel(image), accumulate)
        else:
            with Image.open(image) as im:
                im.load()  # decodes: a truncated file fails here
                image_size = im.size[::-1]  # (H, W)
    except Exception as e:  # noqa: BLE001  (PIL raises many kinds on bad files)
        problems.append(Problem("unreadable image", rel(image), str(e)))
    try:
        stored = read_mask_array(mask)
    except CorruptFileError as e:
        return [*problems, Problem("unreadable mask", rel(mask), str(e).split(": ", 1)[-1])], 0
    if image_size is not None and tuple(stored.shape[:2]) != tuple(image_size):
        (h, w), (ih, iw) = stored.shape[:2], image_size
        detail = f"mask is {h}x{w} but image {rel(image)} is {ih}x{iw} (HxW)"
        problems.append(Problem("size mismatch", rel(mask), detail))
    k, ignore = spec.info.num_classes, spec.ignore_index
    if stored.ndim == 3:
        lut = spec.code_to_class
        unknown = [v for v in np.unique(colour_codes(stored)).tolist() if v not in lut]
        if unknown:
            shown = ", ".join(f"({v >> 16}, {v >> 8 & 255}, {v & 255})" for v in unknown[:_SHOWN])
            more = f" and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else ""
            detail = f"{shown}{more} are not in the palette"
            problems.append(Problem("unknown mask colours", rel(mask), detail))
    else:
        offset = 1 if spec.reduce_zero_label else 0
        unlabelled = {ignore, 0} if spec.reduce_zero_label else {ignore}
        values = np.unique(stored).tolist()
        bad = [v for v in values if v not in unlabelled and not offset <= v < k + offset]
        if bad:
            zero = " (reduce_zero_label: 0 is ignored)" if offset else ""
            more = " ..." if len(bad) > _SHOWN else ""
            detail = (
                f"values {bad[:_SHOWN]}{more} are neither classes {offset}..{k - 1 + offset}"
                f"{zero} nor ignore {ignore}"
            )
            problems.append(Problem("out-of-range mask values", rel(mask), detail))
    ids = to_class_ids(stored, spec)  # (H, W): IGNORE where unlabelled or not a class
    labelled = ids != IGNORE
    pixels += np.bincount(ids[labelled], minlength=k)
    return problems, int((~labelled).sum())


def scan_folder(
    root: str | Path, cfg: FolderConfig | None = None, splits: Sequence[str] = ("train", "val")
) -> DataReport:
    """Scan every pair of ``splits`` of ``root`` (no cache); band statistics come from the
    first split (the training one)."""
    root, cfg = Path(root).expanduser(), cfg or FolderConfig()
    spec = resolve_spec(root, cfg)
    report = DataReport(str(root), list(spec.info.class_names), image_mode=spec.info.image_mode)
    pixels = np.zeros(spec.info.num_classes, np.int64)
    stats = BandStats()
    for split in splits:
        try:
            files = split_files(root, split, cfg)
        except (DatasetNotFoundError, EmptySplitError) as e:
            report.problems.append(Problem("missing split", split, str(e)))
            continue
        report.splits[split] = {"pairs": len(files.pairs), "layout": files.layout}
        for img in files.orphan_images:
            report.problems.append(Problem("orphan image", img.relative_to(root).as_posix(),
                                           "no mask with the same name"))  # fmt: skip
        for m in files.orphan_masks:
            report.problems.append(Problem("orphan mask", m.relative_to(root).as_posix(),
                                           "no image with the same name"))  # fmt: skip
        for image, mask in files.pairs:
            first = split == splits[0]
            found, ignored = _scan_pair(image, mask, spec, root, pixels, stats, first)
            report.problems += found
            report.ignored += ignored
    report.pixels = [int(v) for v in pixels]
    if spec.raw and stats.mean_std() is not None:
        report.mean, report.std = stats.mean_std()
    report.warnings = [
        f"class {name!r} ({k}) never appears in the masks"
        for k, (name, n) in enumerate(zip(report.classes, report.pixels, strict=True))
        if n == 0
    ]
    return report


def _cache_key(root: Path, cfg: FolderConfig, splits: Sequence[str]) -> str:
    """A hash of the folder, the settings, the splits and every file's (path, size, mtime)."""
    head = [_CACHE_VERSION, str(root.resolve()), dataclasses.asdict(cfg), list(splits)]
    h = hashlib.sha256(json.dumps(head).encode())
    for sub in ("images", "masks", "splits", "classes.json"):
        path = root / sub
        found = sorted(path.rglob("*")) if path.is_dir() else [path] if path.is_file() else []
        for f in found:
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def check_folder(
    root: str | Path,
    cfg: FolderConfig | None = None,
    rescan: bool = False,
    splits: Sequence[str] = ("train", "val"),
) -> DataReport:
    """:func:`scan_folder`, cached by file list and modification times.

    Args:
        root: The dataset folder.
        cfg: Its settings.
        rescan: Ignore the cache (``--check-data``).
        splits: The splits training uses, the training split first (its band statistics).
    """
    root, cfg = Path(root).expanduser(), cfg or FolderConfig()
    resolve_spec(root, cfg)  # a missing folder or class list fails before any scan
    cache = home() / "data_checks" / f"{_cache_key(root, cfg, splits)}.json"
    if not rescan and cache.is_file():
        try:
            report = DataReport.from_dict(json.loads(cache.read_text()))
            report.cached = True
            return report
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache entry: scan again
    report = scan_folder(root, cfg, splits)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(report.to_dict()))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home: the check still runs, only uncached
    return report
