"""The zoo: models by name, downloaded from a real local HTTP server, verified, converted once,
cached, loaded offline (a small ISANet, and a full-size DANet); a wrong hash or head refused; the
list; the app's header; bad downloads leave nothing. The released table against the published
reference: tests/test_zoo_table.py."""

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
from conftest import small_isanet
from mmseg_checkpoints import save_mmseg_checkpoint, state_from_listing
from parity import compare_to_reference
from zoo_server import ServedFile, ZooServer, start

from isa_explorer import load_model, zoo
from isa_explorer.explorer.served_model import ExplorerModel
from isa_explorer.zoo.cli import main as zoo_main

ROOT = Path(__file__).parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "isanet_r50_small.pt"
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


def publish(server: ZooServer, name: str, path: str, data: bytes, **fields) -> ServedFile:
    """Serve ``data`` at ``path`` (``{sha}`` in it: the file's hash prefix) and declare it in
    the server's ``ISA_EXPLORER_ZOO_FILE`` as entry ``name`` with ``fields`` (``sha256``
    included: the file's prefix unless given)."""
    served = ServedFile(data)
    path = path.format(sha=served.sha256[:8])
    server.files[path] = served
    entry = {"name": name, "url": server.url + path, "sha256": served.sha256[:8], **fields}
    declared = json.loads(server.zoo_file.read_text())
    server.zoo_file.write_text(json.dumps([*declared, entry]))
    return served


@pytest.fixture
def server(checkpoint_bytes, tmp_path, monkeypatch):
    """A local zoo: the fixture served under a zoo-style name, declared by ZOO_FILE."""
    state = ZooServer()
    httpd = start(state)
    state.home, state.zoo_file = tmp_path / "home", tmp_path / "zoo.json"
    state.zoo_file.write_text("[]")
    monkeypatch.setenv("ISA_EXPLORER_HOME", str(state.home))
    monkeypatch.setenv("ISA_EXPLORER_ZOO_FILE", str(state.zoo_file))
    monkeypatch.delenv("ISA_EXPLORER_ZOO_URL", raising=False)
    state.served = publish(state, NAME, FILE_PATH, checkpoint_bytes, miou=12.34)
    state.path = FILE_PATH.format(sha=state.served.sha256[:8])
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
    recorded = zoo.read_entry(cached)  # the entry left the head out: the file's is recorded
    assert (recorded.miou, recorded.head, recorded.head_title) == (12.34, "isa", "ISANet (ISAHead)")
    assert "ISANet (ISAHead) trained on custom" in (cached / "MODEL_CARD.md").read_text()
    again = load_model(NAME)  # offline: no request
    assert server.count(server.path) == 1
    _assert_fixture_logits(again, fixture)
    assert zoo.is_cached(NAME)


@pytest.mark.parametrize("alias", ["cityscapes-r50", "cityscapes-danet-r50"])
def test_a_wrong_hash_is_refused_and_nothing_is_cached(
    server, checkpoint_bytes, monkeypatch, alias
):
    # A built-in name, its mirror pointed at the local server, which serves other bytes.
    entry = zoo.get_entry(alias)
    monkeypatch.setenv("ISA_EXPLORER_ZOO_URL", server.url + "/mirror")
    mirrored = zoo.get_entry(alias)
    assert mirrored.url == f"{server.url}/mirror/{entry.old_name}/{entry.filename}"
    path = mirrored.url.removeprefix(server.url)
    server.files[path] = ServedFile(checkpoint_bytes)
    with pytest.raises(zoo.ZooError, match=f"expected SHA-256.*{entry.sha256}"):
        load_model(alias)
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


def test_a_bad_zoo_file_names_the_field(tmp_path, monkeypatch):
    bad = tmp_path / "zoo.json"
    bad.write_text(json.dumps([{"name": "mine", "url": "http://x/y.pth"}]))
    monkeypatch.setenv("ISA_EXPLORER_ZOO_FILE", str(bad))
    with pytest.raises(zoo.ZooError, match="entry 0: field 'sha256' is required"):
        zoo.entries()
    bad.write_text(
        json.dumps([{"name": "m", "url": "http://x/y.pth", "sha256": "0" * 8, "head": "danet"}])
    )
    with pytest.raises(
        zoo.ZooError, match="head 'danet' is not a registered head; choose from isa,"
    ):
        zoo.entries()
    bad.write_text("{not json")
    with pytest.raises(zoo.ZooError, match="is not valid JSON"):
        zoo.entries()


def test_a_file_of_another_head_than_declared_is_refused(server, checkpoint_bytes):
    publish(server, "declared-da", "/x/isanet_fixture-{sha}.pth", checkpoint_bytes, head="da")
    want = r"declares the 'da' head \(DANet \(DAHead\)\) but .* is a 'isa' head checkpoint \(ISANet"
    with pytest.raises(zoo.ZooError, match=want):
        load_model("declared-da")
    assert not zoo.is_cached("declared-da")


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
        assert "ISANet (ISAHead), custom" in page.text  # the header names the zoo model
        assert "published mIoU 12.34" in page.text
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


@pytest.mark.slow
def test_a_full_size_danet_checkpoint_is_verified_converted_cached_and_loaded(server, tmp_path):
    """Every key of a released DANet R-50-D8 (random values), saved as mmseg saves it, as a zoo
    entry of the local server: a wrong hash refused first, then download, verify, convert,
    cache, load and predict; the second load asks the server nothing."""
    state = state_from_listing(FIXTURES / "danet_r50-d8_keys.txt", seed=3)
    data = save_mmseg_checkpoint(state, tmp_path / "danet.pth").read_bytes()
    name, path = "danet_r50-d8_4xb2-1k_fixture-512x1024", "/danet/{sha}/danet_fixture-{sha}.pth"
    fields = {"head": "da", "dataset": "cityscapes", "backbone": "R-50-D8", "miou": 79.34}
    served = publish(server, name, path, data, **fields)
    path = path.format(sha=served.sha256[:8])
    wrong = f"{(int(served.sha256[0], 16) + 1) % 16:x}{served.sha256[1:8]}"
    publish(server, name + "-wrong", path, data, **fields, sha256=wrong)  # the same URL
    with pytest.raises(zoo.ZooError, match=rf"expected SHA-256 \(expected {wrong}\.\.\., got"):
        load_model(name + "-wrong")
    _nothing_cached(server.home)

    model = load_model(name).eval()
    assert server.count(path) == 2
    assert (model.head, model.classes, model.class_names[0]) == ("da", 19, "road")
    ours = model.state_dict()
    for key in ("decode_head.pam_in_conv.conv.weight", "decode_head.cam_out_conv.bn.running_var"):
        assert torch.equal(ours[key.replace("decode_head.", "decoder.", 1)], state[key]), key
    x = torch.rand(1, 3, 57, 83) * 255
    with torch.inference_mode():
        logits = model.predict(model.normalize(x))
    assert logits.shape == (1, 19, 57, 83) and logits.isfinite().all()
    cached = zoo.model_dir(name)
    assert zoo.read_entry(cached).head == "da"
    assert "DANet (DAHead) R-50-D8 trained on Cityscapes" in (cached / "MODEL_CARD.md").read_text()
    assert not list((server.home / "downloads").glob("*.pth*"))

    again = load_model(name).eval()  # from the cache: no request
    assert server.count(path) == 2
    with torch.inference_mode():
        assert torch.equal(again.predict(again.normalize(x)), logits)


def test_the_app_header_names_a_zoo_models_head_dataset_and_miou(tmp_path, monkeypatch):
    """A released DANet in the cache (a small model stands in for its weights): the header
    (``ExplorerModel.summary``, the app's first line) names head, backbone, dataset, mIoU."""
    monkeypatch.setenv("ISA_EXPLORER_HOME", str(tmp_path))
    monkeypatch.delenv("ISA_EXPLORER_ZOO_FILE", raising=False)
    monkeypatch.delenv("ISA_EXPLORER_ZOO_URL", raising=False)
    entry = zoo.get_entry("cityscapes-danet-r50")
    small_isanet(head="da", classes=19).save_pretrained(zoo.model_dir(entry))
    (zoo.model_dir(entry) / "zoo.json").write_text(json.dumps(entry.to_dict()))
    summary = ExplorerModel("cityscapes-danet-r50").summary
    assert summary.startswith(
        "Model: **DANet (DAHead) R-50-D8, Cityscapes** `danet_r50-d8_4xb2-80k_cityscapes-512x1024`"
    )
    assert summary.endswith(": published mIoU 79.34.")  # no ms+flip published for this run
    # A zoo.json cached before entries named their head: the model's config names it.
    (zoo.model_dir(entry) / "zoo.json").write_text(
        json.dumps({k: v for k, v in entry.to_dict().items() if k != "head"})
    )
    assert "**DANet (DAHead) R-50-D8, Cityscapes**" in ExplorerModel(entry.name).summary
