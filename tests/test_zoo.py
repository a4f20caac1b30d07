"""The zoo: released models by name, downloaded from a real local HTTP server, verified,
converted once, cached, loaded offline; overrides; the list; bad downloads leave nothing."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
import torch.nn.functional as F
from parity import compare_to_reference
from zoo_server import ServedFile, ZooServer, start

from isa_explorer import load_model, zoo
from isa_explorer.configs import CONFIGS
from isa_explorer.zoo.cli import main as zoo_main
from isa_explorer.zoo.cli import markdown_table
from isa_explorer.zoo.entries import DEFAULT_BASE_URL

ROOT = Path(__file__).parents[1]
SMALL = Path(__file__).parent / "fixtures" / "isanet_r50_small.pt"
NAME = "isanet_r50-d8_4xb1-1k_fixture-75x90"  # a zoo-style name for the mmseg fixture
FILE_PATH = "/isanet/isanet_r50-d8_75x90_1k_fixture/isanet_r50-d8_75x90_1k_fixture_20261201_000000-{sha}.pth"


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(SMALL, weights_only=True)


@pytest.fixture(scope="module")
def checkpoint_bytes(fixture) -> bytes:
    """The mmseg fixture saved as mmseg saves checkpoints (state_dict + meta)."""
    buf = io.BytesIO()
    meta = {"CLASSES": [f"c{i}" for i in range(7)], "mmseg_version": "1.2.2"}
    torch.save({"meta": meta, "state_dict": fixture["state_dict"]}, buf)
    return buf.getvalue()


@pytest.fixture
def server(checkpoint_bytes, tmp_path, monkeypatch):
    """A local zoo: the fixture served under a zoo-style name, declared by ZOO_FILE."""
    state = ZooServer()
    served = ServedFile(checkpoint_bytes)
    path = FILE_PATH.format(sha=served.sha256[:8])
    state.files[path] = served
    httpd = start(state)
    home = tmp_path / "home"
    zoo_file = tmp_path / "zoo.json"
    entry = {"name": NAME, "url": state.url + path, "sha256": served.sha256[:8], "miou": 12.34}
    zoo_file.write_text(json.dumps([entry]))
    monkeypatch.setenv("ISA_EXPLORER_HOME", str(home))
    monkeypatch.setenv("ISA_EXPLORER_ZOO_FILE", str(zoo_file))
    monkeypatch.delenv("ISA_EXPLORER_ZOO_URL", raising=False)
    state.path, state.home, state.served = path, home, served
    yield state
    httpd.shutdown()


def _assert_fixture_logits(model, fixture) -> None:
    image = fixture["image_rgb_0_255"]  # (1, 3, 75, 90)
    expected = F.interpolate(fixture["decode_logits"], size=(75, 90), mode="bilinear")
    parity = compare_to_reference(lambda m, x: m.predict(m.normalize(x)), model, (image,), expected)
    assert parity.ok, str(parity)


def _nothing_cached(home: Path) -> None:
    zoo_dir = home / "zoo"
    models = [p for p in zoo_dir.iterdir() if p.name != ".locks"] if zoo_dir.is_dir() else []
    assert models == [], models
    downloads = home / "downloads"
    done = list(downloads.glob("*.pth")) if downloads.is_dir() else []
    assert done == [], done


def test_download_verify_convert_cache_then_load_offline(server, fixture):
    model = load_model(NAME)
    _assert_fixture_logits(model, fixture)
    assert model.class_names == [f"c{i}" for i in range(7)]
    assert server.count(server.path) == 1
    cached = server.home / "zoo" / NAME
    assert {"config.json", "model.safetensors", "zoo.json", "MODEL_CARD.md"} <= {
        p.name for p in cached.iterdir()
    }
    assert not list((server.home / "downloads").glob("*.pth*"))  # the .pth is not kept
    assert zoo.read_entry(cached).miou == 12.34
    again = load_model(NAME)  # offline: no request
    assert server.count(server.path) == 1
    _assert_fixture_logits(again, fixture)
    assert zoo.is_cached(NAME)


def test_a_wrong_hash_is_refused_and_nothing_is_cached(server, checkpoint_bytes, monkeypatch):
    # A built-in name, its base URL pointed at the local server, which serves other bytes.
    entry = zoo.get_entry("cityscapes-r50")
    monkeypatch.setenv("ISA_EXPLORER_ZOO_URL", server.url + "/mirror")
    mirrored = zoo.get_entry("cityscapes-r50")
    assert mirrored.url == entry.url.replace(DEFAULT_BASE_URL, server.url + "/mirror")
    path = mirrored.url.removeprefix(server.url)
    server.files[path] = ServedFile(checkpoint_bytes)
    with pytest.raises(zoo.ZooError, match=f"expected SHA-256.*{entry.sha256}"):
        load_model("cityscapes-r50")
    assert server.count(path) == 1
    _nothing_cached(server.home)
    assert not list((server.home / "downloads").glob("*.part"))


def test_a_connection_closed_mid_file_caches_nothing_and_a_retry_resumes(server, fixture):
    server.served.cut_first_at = len(server.served.data) // 2
    with pytest.raises(zoo.ZooError, match=r"stopped after \d+ of \d+ bytes.*again to resume"):
        load_model(NAME)
    _nothing_cached(server.home)
    model = load_model(NAME)
    _assert_fixture_logits(model, fixture)
    (_, first), (_, second) = server.requests
    assert first is None and second == f"bytes={len(server.served.data) // 2}-"  # resumed


def test_a_server_that_ignores_range_makes_the_retry_start_over(server, fixture):
    server.served.cut_first_at = 1000
    server.served.ignore_range = True
    with pytest.raises(zoo.ZooError, match="stopped after 1000 of"):
        load_model(NAME)
    _assert_fixture_logits(load_model(NAME), fixture)
    assert server.count(server.path) == 2


def test_offline_names_the_url_and_the_manual_two_steps(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ISA_EXPLORER_HOME", str(tmp_path))
    monkeypatch.setenv("ISA_EXPLORER_ZOO_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("ISA_EXPLORER_ZOO_FILE", raising=False)
    with pytest.raises(zoo.ZooError) as err:
        zoo.fetch("ade20k-r50", progress=False)
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}/isanet_r50-d8_512x512_160k_ade20k/" in msg
    assert "isa-explorer convert isanet_r50-d8_512x512_160k_ade20k_" in msg
    assert str(tmp_path / "downloads") in msg
    _nothing_cached(tmp_path)


def test_names_aliases_and_published_numbers():
    table = zoo.entries()
    published = {n for n, c in CONFIGS.items() if c.dataset not in ("synthetic-context", "folder")}
    assert set(table) == published and len(table) == 16
    assert zoo.get_entry("isanet_r50-d8_512x1024_80k_cityscapes").name == (
        "isanet_r50-d8_4xb2-80k_cityscapes-512x1024"
    )
    best = {  # alias -> the best single-scale mIoU of that dataset and backbone
        "cityscapes-r50": ("isanet_r50-d8_4xb2-80k_cityscapes-769x769", 79.29, "slide"),
        "cityscapes-r101": ("isanet_r101-d8_4xb2-80k_cityscapes-769x769", 80.61, "slide"),
        "ade20k-r50": ("isanet_r50-d8_4xb4-160k_ade20k-512x512", 42.59, "whole"),
        "ade20k-r101": ("isanet_r101-d8_4xb4-160k_ade20k-512x512", 43.80, "whole"),
        "voc-r50": ("isanet_r50-d8_4xb4-20k_voc12aug-512x512", 76.78, "whole"),
        "voc-r101": ("isanet_r101-d8_4xb4-20k_voc12aug-512x512", 78.46, "whole"),
    }
    for alias, (name, miou, mode) in best.items():
        e = zoo.get_entry(alias.upper())
        assert (e.name, e.miou, e.test_mode) == (name, miou, mode)
    e = zoo.get_entry("cityscapes-r50")
    assert e.test_crop == (769, 769) and e.test_stride == (513, 513) and e.align_corners
    assert re.fullmatch(r"[0-9a-f]{8}", e.sha256) and e.url.endswith(f"-{e.sha256}.pth")
    with pytest.raises(zoo.ZooError, match="not a zoo model.*cityscapes-r50"):
        zoo.get_entry("cityscapes-r18")


def test_the_docs_tables_hold_the_zoos_numbers():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme
    docs = (ROOT / "docs" / "mmseg_checkpoints.md").read_text()
    for e in zoo.entries().values():
        row = next(line for line in docs.splitlines() if f"`{e.name}`" in line)
        assert f"| {e.miou:.2f} | {e.miou_ms:.2f} |" in row.replace("45.4 |", "45.40 |"), row
        assert e.url in row


def test_a_bad_zoo_file_names_the_field(tmp_path, monkeypatch):
    bad = tmp_path / "zoo.json"
    bad.write_text(json.dumps([{"name": "mine", "url": "http://x/y.pth"}]))
    monkeypatch.setenv("ISA_EXPLORER_ZOO_FILE", str(bad))
    with pytest.raises(zoo.ZooError, match="entry 0: field 'sha256' is required"):
        zoo.entries()
    bad.write_text("{not json")
    with pytest.raises(zoo.ZooError, match="is not valid JSON"):
        zoo.entries()


def test_zoo_list_download_and_remove(server, capsys):
    assert zoo_main(["list"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "cityscapes-r50" in out and "79.29" in out
    assert not re.search(rf"{re.escape(NAME)}.*yes", out)
    assert zoo_main(["download", NAME, "--no-progress"]) == 0
    assert str(server.home / "zoo" / NAME) in capsys.readouterr().out
    zoo_main(["list"])
    assert re.search(rf"{re.escape(NAME)}.*yes", capsys.readouterr().out)
    assert zoo_main(["remove", NAME]) == 0 and not zoo.is_cached(NAME)
    assert zoo_main(["download", "no-such-model"]) == 1
    assert "not a zoo model" in capsys.readouterr().err


@pytest.mark.slow
def test_app_serves_a_zoo_model_by_name(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)  # the server fixture set the zoo variables
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--checkpoint", NAME, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, page = time.monotonic() + 180, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/config", timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(1)
        assert page is not None and page.status_code == 200, proc.poll()
        assert "published mIoU 12.34" in page.text  # the header names the zoo model
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert server.count(server.path) == 1, out


def test_a_206_of_the_wrong_bytes_makes_the_retry_start_over(server, fixture):
    server.served.cut_first_at = 5000
    server.served.wrong_range = True  # 206, but the file from byte 0 again
    with pytest.raises(zoo.ZooError, match="stopped after 5000 of"):
        load_model(NAME)
    _assert_fixture_logits(load_model(NAME), fixture)


@pytest.mark.parametrize("name", ["/tmp/victim", "..", "a/b", "x..y"])
def test_entry_names_cannot_reach_outside_the_cache(tmp_path, monkeypatch, name):
    bad = tmp_path / "zoo.json"
    bad.write_text(json.dumps([{"name": name, "url": "http://127.0.0.1/x.pth", "sha256": "0" * 8}]))
    monkeypatch.setenv("ISA_EXPLORER_ZOO_FILE", str(bad))
    with pytest.raises(zoo.ZooError, match="must be letters, digits"):
        zoo.entries()
