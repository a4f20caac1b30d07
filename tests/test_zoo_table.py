"""The zoo's 84 entries against the published reference (tests/fixtures/context_heads_published.md,
parsed by tests/published_reference.py, not read back from the zoo's own table): names, URLs,
hash prefixes, mIoU, test settings; the short aliases' rule; the mirror rule; ``zoo list``; the
generated docs tables."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from published_reference import DATASETS, ROWS, Published

from isa_explorer import zoo
from isa_explorer.configs import CONFIGS
from isa_explorer.zoo.cli import aliases_table, main, markdown_tables
from isa_explorer.zoo.entries import short_aliases
from isa_explorer.zoo.released import FAMILIES

ROOT = Path(__file__).parents[1]
_SLIDE = re.compile(r"^slide crop \((\d+), (\d+)\) stride \((\d+), (\d+)\)$")


@pytest.fixture(autouse=True)
def _released_only(monkeypatch):
    monkeypatch.delenv("ISA_EXPLORER_ZOO_FILE", raising=False)
    monkeypatch.delenv("ISA_EXPLORER_ZOO_URL", raising=False)


def test_the_reference_is_read_whole():
    per_model = {}
    for row in ROWS:
        per_model[row.title] = per_model.get(row.title, 0) + 1
    assert per_model == {
        "NonLocalNet (NLHead)": 16,
        "CCNet (CCHead)": 16,
        "DANet (DAHead)": 16,
        "GCNet (GCHead)": 16,
        "EMANet (EMAHead)": 4,
        "ISANet (ISAHead)": 16,
    }
    assert sum(r.test.startswith("slide") for r in ROWS) == 22
    assert sum(r.miou_ms is None for r in ROWS) == 8  # NL's and DA's 512x1024


def test_every_entry_equals_its_published_row():
    table = zoo.entries()
    assert len(table) == 84 and len(ROWS) == 84
    assert set(table) == {r.config for r in ROWS}
    assert set(table) == {n for n, c in CONFIGS.items() if c.dataset in DATASETS.values()}
    for row in ROWS:
        e = table[row.config]
        sha = re.search(r"-([0-9a-f]{8})\.pth$", row.url)[1]
        assert (e.url, e.sha256, e.filename) == (row.url, sha, row.url.rsplit("/", 1)[1])
        assert (e.miou, e.miou_ms) == (row.miou, row.miou_ms), e.name
        assert e.title == f"{row.title} {row.backbone}, {e.dataset_title}"
        assert (e.dataset, e.backbone, e.crop, e.iters) == (
            row.dataset,
            row.backbone,
            row.crop,
            row.iters,
        ), e.name
        if row.test == "whole":
            assert (e.test_mode, e.test_crop, e.test_stride) == ("whole", None, None), e.name
        else:
            h, w, sh, sw = map(int, _SLIDE.match(row.test).groups())
            assert (e.test_mode, e.test_crop, e.test_stride) == ("slide", (h, w), (sh, sw))
        assert e.align_corners == row.align_corners, e.name
        assert zoo.get_entry(e.old_name) is not None and e.old_name in row.url


def _best(rows: list[Published]) -> Published:
    """The rule, restated: best single-scale, then best ms+flip (none is lowest), then first."""
    top = max(rows, key=lambda r: (r.miou, -1.0 if r.miou_ms is None else r.miou_ms))
    return next(r for r in rows if (r.miou, r.miou_ms) == (top.miou, top.miou_ms))


def test_each_short_alias_names_the_best_single_scale_run_of_its_group():
    model_of = {f"{f.title} ({f.head_type})": f.model for f in FAMILIES}
    groups: dict[str, list[Published]] = {}
    for r in ROWS:
        alias = f"{r.dataset}-{model_of[r.title]}-r{r.backbone.split('-')[1]}"
        groups.setdefault(alias, []).append(r)
    assert len(groups) == 32  # 5 models x 3 datasets x 2 backbones, EMANet's 2
    for alias, rows in groups.items():
        assert zoo.get_entry(alias.upper()).name == _best(rows).config, alias
    shorts = {a for e in zoo.entries().values() for a in e.aliases if "_" not in a}
    assert shorts == set(groups) | {a.replace("-isanet-", "-") for a in groups if "isanet" in a}
    assert zoo.get_entry("cityscapes-danet-r50").miou == 79.34  # the best, no ms+flip published
    with pytest.raises(zoo.ZooError, match="not a zoo model.*cityscapes-ccnet-r50"):
        zoo.get_entry("cityscapes-ccnet-r18")


def test_isanets_older_aliases_still_name_the_same_runs():
    for dataset in ("cityscapes", "ade20k", "voc"):
        for depth in ("r50", "r101"):
            old = zoo.get_entry(f"{dataset}-{depth}")
            assert old == zoo.get_entry(f"{dataset}-isanet-{depth}") and old.head == "isa"
    assert zoo.get_entry("cityscapes-r50").name == "isanet_r50-d8_4xb2-80k_cityscapes-769x769"


def test_ties_go_to_the_higher_ms_flip_then_to_the_first_listed():
    e = zoo.get_entry("danet_r50-d8_4xb2-40k_cityscapes-512x1024")
    a, b, c = (replace(e, name=n, miou=80.0) for n in "abc")
    assert short_aliases([a, replace(b, miou_ms=81.0), c])["b"] == ("cityscapes-danet-r50",)
    assert set(short_aliases([a, b, c])) == {"a"}  # equal in both: the first listed
    isa = replace(zoo.get_entry("cityscapes-r50"), name="i")
    assert short_aliases([isa])["i"] == ("cityscapes-r50", "cityscapes-isanet-r50")


def test_a_mirror_holds_every_model_under_one_folder(monkeypatch):
    for name in ("cityscapes-danet-r50", "cityscapes-nonlocal-r101", "voc-r50"):
        e = zoo.get_entry(name)
        assert e.url == f"{e.family.base_url}/{e.old_name}/{e.filename}"
        monkeypatch.setenv("ISA_EXPLORER_ZOO_URL", "http://mirror.example/zoo/")
        mirrored = zoo.get_entry(name)
        assert mirrored.url == f"http://mirror.example/zoo/{e.old_name}/{e.filename}"
        assert mirrored.sha256 == e.sha256
        monkeypatch.delenv("ISA_EXPLORER_ZOO_URL")


def test_zoo_list_prints_every_entry(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.split(" ", 1)[0] in zoo.entries()]
    assert len(rows) == 84
    danet = next(r for r in rows if r.startswith("danet_r50-d8_4xb2-80k_cityscapes-512x1024"))
    assert re.search(
        r"cityscapes-danet-r50\s+DANet\s+Cityscapes\s+R-50-D8.*whole\s+79\.34\s+-", danet
    )
    assert main(["list", "--head", "emanet"]) == 0
    assert len([r for r in capsys.readouterr().out.splitlines() if r.startswith("emanet_")]) == 4
    assert main(["list", "--head", "psp"]) == 1
    assert "no zoo entry has the head 'psp'" in capsys.readouterr().err


def test_the_docs_tables_are_the_generated_ones():
    readme = (ROOT / "README.md").read_text()
    assert aliases_table() in readme
    assert aliases_table().count("\n") == 33  # header, rule, 32 aliases (ISANet's on one row)
    docs = (ROOT / "docs" / "mmseg_checkpoints.md").read_text()
    assert markdown_tables() in docs
    for row in ROWS:
        assert f"({row.url})" in docs
