"""The app served on a free local port, driven through gradio_client (predict and attention)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # app.py lives at the root

import app  # noqa: E402
from isa_explorer.data.synthetic import generate  # noqa: E402

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
