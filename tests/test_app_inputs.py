"""Bad and unusual inputs: each gives a clear message or a sensible conversion, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from isa_explorer.explorer import (
    MAX_SIDE,
    Explorer,
    ExplorerError,
    ExplorerModel,
    ImageInputError,
    app,
    check_image,
    load_image_file,
)
from isa_explorer.explorer import api as api_fns


@pytest.fixture(scope="module")
def explorer() -> Explorer:
    torch.manual_seed(0)
    return Explorer(ExplorerModel())


def _scene(w: int = 96, h: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_a_text_file_is_not_an_image(explorer, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels")
    with pytest.raises(ExplorerError, match="not an image in a readable format; use a PNG"):
        explorer.load_file("u", path)


def test_a_truncated_png_is_reported_as_corrupt(explorer, tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_scene(200, 100)).save(path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ExplorerError, match="truncated or corrupt"):
        explorer.load_file("u", path)


def test_a_missing_upload_is_reported(explorer, tmp_path):
    with pytest.raises(ExplorerError, match="no image file was received"):
        explorer.load_file("u", tmp_path / "gone.png")
    with pytest.raises(ExplorerError, match="no file received"):
        explorer.load_file("u", None)
    with pytest.raises(ExplorerError, match="no image given"):
        explorer.load_image("u", None)


@pytest.mark.parametrize("size", [(20, 200), (200, 31), (1, 1)])
def test_tiny_images_are_refused_with_the_minimum(size):
    with pytest.raises(ImageInputError, match="at least 32 pixels"):
        check_image(Image.new("RGB", size))


def test_huge_images_are_resized_to_the_documented_limit(explorer):
    state = explorer.load_image("big", _scene(2600, 80))
    w = MAX_SIDE
    h = round(80 * MAX_SIDE / 2600)
    assert state.size == (h, w) and state.labels.shape == (h, w)
    assert f"resized from 2600x80 to {w}x{h}" in state.source


def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("1", (400, 300)).save(path)
    monkeypatch.setattr("isa_explorer.images.MAX_PIXELS", 100_000)  # the one reader's bound
    with pytest.raises(ImageInputError, match="downscale it first"):
        load_image_file(path)


def test_grey_image_becomes_rgb(explorer, tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(_scene()[..., 0]).save(path)
    state = explorer.load_file("g", path)
    assert state.rgb.shape == (64, 96, 3)
    assert (state.rgb[..., 0] == state.rgb[..., 2]).all()
    assert "grey" in state.source


def test_16_bit_image_is_scaled_to_8_bits(tmp_path):
    path = tmp_path / "deep.png"
    deep = np.linspace(0, 65535, 64 * 96).reshape(64, 96).astype(np.uint16)
    Image.fromarray(deep).save(path)
    prepared = load_image_file(path)
    assert prepared.rgb.dtype == np.uint8
    assert prepared.rgb[0, 0, 0] == 0 and prepared.rgb[-1, -1, 0] == 255
    assert any("16-bit" in n for n in prepared.notes)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 48:, 3] = 255  # left half transparent, right half opaque red
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    rgb = load_image_file(path).rgb
    assert (rgb[:, :48] == 255).all()
    assert (rgb[:, 48:] == [200, 0, 0]).all()


def test_exif_rotation_is_applied(tmp_path):
    im = np.zeros((40, 60, 3), np.uint8)
    im[:, :30] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(im).save(path, exif=exif, quality=95)
    prepared = load_image_file(path)
    assert prepared.rgb.shape == (60, 40, 3)
    assert prepared.rgb[:25].mean() > 200 and prepared.rgb[-25:].mean() < 50  # white on top
    assert any("EXIF" in n for n in prepared.notes)


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA", "1"])
def test_other_pil_modes_are_converted(mode):
    im = Image.fromarray(_scene()).convert(mode)
    assert check_image(im).rgb.shape == (64, 96, 3)


def test_float_arrays_and_bad_arrays():
    unit = np.linspace(0, 1, 64 * 96 * 3).reshape(64, 96, 3).astype(np.float32)
    assert check_image(unit).rgb.max() == 255
    with pytest.raises(ImageInputError, match="NaN"):
        check_image(np.full((64, 96, 3), np.nan))
    with pytest.raises(ImageInputError, match="expected an image array"):
        check_image(np.zeros((64, 96, 5)))
    with pytest.raises(ImageInputError, match="expected an image"):
        check_image("/etc/passwd")  # paths are never opened from here


def test_click_before_an_image_is_loaded(explorer):
    with pytest.raises(ExplorerError, match="no image loaded yet"):
        explorer.click_display("nobody", 10, 10)


def test_clicks_outside_the_image(explorer):
    explorer.load_image("o", _scene())
    with pytest.raises(ExplorerError, match="outside the image"):
        explorer.click_display("o", -1, 5)
    with pytest.raises(ExplorerError, match=r"outside the 96x64 image: use 0 <= x < 96"):
        explorer.click("o", 96, 5)
    state = explorer.state("o")
    with pytest.raises(ExplorerError, match="whole numbers"):
        api_fns.attention_summary(explorer, state, 3.5, 2)
    with pytest.raises(ExplorerError, match="both pixel coordinates"):
        api_fns.attention_summary(explorer, state, None, 2)


_BAD_COORDINATES = [
    (3.5, r"must be whole numbers, got x=3.5: coordinates are not rounded; send x=3 or x=4"),
    (np.float32(7.25), r"must be whole numbers, got x=7.25: .*send x=7 or x=8"),
    (float("nan"), r"x must be finite, got nan; send a whole number 0 <= x < 96, e.g. x=48"),
    (float("inf"), r"x must be finite, got inf; send a whole number 0 <= x < 96"),
    (float("-inf"), r"x must be finite, got -inf"),
    ("5", r"x must be a number, got '5' \(str\); send a whole number 0 <= x < 96"),
    ("abc", r"x must be a number, got 'abc' \(str\)"),
    (True, r"x must be a number, got True \(bool\)"),
    (np.bool_(False), r"x must be a number, got .*False.* \(bool_?\)"),
    (None, r"give both pixel coordinates x and y: x is missing; send a whole number"),
    (-1, r"pixel \(x=-1, y=5\) is outside the 96x64 image: use 0 <= x < 96 and 0 <= y < 64"),
    (96, r"pixel \(x=96, y=5\) is outside the 96x64 image"),
    (10**30, r"is outside the 96x64 image"),
    (1e300, r"is outside the 96x64 image"),
]


@pytest.mark.parametrize(("x", "message"), _BAD_COORDINATES)
def test_bad_coordinates_name_the_problem_and_the_fix(explorer, x, message):
    state = explorer.load_image("coords", _scene())
    with pytest.raises(ExplorerError, match=message):
        explorer.attention(state, x, 5)
    with pytest.raises(ExplorerError, match=message):
        api_fns.attention_summary(explorer, state, x, 5)
    with pytest.raises(ExplorerError, match=message):
        explorer.click("coords", x, 5)


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (2.5, r"got y=2.5: coordinates are not rounded; send y=2 or y=3"),
        (float("nan"), r"y must be finite, got nan; send a whole number 0 <= y < 64, e.g. y=32"),
        ("7", r"y must be a number, got '7' \(str\)"),
        (None, r"y is missing"),
        (64, r"pixel \(x=5, y=64\) is outside the 96x64 image"),
    ],
)
def test_the_row_is_checked_like_the_column(explorer, y, message):
    state = explorer.load_image("coords", _scene())
    with pytest.raises(ExplorerError, match=message):
        api_fns.attention_summary(explorer, state, 5, y)


@pytest.mark.parametrize("x", [5, 5.0, np.int64(5), np.float32(5.0), np.uint8(5)])
def test_whole_numbers_of_any_numeric_type_are_accepted(explorer, x):
    state = explorer.load_image("coords", _scene())
    assert explorer.attention(state, x, 7).query == (5, 7)
    out = api_fns.attention_summary(explorer, state, x, 7)
    assert out["query"] == [5, 7] and isinstance(out["query"][0], int)


def test_api_sizes_are_width_and_height(explorer):
    state = explorer.load_image("tall", _scene(96, 136))  # 96 wide, 136 high
    assert api_fns.predict_summary(explorer, state)["size"] == {"width": 96, "height": 136}
    out = api_fns.attention_summary(explorer, state, 95, 135)
    assert out["image_size"] == {"width": 96, "height": 136}
    assert out["feature_size"] == {"width": 12, "height": 17}
    assert out["feature_cell"] == [11, 16]
    assert np.asarray(out["maps"]["combined"]).shape == (17, 12)  # rows first


def test_ui_callbacks_turn_errors_into_a_status_line_not_a_traceback():
    from isa_explorer.explorer.ui import guard

    @guard(3, status_index=1)
    def fails_clearly():
        raise ExplorerError("no image loaded yet: pick an example")

    @guard(2, status_index=1)
    def has_a_bug():
        raise KeyError("internal detail")

    with pytest.warns(UserWarning, match="no image loaded yet"):
        out = fails_clearly()
    assert out[1] == "**Problem:** no image loaded yet: pick an example"
    with pytest.warns(UserWarning, match="internal error"):
        out = has_a_bug()
    assert "internal error" in out[1] and "KeyError" not in out[1]


def test_launch_limits_uploads_and_binds_locally():
    kwargs = app.launch_kwargs()
    assert kwargs["max_file_size"] == app.MAX_FILE_SIZE
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["share"] is False


def test_a_missing_checkpoint_is_a_clear_command_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--checkpoint", str(tmp_path / "no-such-run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "save_pretrained" in err


def test_building_the_app_loads_no_weights():
    ex = Explorer(ExplorerModel())
    demo = app.build_app(explorer=ex)
    assert not ex.model.loaded  # loaded by the first request
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"predict", "attention"} <= names


def test_an_animated_gif_says_its_first_frame_is_used(explorer, tmp_path):
    frames = [Image.fromarray(np.full((40, 48, 3), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    state = explorer.load_file("u", tmp_path / "anim.gif")
    assert "animated image: the first of its 3 frames is used" in state.source
    assert state.rgb.shape == (40, 48, 3) and int(state.rgb.max()) == 10  # frame 0 only


def test_the_readers_messages_name_the_file_not_the_library(explorer, tmp_path):
    """Empty, foreign, truncated and tiny files: one sentence each, in the app's words."""
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "page.jpg").write_bytes(b"<html>502</html>")
    Image.fromarray(_scene(200, 100)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:3000])
    Image.fromarray(_scene(300, 2)).save(tmp_path / "thin.png")
    said = {}
    for name in ("empty.png", "page.jpg", "cut.png", "thin.png"):
        with pytest.raises(ExplorerError) as err:
            explorer.load_file("u", tmp_path / name)
        said[name] = str(err.value)
    assert said["empty.png"].startswith("'empty.png' is empty (0 bytes)")
    assert said["thin.png"].startswith("'thin.png' is 300x2 pixels; both sides must be")
    for text in said.values():
        assert "PIL" not in text and "upload" not in text and "Traceback" not in text
        assert (
            "PNG, JPEG, WebP, BMP, TIFF, GIF or PPM" in text
            or "pixels" in text
            or ("truncated or corrupt" in text)
        )


def test_the_upload_label_lists_the_formats_that_are_read(tmp_path):
    """The label names the formats once (FORMAT_NAMES), and each one named is read."""
    from isa_explorer.images import FORMAT_NAMES, FORMATS

    demo = app.build_app(explorer=Explorer(ExplorerModel()))
    upload = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "upload")
    assert FORMAT_NAMES in upload.label and "PNG/JPEG/WebP" not in upload.label
    rgb = _scene(48, 40)
    for name, suffixes in FORMATS.items():
        path = tmp_path / f"scene{suffixes[0]}"
        Image.fromarray(rgb).save(path, lossless=True)  # WebP lossless; ignored by the others
        prepared = load_image_file(path)
        assert prepared.rgb.shape == (40, 48, 3), name
        if name not in ("JPEG", "GIF"):  # lossy or palette-quantised
            assert np.array_equal(prepared.rgb, rgb), name
