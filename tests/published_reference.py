"""The published table of mmseg's context-head models (tests/fixtures/context_heads_published.md,
a copy of the reference made from mmsegmentation 1.2.2's metafiles and configs), parsed once for
the tests that check the recipes (test_configs) and the zoo (test_zoo_table) against it: the
project's own tables are never the reference of their own tests."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from isa_explorer import heads

REFERENCE = Path(__file__).parent / "fixtures" / "context_heads_published.md"
DATASETS = {"Cityscapes": "cityscapes", "ADE20K": "ade20k", "Pascal VOC 2012 + Aug": "voc"}
_TEST_LINE = re.compile(
    r"^- (.+) (\d+x\d+): (\w+)[^;]*;.*Resize scale \((\d+), (\d+)\).*align_corners=(True|False)"
)


@dataclass(frozen=True)
class Published:
    """One checkpoint row, with its section's model and test settings."""

    title: str  # the section's heading, "DANet (DAHead)"
    head: str  # the project's registry name of its head, "da"
    dataset: str  # "cityscapes", "ade20k", "voc"
    backbone: str  # "R-50-D8"
    crop: tuple[int, int]
    iters: int
    gpus: int
    batch: int  # images per GPU
    miou: float
    miou_ms: float | None
    config: str  # the mmseg 1.x config name
    test: str  # "whole" or "slide crop (769, 769) stride (513, 513)"
    url: str
    test_mode: str  # "whole" or "slide", from the section's test settings
    test_scale: tuple[int, int]  # the test pipeline's Resize scale (W, H)
    align_corners: bool


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _parse() -> tuple[list[Published], dict[str, dict]]:
    by_type = {heads.get(n).mmseg.head_type: n for n in heads.names() if heads.get(n).mmseg}
    rows: list[Published] = []
    head_args: dict[str, dict] = {}
    section: list[dict[str, str]] = []
    tests: dict[tuple[str, str], tuple[str, tuple[int, int], bool]] = {}
    title = head = columns = None

    def close_section() -> None:  # the test settings follow a section's table
        for row in section:
            mode, scale, align = tests[(row["dataset"], row["crop"])]
            gpus, batch = (int(v) for v in row["batch"].split("x"))
            ms = row["mIoU (ms+flip)"]
            rows.append(
                Published(
                    title=title,
                    head=head,
                    dataset=DATASETS[row["dataset"]],
                    backbone=row["backbone"],
                    crop=tuple(int(v) for v in row["crop"].split("x")),
                    iters=int(row["iters"]),
                    gpus=gpus,
                    batch=batch,
                    miou=float(row["mIoU"]),
                    miou_ms=None if ms == "-" else float(ms),
                    config=row["config (1.x name)"].strip("`"),
                    test=row["test"],
                    url=row["weights"],
                    test_mode=mode,
                    test_scale=scale,
                    align_corners=align,
                )
            )
        section.clear()
        tests.clear()

    for line in REFERENCE.read_text().splitlines():
        if line.startswith("## "):
            close_section()
            title, columns = line[3:], None
            m = re.match(r"^.* \((\w+Head)\)$", title)
            head = by_type[m[1]] if m else None
        elif line.startswith("| ") and columns is None:
            columns = _cells(line)
        elif line.startswith("| ") and not line.startswith("| ---"):
            section.append(dict(zip(columns, _cells(line), strict=True)))
        elif m := _TEST_LINE.match(line):
            tests[(m[1], m[2])] = (m[3], (int(m[4]), int(m[5])), m[6] == "True")
        elif m := re.match(r"^- head: `\w+\((.*)\)`", line):
            call = ast.parse(f"f({m[1]})", mode="eval").body
            head_args[head] = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    close_section()
    return rows, head_args


#: Every checkpoint row in the reference's order, and each head's published arguments.
ROWS, HEAD_ARGS = _parse()
