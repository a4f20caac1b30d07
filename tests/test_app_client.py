"""The app served on a free local port, driven through gradio_client (predict and attention)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import png_header
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


@pytest.fixture(scope="module")
def tall(tmp_path_factory) -> Path:
    """A non-square image, 512 pixels wide and 600 high."""
    rgb = np.random.default_rng(1).integers(0, 256, (600, 512, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("img") / "tall.png"
    Image.fromarray(rgb).save(path)
    return path


def test_api_parameters_are_image_x_y(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/attention"} <= set(endpoints)
    names = {k: [p["parameter_name"] for p in endpoints[k]["parameters"]] for k in endpoints}
    assert names["/predict"] == ["image"]
    assert names["/attention"] == ["image", "x", "y"]


def test_predict_returns_an_overlay_and_class_shares(client, scene):
    from gradio_client import handle_file

    overlay, info = client.predict(image=handle_file(str(scene)), api_name="/predict")
    assert info["size"] == {"width": 256, "height": 128}
    assert len(info["class_names"]) == 7
    assert sum(info["class_fractions"].values()) == pytest.approx(1.0, abs=1e-4)
    with Image.open(overlay) as im:
        assert im.size == (1024, 512)  # drawn 4x for the browser


def test_attention_returns_three_maps_of_the_query(client, scene):
    from gradio_client import handle_file

    out = client.predict(image=handle_file(str(scene)), x=100, y=60, api_name="/attention")
    assert out["query"] == [100, 60] and out["feature_cell"] == [12, 7]
    assert out["feature_size"] == {"width": 32, "height": 16} and out["stride"] == 8
    for name in ("long", "short", "combined"):
        m = np.asarray(out["maps"][name])
        assert m.shape == (16, 32)
        assert m.sum() == pytest.approx(1.0, abs=1e-3)
    short = np.asarray(out["maps"]["short"])
    fy, fx = np.unravel_index(short.argmax(), short.shape)
    assert (fy // 8, fx // 8) == (7 // 8, 12 // 8)  # inside the query's 8x8 block


def test_sizes_are_width_and_height_on_a_non_square_image(client, tall):
    from gradio_client import handle_file

    overlay, info = client.predict(image=handle_file(str(tall)), api_name="/predict")
    assert info["size"] == {"width": 512, "height": 600}
    with Image.open(overlay) as im:
        assert im.width / im.height == pytest.approx(512 / 600, abs=0.01)
    out = client.predict(image=handle_file(str(tall)), x=500, y=590, api_name="/attention")
    assert out["image_size"] == {"width": 512, "height": 600}
    assert out["feature_size"] == {"width": 64, "height": 75}  # 512 / 8, 600 / 8
    assert out["query"] == [500, 590] and out["feature_cell"] == [62, 73]  # [x, y]
    combined = np.asarray(out["maps"]["combined"])
    assert combined.shape == (75, 64)  # rows first: maps[name][row][column]
    rows, cols = np.nonzero(np.asarray(out["maps"]["short"]) > 0)  # the query's 8x8 block
    assert rows.min() <= 73 <= rows.max() and cols.min() <= 62 <= cols.max()
    assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8
    # x is the column: 550 fits the height but not the width.
    with pytest.raises(Exception, match="outside the 512x600 image: use 0 <= x < 512"):
        client.predict(image=handle_file(str(tall)), x=550, y=5, api_name="/attention")


def test_attention_outside_the_image_is_a_clear_client_error(client, scene):
    from gradio_client import handle_file

    with pytest.raises(Exception, match="outside the 256x128 image"):  # positional order works
        client.predict(handle_file(str(scene)), 300, 10, api_name="/attention")


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (3.5, r"must be whole numbers, got x=3.5: coordinates are not rounded; send x=3 or x=4"),
        ("abc", r"x must be a number, got 'abc' \(str\); send a whole number 0 <= x < 256"),
        (True, r"x must be a number, got True \(bool\)"),
        (None, r"give both pixel coordinates x and y: x is missing"),
        (-1, r"pixel \(x=-1, y=5\) is outside the 256x128 image: use 0 <= x < 256"),
    ],
)
def test_bad_coordinates_get_the_projects_message(client, scene, x, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(image=handle_file(str(scene)), x=x, y=5, api_name="/attention")


def test_nan_and_infinite_coordinates_sent_as_raw_json_get_a_message(server, scene):
    base = server[1] + "gradio_api/"
    with scene.open("rb") as f:
        uploaded = httpx.post(base + "upload", files={"files": f}, timeout=60).json()[0]
    for literal, shown in (("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf")):
        body = f'{{"data": [{{"path": "{uploaded}", "meta": {{"_type": "gradio.FileData"}}}}, 5, '
        body += f"{literal}]}}"
        headers = {"content-type": "application/json"}
        event = httpx.post(base + "call/attention", content=body, headers=headers, timeout=30)
        stream = httpx.get(f"{base}call/attention/{event.json()['event_id']}", timeout=60).text
        assert "event: error" in stream
        assert f"pixel coordinate y must be finite, got {shown}; send a whole number" in stream


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


def _bad_files(tmp_path: Path, scene: Path) -> dict[str, tuple[Path, str]]:
    """Hostile uploads and the message the project gives for each (as the browser path does)."""
    files = {
        "zero bytes": ("empty.png", b"", r"'empty.png' is empty \(0 bytes\)"),
        "truncated PNG": (
            "cut.png",
            scene.read_bytes()[:3000],
            r"'cut.png' .*truncated or corrupt",
        ),
        "text named .png": ("notes.png", b"these are not pixels\n", r"'notes.png' is not an image"),
        "HTML named .jpg": (
            "page.jpg",
            b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
            r"'page.jpg' is not an image in a readable format",
        ),
        "60000x60000 header": (
            "huge.png",
            png_header(60000, 60000),
            r"'huge.png' is 3600 MP, more than the 80 MP limit; downscale it",
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
    assert info["size"] == {"width": 256, "height": 128}
    assert "Traceback" not in capsys.readouterr().err
