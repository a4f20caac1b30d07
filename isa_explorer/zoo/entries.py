"""The released ISANet models of mmsegmentation's model zoo, by name.

Each entry is one of the 16 published runs. Its name is the run's config name in
:data:`isa_explorer.configs.CONFIGS` (mmseg 1.x style, ``isanet_r50-d8_4xb2-80k_cityscapes-512x1024``),
so the recipe that reproduces a model and the model itself share one name; dataset, crop,
schedule and test mode come from that config. The released file keeps the mmseg 0.x name
(``isanet_r50-d8_512x1024_80k_cityscapes``), which is accepted too, and ends in the first 8 hex
digits of its SHA-256, which the download is checked against. Short aliases
(``cityscapes-r50``, ``ade20k-r101``, ...) name the entry with the best published single-scale
mIoU for that dataset and backbone.

Overrides, for mirrors and private zoos:

* ``ISA_EXPLORER_ZOO_URL``: replaces the base URL of the built-in entries
  (``{base}/{0.x name}/{file}``).
* ``ISA_EXPLORER_ZOO_FILE``: a JSON file of extra or replacing entries, a list of objects (or
  ``{"models": [...]}``) with ``name``, ``url`` and ``sha256`` (a prefix of at least 8 hex
  digits) and optionally any other field of :class:`ZooEntry`.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import chain
from pathlib import Path
from typing import Any

from isa_explorer.configs import CONFIGS
from isa_explorer.evaluation.inference import SLIDE_CROP, SLIDE_STRIDE

#: Where mmsegmentation serves the released ISANet checkpoints.
DEFAULT_BASE_URL = "https://download.openmmlab.com/mmsegmentation/v0.5/isanet"
BASE_URL_ENV = "ISA_EXPLORER_ZOO_URL"
ZOO_FILE_ENV = "ISA_EXPLORER_ZOO_FILE"

_DATASET_TITLES = {"cityscapes": "Cityscapes", "ade20k": "ADE20K", "voc": "PASCAL VOC 2012 aug"}
_FILE = re.compile(r"^(?P<old>isanet_.+)_\d{8}_\d{6}-(?P<sha>[0-9a-f]{8})\.pth$")
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a name is also a folder of the cache

# (released file, mIoU, mIoU ms+flip): mmsegmentation's configs/isanet/README.md.
_RELEASED = (
    ("isanet_r50-d8_512x1024_40k_cityscapes_20210901_054739-981bd763.pth", 78.49, 79.44),
    ("isanet_r50-d8_512x1024_80k_cityscapes_20210901_074202-89384497.pth", 78.68, 80.25),
    ("isanet_r50-d8_769x769_40k_cityscapes_20210903_050200-4ae7e65b.pth", 78.70, 80.28),
    ("isanet_r50-d8_769x769_80k_cityscapes_20210903_101126-99b54519.pth", 79.29, 80.53),
    ("isanet_r101-d8_512x1024_40k_cityscapes_20210901_145553-293e6bd6.pth", 79.58, 81.05),
    ("isanet_r101-d8_512x1024_80k_cityscapes_20210901_145243-5b99c9b2.pth", 80.32, 81.58),
    ("isanet_r101-d8_769x769_40k_cityscapes_20210903_111320-509e7224.pth", 79.68, 80.95),
    ("isanet_r101-d8_769x769_80k_cityscapes_20210903_111319-24f71dfa.pth", 80.61, 81.59),
    ("isanet_r50-d8_512x512_80k_ade20k_20210903_124557-6ed83a0c.pth", 41.12, 42.35),
    ("isanet_r50-d8_512x512_160k_ade20k_20210903_104850-f752d0a3.pth", 42.59, 43.07),
    ("isanet_r101-d8_512x512_80k_ade20k_20210903_162056-68b235c2.pth", 43.51, 44.38),
    ("isanet_r101-d8_512x512_160k_ade20k_20210903_211431-a7879dcd.pth", 43.80, 45.40),
    ("isanet_r50-d8_512x512_20k_voc12aug_20210901_164838-79d59b80.pth", 76.78, 77.79),
    ("isanet_r50-d8_512x512_40k_voc12aug_20210901_151349-7d08a54e.pth", 76.20, 77.22),
    ("isanet_r101-d8_512x512_20k_voc12aug_20210901_115805-3ccbf355.pth", 78.46, 79.16),
    ("isanet_r101-d8_512x512_40k_voc12aug_20210901_145814-bc71233b.pth", 78.12, 79.04),
)


class ZooError(OSError):
    """A zoo model cannot be found, downloaded, verified or converted (the message says why)."""


@dataclass(frozen=True)
class ZooEntry:
    """One downloadable model.

    Attributes:
        name: The entry's name (the mmseg 1.x config name for the released models).
        url: Where the mmseg-format ``.pth`` is served.
        sha256: Hex prefix (8+ digits) of the file's SHA-256.
        dataset: ``"cityscapes"``, ``"ade20k"``, ``"voc"`` (class names, palette) or ``None``.
        backbone: ``"R-50-D8"`` / ``"R-101-D8"``.
        crop: Training crop ``(H, W)``.
        iters: Training iterations.
        test_mode: ``"whole"`` or ``"slide"``: how the published mIoU was measured.
        test_crop: Slide window ``(H, W)`` (``None`` for whole-image inference).
        test_stride: Slide step ``(H, W)`` (``None`` for whole-image inference).
        miou: Published single-scale mIoU (%).
        miou_ms: Published multi-scale + flip mIoU (%).
        align_corners: ``align_corners`` of the logits' upsampling the model was trained with.
        aliases: Other names of the entry (the 0.x name, a short alias).
        old_name: The mmseg 0.x config name (the released file's prefix).
    """

    name: str
    url: str
    sha256: str
    dataset: str | None = None
    backbone: str = ""
    crop: tuple[int, int] | None = None
    iters: int | None = None
    test_mode: str = "whole"
    test_crop: tuple[int, int] | None = None
    test_stride: tuple[int, int] | None = None
    miou: float | None = None
    miou_ms: float | None = None
    align_corners: bool = False
    aliases: tuple[str, ...] = field(default=())
    old_name: str | None = None

    @property
    def filename(self) -> str:
        """The file name of the download (the last part of the URL's path)."""
        name = urllib.parse.urlparse(self.url).path.rstrip("/").rsplit("/", 1)[-1]
        return name if name and _NAME.match(name) else f"{self.name}.pth"

    @property
    def dataset_title(self) -> str:
        return _DATASET_TITLES.get(self.dataset or "", self.dataset or "custom")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what a cached model's ``zoo.json`` holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "entry") -> ZooEntry:
        """An entry from JSON fields; raises :class:`ZooError` naming a bad field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ZooError(f"{source}: unknown field(s) {unknown}; known: {sorted(known)}")
        for key in ("name", "url", "sha256"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ZooError(f"{source}: field {key!r} is required (a string)")
        name, url = data["name"], data["url"]
        if not _NAME.match(name) or ".." in name:
            raise ZooError(
                f"{source}: name {name!r} must be letters, digits, '.', '_' or '-' (it names the "
                "model's folder in the cache)"
            )
        if not url.startswith(("http://", "https://", "file://")):
            raise ZooError(f"{source}: url {url!r} must start with http://, https:// or file://")
        aliases = data.get("aliases") or []
        if not isinstance(aliases, list | tuple) or not all(isinstance(a, str) for a in aliases):
            raise ZooError(f"{source}: aliases must be a list of names, got {aliases!r}")
        for key in ("miou", "miou_ms"):
            if data.get(key) is not None and not isinstance(data[key], int | float):
                raise ZooError(f"{source}: {key} must be a number, got {data[key]!r}")
        sha = data["sha256"].lower()
        if not _HEX.match(sha):
            raise ZooError(
                f"{source}: sha256 {data['sha256']!r} must be 8 to 64 hex digits (the file's "
                "SHA-256 or its prefix; `sha256sum FILE` prints it)"
            )
        if data.get("test_mode", "whole") not in ("whole", "slide"):
            raise ZooError(f"{source}: test_mode must be 'whole' or 'slide'")
        kw = dict(data, sha256=sha, aliases=tuple(aliases))
        for key in ("crop", "test_crop", "test_stride"):
            if (value := kw.get(key)) is not None:
                if not (isinstance(value, list | tuple) and len(value) == 2):
                    raise ZooError(f"{source}: {key} must be [H, W], got {value!r}")
                kw[key] = (int(value[0]), int(value[1]))
        if kw.get("test_mode") == "slide":
            kw["test_crop"] = kw.get("test_crop") or SLIDE_CROP
            kw["test_stride"] = kw.get("test_stride") or SLIDE_STRIDE
        return cls(**kw)


def _released(base_url: str) -> list[ZooEntry]:
    # 0.x name -> CONFIGS name: ..._512x1024_40k_cityscapes -> ..._4xb2-40k_cityscapes-512x1024
    config_names = {re.sub(r"_4xb\d-(\d+k_\w+)-(\d+x\d+)$", r"_\2_\1", n): n for n in CONFIGS}
    entries = []
    for file, miou, miou_ms in _RELEASED:
        old, sha = _FILE.match(file).group("old", "sha")
        cfg = CONFIGS[config_names[old]]
        slide = cfg.evaluation.mode == "slide"
        entries.append(
            ZooEntry(
                name=cfg.name,
                url=f"{base_url.rstrip('/')}/{old}/{file}",
                sha256=sha,
                dataset=cfg.dataset,
                backbone="R-101-D8" if "r101" in old else "R-50-D8",
                crop=tuple(cfg.crop_size),
                iters=cfg.iters,
                test_mode=cfg.evaluation.mode,
                test_crop=tuple(cfg.evaluation.crop) if slide else None,
                test_stride=tuple(cfg.evaluation.stride) if slide else None,
                miou=miou,
                miou_ms=miou_ms,
                align_corners=bool(cfg.model.get("align_corners", False)),
                old_name=old,
            )
        )
    # Short aliases {dataset}-r50 / -r101 name the best single-scale entry of each pair.
    best: dict[str, ZooEntry] = {}
    for e in entries:
        alias = f"{e.dataset}-r{e.backbone.split('-')[1]}"
        if alias not in best or e.miou > best[alias].miou:
            best[alias] = e
    chosen = {e.name: a for a, e in best.items()}
    return [
        replace(e, aliases=tuple(a for a in (e.old_name, chosen.get(e.name)) if a)) for e in entries
    ]


def _user_entries(path: Path) -> list[ZooEntry]:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ZooError(f"{ZOO_FILE_ENV}={path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise ZooError(f"{ZOO_FILE_ENV}={path} is not valid JSON: {e}") from None
    if isinstance(data, Mapping):
        data = data.get("models", data.get("entries"))
    if not isinstance(data, list):
        raise ZooError(
            f"{ZOO_FILE_ENV}={path} must hold a list of entries (or {{'models': [...]}})"
        )
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise ZooError(f"{path}: entry {i} is a {type(item).__name__}, not an object")
        out.append(ZooEntry.from_dict(item, f"{path}: entry {i}"))
    return out


def entries() -> dict[str, ZooEntry]:
    """Every entry by name: the released models, then ``ISA_EXPLORER_ZOO_FILE``'s (which add
    to them or replace those of the same name). Read afresh on each call, so the environment
    variables take effect at once."""
    out = {e.name: e for e in _released(os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)}
    user_file = os.environ.get(ZOO_FILE_ENV)
    if user_file:
        for e in _user_entries(Path(user_file).expanduser()):
            out[e.name] = e
    return out


def find_entry(name: str) -> ZooEntry | None:
    """The entry called ``name`` (its name, 0.x name or alias; any case), else ``None``."""
    key = str(name).strip().lower().removesuffix(".pth")
    table = entries().values()
    named = (e for e in table if e.name.lower() == key)
    aliased = (e for e in table if key in (a.lower() for a in e.aliases))
    return next(chain(named, aliased), None)  # names first: an alias may name a user entry


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; :class:`ZooError` listing the short names otherwise."""
    entry = find_entry(name)
    if entry is None:
        short = sorted(a for e in entries().values() for a in e.aliases if "_" not in a)
        raise ZooError(
            f"{name!r} is not a zoo model; `isa-explorer zoo list` shows them all "
            f"(short names: {', '.join(short)})"
        )
    return entry
