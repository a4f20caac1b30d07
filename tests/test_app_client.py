"""The app served on a free local port, driven through gradio_client (predict and attention)."""

from __future__ import annotations

import socket
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from isa_explorer.data.synthetic import generate
from isa_explorer.explorer import app

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:::gradio.queueing")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    torch.manual_seed(0)
    demo = app.build_app()
    kwargs = app.launch_kwargs(port=_free_port())
    demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        yield demo, f"http://127.0.0.1:{kwargs['server_port']}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[1], verbose=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    rgb, _ = generate(3, 4, (128, 256))
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(rgb).save(path)
    return path


def test_api_lists_predict_and_attention(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/attention"} <= set(endpoints)
    params = [p["parameter_name"] for p in endpoints["/attention"]["parameters"]]
    assert len(params) == 3


def test_predict_returns_an_overlay_and_class_shares(client, scene):
    from gradio_client import handle_file

    overlay, info = client.predict(handle_file(str(scene)), api_name="/predict")
    assert info["size"] == [128, 256]
    assert len(info["class_names"]) == 7
    assert sum(info["class_fractions"].values()) == pytest.approx(1.0, abs=1e-4)
    with Image.open(overlay) as im:
        assert im.size == (1024, 512)  # drawn 4x for the browser


def test_attention_returns_three_maps_of_the_query(client, scene):
    from gradio_client import handle_file

    out = client.predict(handle_file(str(scene)), 100, 60, api_name="/attention")
    assert out["query"] == [100, 60] and out["feature_cell"] == [12, 7]
    assert out["feature_size"] == [16, 32] and out["stride"] == 8
    for name in ("long", "short", "combined"):
        m = np.asarray(out["maps"][name])
        assert m.shape == (16, 32)
        assert m.sum() == pytest.approx(1.0, abs=1e-3)
    short = np.asarray(out["maps"]["short"])
    fy, fx = np.unravel_index(short.argmax(), short.shape)
    assert (fy // 8, fx // 8) == (7 // 8, 12 // 8)  # inside the query's 8x8 block


def test_attention_outside_the_image_is_a_clear_client_error(client, scene):
    from gradio_client import handle_file

    with pytest.raises(Exception, match="outside the 256x128 image"):
        client.predict(handle_file(str(scene)), 300, 10, api_name="/attention")


def test_upload_size_limit_is_enforced(server, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(21 * 1024 * 1024))  # over the 20 MB limit
    with big.open("rb") as f:
        r = httpx.post(server[1] + "gradio_api/upload", files={"files": f}, timeout=60)
    assert r.status_code == 413


def test_paths_not_uploaded_through_gradio_are_never_read(server):
    call = server[1] + "gradio_api/call/predict"
    payload = {"data": [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}]}
    event = httpx.post(call, json=payload, timeout=30).json()["event_id"]
    stream = httpx.get(f"{call}/{event}", timeout=60).text
    assert "event: error" in stream and "event: complete" not in stream


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming ``width x height`` (8-bit RGB), then IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
        )

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _bad_files(tmp_path: Path, scene: Path) -> dict[str, tuple[Path, str]]:
    """Hostile uploads and the message the project gives for each (as the browser path does)."""
    files = {
        "zero bytes": ("empty.png", b"", r"'empty.png' is not an image PIL can read"),
        "truncated PNG": (
            "cut.png",
            scene.read_bytes()[:3000],
            r"'cut.png' .*truncated or corrupt",
        ),
        "text named .png": ("notes.png", b"these are not pixels\n", r"'notes.png' is not an image"),
        "HTML named .jpg": (
            "page.jpg",
            b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
            r"'page.jpg' is not an image PIL can read",
        ),
        "60000x60000 header": (
            "huge.png",
            _png_header(60000, 60000),
            r"'huge.png' is 3600 MP, more than the 80 MP this app decodes; downscale it",
        ),
    }
    out = {}
    for case, (name, data, message) in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        out[case] = (path, message)
    return out


def test_bad_files_get_the_projects_message_on_both_endpoints(client, scene, tmp_path, capsys):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    for case, (path, message) in _bad_files(tmp_path, scene).items():
        for args, api_name in (((), "/predict"), ((10, 10), "/attention")):
            with pytest.raises(AppError, match=message):
                client.predict(handle_file(str(path)), *args, api_name=api_name)
            # Never Gradio's generic "The upstream Gradio app has raised an exception".
            try:
                client.predict(handle_file(str(path)), *args, api_name=api_name)
            except AppError as err:
                assert "upstream" not in str(err), f"{case} {api_name}: {err}"
    # The server still answers, and its log has no traceback for a user's bad file.
    _, info = client.predict(handle_file(str(scene)), api_name="/predict")
    assert info["size"] == [128, 256]
    assert "Traceback" not in capsys.readouterr().err
