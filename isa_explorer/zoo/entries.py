"""The released models of mmsegmentation's model zoo for ISANet and five context heads, by name.

Each entry is one of the 84 published runs: ISANet's 16, NonLocalNet's, CCNet's, DANet's and
GCNet's 16 each and EMANet's 4 (:mod:`isa_explorer.zoo.released` holds the table). Its name is the
run's config name in :data:`isa_explorer.configs.CONFIGS` (mmseg 1.x style,
``danet_r50-d8_4xb2-80k_cityscapes-512x1024``), so the recipe that reproduces a model and the model
itself share one name; head, dataset, crop, schedule and test mode come from that config. The
released file keeps the mmseg 0.x name (``danet_r50-d8_512x1024_80k_cityscapes``), which is
accepted too, and ends in the first 8 hex digits of its SHA-256, which the download is checked
against.

Short aliases ``{dataset}-{model}-r50`` / ``-r101`` (``cityscapes-ccnet-r50``,
``ade20k-danet-r101``, ``voc-isanet-r50``; ``dataset`` is cityscapes, ade20k or voc, ``model`` is
mmseg's model name: isanet, nonlocal, ccnet, danet, gcnet, emanet) name, among one model's runs on
that dataset with that backbone, the one with the best published single-scale mIoU. A tie goes to
the higher multi-scale + flip mIoU (an unpublished one counts as the lowest), then to the run
listed first in mmseg's table (and ``isa-explorer zoo list``); the published numbers have no tie
today. ISANet's keep their older aliases ``{dataset}-r50`` / ``-r101`` (``cityscapes-r50``).

Overrides, for mirrors and private zoos:

* ``ISA_EXPLORER_ZOO_URL``: replaces the per-model folder of the built-in entries
  (``https://download.openmmlab.com/mmsegmentation/v0.5/{isanet,nonlocal_net,ccnet,danet,gcnet,
  emanet}``): a mirror holds every released file at ``{base}/{0.x name}/{file}`` (the 0.x names
  of the six models differ, so one folder holds them all).
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

from isa_explorer import heads
from isa_explorer.configs import CONFIGS
from isa_explorer.evaluation.inference import SLIDE_CROP, SLIDE_STRIDE
from isa_explorer.zoo.released import FAMILIES, RELEASED, Family

BASE_URL_ENV = "ISA_EXPLORER_ZOO_URL"
ZOO_FILE_ENV = "ISA_EXPLORER_ZOO_FILE"

_DATASET_TITLES = {"cityscapes": "Cityscapes", "ade20k": "ADE20K", "voc": "PASCAL VOC 2012 aug"}
_FILE = re.compile(r"^(?P<old>(?P<model>[a-z]+)_.+)_\d{8}_\d{6}-(?P<sha>[0-9a-f]{8})\.pth$")
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a name is also a folder of the cache
_FAMILY_OF_HEAD = {f.head: f for f in FAMILIES}


class ZooError(OSError):
    """A zoo model cannot be found, downloaded, verified or converted (the message says why)."""


@dataclass(frozen=True)
class ZooEntry:
    """One downloadable model.

    Attributes:
        name: The entry's name (the mmseg 1.x config name for the released models).
        url: Where the mmseg-format ``.pth`` is served.
        sha256: Hex prefix (8+ digits) of the file's SHA-256.
        head: The registered head (:mod:`isa_explorer.heads`) of the model: ``"isa"``,
            ``"nl"``, ``"cc"``, ``"da"``, ``"gc"``, ``"ema"``, ...; ``None``: whichever head
            the file has. A file of another head than the declared one is refused; the cache
            records the converted file's head.
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
    head: str | None = None
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
        """The dataset's name for people (``"Cityscapes"``; ``"custom"`` when unknown)."""
        return _DATASET_TITLES.get(self.dataset or "", self.dataset or "custom")

    @property
    def family(self) -> Family | None:
        """The mmseg model of the entry's head (``None`` for heads mmseg has no zoo of)."""
        return _FAMILY_OF_HEAD.get(self.head)

    @property
    def head_title(self) -> str:
        """The model and its mmseg head, ``"DANet (DAHead)"``; ``"fcn head"`` for a head of no
        released model, ``""`` for an entry that leaves the head to its file."""
        if (family := self.family) is not None:
            return f"{family.title} ({family.head_type})"
        return f"{self.head} head" if self.head else ""

    @property
    def title(self) -> str:
        """What the model is, ``"DANet (DAHead) R-50-D8, Cityscapes"``."""
        what = " ".join(p for p in (self.head_title, self.backbone) if p)
        return f"{what}, {self.dataset_title}" if what else self.dataset_title

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
        if data.get("head") is not None and data["head"] not in heads.names():
            raise ZooError(
                f"{source}: head {data['head']!r} is not a registered head; choose from "
                f"{', '.join(heads.names())}, or leave it out to take the file's head"
            )
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


def _released(base_url: str | None) -> list[ZooEntry]:
    """The built-in entries; ``base_url`` (a mirror) replaces every model's download folder."""
    # 0.x name -> CONFIGS name: ..._512x1024_40k_cityscapes -> ..._4xb2-40k_cityscapes-512x1024
    config_names = {re.sub(r"_4xb\d-(\d+k_\w+)-(\d+x\d+)$", r"_\2_\1", n): n for n in CONFIGS}
    entries = []
    for family in FAMILIES:
        base = (base_url or family.base_url).rstrip("/")
        for file, miou, miou_ms in RELEASED[family.model]:
            old, sha = _FILE.match(file).group("old", "sha")
            cfg = CONFIGS[config_names[old]]
            slide = cfg.evaluation.mode == "slide"
            entries.append(
                ZooEntry(
                    name=cfg.name,
                    url=f"{base}/{old}/{file}",
                    sha256=sha,
                    head=cfg.model["head"],
                    dataset=cfg.dataset,
                    backbone="R-101-D8" if "_r101-" in old else "R-50-D8",
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
    short = short_aliases(entries)
    return [replace(e, aliases=(e.old_name, *short.get(e.name, ()))) for e in entries]


def short_aliases(table: list[ZooEntry]) -> dict[str, tuple[str, ...]]:
    """Entry name -> its short aliases, by the module's rule (best single-scale mIoU of a
    model, dataset and backbone; ties to the higher ms+flip mIoU, then the first listed).

    Args:
        table: Entries of known heads, in the order that breaks the last ties.

    Returns:
        ``{name: ("cityscapes-danet-r50", ...)}`` for the entries that win an alias;
        ISANet's also get ``"cityscapes-r50"``-style aliases, first.
    """
    best: dict[str, ZooEntry] = {}
    for e in table:
        key = f"{e.dataset}-{e.family.model}-r{e.backbone.split('-')[1]}"
        if key not in best or _rank(e) > _rank(best[key]):  # strictly better: the first stays
            best[key] = e
    out: dict[str, tuple[str, ...]] = {}
    for alias, e in best.items():
        bare = (alias.replace(f"-{e.family.model}-", "-"),) if e.family.bare_aliases else ()
        out[e.name] = (*bare, alias)
    return out


def _rank(e: ZooEntry) -> tuple[float, float]:
    return (e.miou, e.miou_ms if e.miou_ms is not None else float("-inf"))


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
    out = {e.name: e for e in _released(os.environ.get(BASE_URL_ENV) or None)}
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
