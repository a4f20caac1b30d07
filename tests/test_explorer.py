"""The explorer's handlers on the shipped default model: prediction, clicks, maps, the store."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import small_isanet

from isa_explorer.explorer import Explorer, ExplorerError, ExplorerModel, SessionStore
from isa_explorer.explorer import api as api_fns
from isa_explorer.explorer.render import Display


@pytest.fixture(scope="module")
def explorer() -> Explorer:
    torch.manual_seed(0)
    return Explorer(ExplorerModel())


@pytest.fixture(scope="module")
def loaded(explorer):
    """Session ``"s"`` holds example 3 of the default model."""
    return explorer.load_example("s", 3)


def _block_of(cache, fx: int, fy: int) -> tuple[slice, slice]:
    g = cache.record.grid
    r0 = (fy + g.pad_top) // g.lh * g.lh - g.pad_top
    c0 = (fx + g.pad_left) // g.lw * g.lw - g.pad_left
    return slice(max(r0, 0), r0 + g.lh), slice(max(c0, 0), c0 + g.lw)


def test_example_is_predicted_at_the_training_size_with_a_legend(explorer, loaded):
    assert loaded.size == explorer.model.train_size == (128, 256)
    assert loaded.labels.shape == loaded.size
    assert loaded.labels.max() < len(explorer.model.class_names)
    assert ((loaded.confidence > 0) & (loaded.confidence <= 1)).all()
    view = explorer.prediction_view(loaded, 0.5)
    assert view.shape == (*explorer.display(loaded).size, 3) and view.dtype == np.uint8
    legend = explorer.legend(loaded)
    for name, colour in zip(explorer.model.class_names, explorer.model.palette, strict=True):
        assert name in legend and f"rgb({colour[0]},{colour[1]},{colour[2]})" in legend


def test_example_context_swaps_only_the_cue(explorer):
    red = explorer.example_image(5, "red cue").rgb
    blue = explorer.example_image(5, "blue cue").rgb
    differ = (red != blue).any(-1)
    assert differ.any() and differ.mean() < 0.1  # the cue square only
    with pytest.raises(ExplorerError, match="example index"):
        explorer.example_image(10_000)


@pytest.mark.parametrize("xy", [(0, 0), (77, 41), (255, 127), (130, 64)])
def test_click_gives_three_maps_that_sum_to_one_on_the_feature_grid(explorer, loaded, xy):
    result = explorer.click("s", *xy)
    cache = loaded.cache
    h, w = cache.feature_size
    assert result.query == xy and result.cell == cache.to_feature(*xy)
    assert set(result.maps.maps) == {"long", "short", "combined"}
    for m in result.maps.maps.values():
        assert m.shape == (h, w) and (m >= 0).all()
        assert float(m.sum()) == pytest.approx(1.0, abs=1e-4)  # 128x256 needs no padding
    # The combined map reaches beyond the query's block (every position, up to underflow).
    assert (result.maps["combined"] > 0).sum() > (result.maps["short"] > 0).sum()
    dh, dw = explorer.display(loaded).size
    assert all(p.shape == (dh, dw, 3) for p in result.panels.values())
    assert result.class_name == explorer.model.class_names[loaded.labels[xy[1], xy[0]]]


def test_short_range_map_peaks_inside_the_query_block_and_long_range_on_its_group(explorer, loaded):
    result = explorer.click("s", 150, 90)
    fx, fy = result.cell
    rows, cols = _block_of(loaded.cache, fx, fy)
    short = result.maps["short"]
    peak = np.unravel_index(int(short.argmax()), short.shape)
    assert rows.start <= peak[0] < rows.stop and cols.start <= peak[1] < cols.stop
    assert float(short[rows, cols].sum()) == pytest.approx(1.0, abs=1e-4)
    long_ = result.maps["long"]
    g = loaded.cache.record.grid
    rr, cc = np.nonzero(long_.numpy())
    assert ((rr + g.pad_top) % g.lh == (fy + g.pad_top) % g.lh).all()
    assert ((cc + g.pad_left) % g.lw == (fx + g.pad_left) % g.lw).all()
    assert 0 < len(rr) <= g.gh * g.gw  # at most one position per block


def test_clicks_reuse_the_cached_features_without_a_forward(explorer, loaded):
    calls = []
    hooks = [
        m.register_forward_hook(lambda *a: calls.append(1))
        for m in (explorer.model.model, explorer.model.model.decoder)
    ]
    try:
        for xy in [(5, 5), (200, 100), (128, 64)]:
            explorer.click("s", *xy, show_grid=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []


def test_display_clicks_map_back_to_image_pixels(explorer, loaded):
    d = explorer.display(loaded)
    assert d.scale == 4  # 128x256 is drawn at 512x1024
    result = explorer.click_display("s", 4 * 100 + 3, 4 * 50 + 1)
    assert result.query == (100, 50)
    with pytest.raises(ExplorerError, match="outside the image"):
        explorer.click_display("s", 4 * 256, 10)


def test_a_click_returns_a_new_state_and_never_brings_back_a_replaced_image(explorer):
    before = explorer.load_example("new-state", 2)
    result = explorer.click("new-state", 10, 20)
    assert before.query is None and result.state.query == (10, 20)
    assert explorer.state("new-state") is result.state and result.state.rgb is before.rgb
    newer = explorer.load_example("new-state", 3)  # a new image while an old click runs
    assert not explorer.store.put("new-state", result.state, replacing=before)
    assert explorer.state("new-state") is newer


def test_grid_lines_and_opacity_change_the_panels(explorer, loaded):
    plain = explorer.click("s", 60, 60, opacity=0.6, show_grid=False).panels["short"]
    grid = explorer.click("s", 60, 60, opacity=0.6, show_grid=True).panels["short"]
    faint = explorer.click("s", 60, 60, opacity=0.1, show_grid=False).panels["short"]
    assert (plain != grid).any(-1).mean() > 0.01
    # Low opacity stays closer to the image.
    base = explorer._view(loaded, "rgb").astype(int)
    assert np.abs(faint - base).mean() < np.abs(plain - base).mean()


def test_top_regions_list_cells_and_class_mass(explorer, loaded):
    result = explorer.click("s", 30, 30, top_k=3)
    rows = [line for line in result.regions.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert len(rows) == 3
    top = np.sort(result.maps["combined"].numpy().ravel())[::-1][:3]
    shares = [float(r.split("|")[-2].strip().rstrip("%")) / 100 for r in rows]
    np.testing.assert_allclose(shares, top, atol=6e-4)  # printed to 0.1 %
    assert "Attention by predicted class" in result.regions


def test_api_summary_is_json_ready(explorer):
    rgb = explorer.example_image(1).rgb
    state = api_fns.analyse_cached(explorer, rgb)
    assert api_fns.analyse_cached(explorer, rgb.copy()) is state  # same pixels: one forward
    out = api_fns.attention_summary(explorer, state, 12, 100)
    assert out["query"] == [12, 100] and out["feature_size"] == {"width": 32, "height": 16}
    for name in ("long", "short", "combined"):
        assert np.asarray(out["maps"][name]).shape == (16, 32)
        assert out["sums"][name] == pytest.approx(1.0, abs=1e-4)
    summary = api_fns.predict_summary(explorer, state)
    assert sum(summary["class_fractions"].values()) == pytest.approx(1.0, abs=1e-4)


def test_display_geometry_enlarges_small_and_reduces_large_images():
    assert Display.of(128, 256).size == (512, 1024)
    big = Display.of(1024, 2048)
    assert big.size == (512, 1024) and big.to_image(1023, 511) == (2046, 1022)
    assert big.to_image(5000, -3) == (2047, 0)  # clamped to the image


def test_store_is_bounded_in_sessions_and_bytes(explorer, loaded):
    store = SessionStore(max_sessions=3, max_bytes=10 * loaded.nbytes)
    for i in range(5):
        store.put(f"k{i}", loaded)
    assert len(store) == 3 and "k0" not in store and "k4" in store
    store.get("k2")  # recently used: survives the next insertion
    store.put("k5", loaded)
    assert "k2" in store and "k3" not in store
    small = SessionStore(max_sessions=100, max_bytes=int(2.5 * loaded.nbytes))
    for i in range(6):
        small.put(f"k{i}", loaded)
    assert len(small) == 2 and small.nbytes <= small.max_bytes


def test_dense_head_model_shows_one_dense_map(tmp_path):
    torch.manual_seed(0)
    small_isanet(head="dense", classes=3, class_names=["a", "b", "c"]).eval().save_pretrained(
        tmp_path / "dense"
    )
    ex = Explorer(ExplorerModel(tmp_path / "dense"))
    assert not ex.model.is_synthetic
    with pytest.raises(ExplorerError, match="upload"):
        ex.load_example("d", 0)
    rng = np.random.default_rng(0)
    ex.load_image("d", rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    result = ex.click("d", 40, 20)
    assert set(result.maps.maps) == {"dense"} and set(result.panels) == {"dense"}
    assert result.maps.maps["dense"].shape == (8, 12)
    assert float(result.maps.maps["dense"].sum()) == pytest.approx(1.0, abs=1e-4)
    from isa_explorer.explorer.app import build_app

    ids = {getattr(b, "elem_id", None) for b in build_app(explorer=ex).blocks.values()}
    assert "map-dense" in ids and "map-combined" not in ids  # the head's maps, no other


def test_fcn_head_model_predicts_but_explains_there_is_no_attention(tmp_path):
    torch.manual_seed(0)
    small_isanet(head="fcn", classes=3).eval().save_pretrained(tmp_path / "fcn")
    ex = Explorer(ExplorerModel(tmp_path / "fcn"))
    state = ex.load_image("f", np.zeros((40, 40, 3), np.uint8))
    assert state.labels.shape == (40, 40) and state.cache is None
    with pytest.raises(ExplorerError, match="no attention maps.*: isa, dense"):
        ex.click("f", 3, 3)


def test_gradcam_of_the_clicked_pixel_and_of_a_class(explorer, loaded):
    from isa_explorer.explorer.attribution import CLICKED_PIXEL, explain

    explorer.click("s", 100, 60)
    panel, text = explain(explorer, "s", CLICKED_PIXEL, "LayerGradCam")
    assert panel.shape == (*explorer.display(loaded).size, 3)
    assert "LayerGradCam" in text and "at pixel (100, 60)" in text and "256x128" in text
    name = explorer.model.class_names[int(loaded.labels[60, 100])]
    assert f"**{name}**" in text
    _, text = explain(explorer, "s", "green-disc", "LayerGradCam")
    assert "green-disc" in text
    with pytest.raises(ExplorerError, match="unknown target"):
        explain(explorer, "s", "no-such-class")


def test_attribution_needs_a_click_for_the_pixel_target(explorer):
    from isa_explorer.explorer.attribution import CLICKED_PIXEL, explain

    explorer.load_example("fresh", 0)
    with pytest.raises(ExplorerError, match="no pixel clicked yet"):
        explain(explorer, "fresh", CLICKED_PIXEL)


def test_integrated_gradients_is_bounded_and_normalised(tmp_path):
    from isa_explorer.explorer.attribution import IG_MAX_SIDE, attribute

    torch.manual_seed(0)
    model = small_isanet(classes=3).eval()
    rgb = np.random.default_rng(0).integers(0, 256, (300, 600, 3), dtype=np.uint8)
    labels = np.zeros((300, 600), np.int64)
    a = attribute(model, rgb, labels, 0, None, "IntegratedGradients", n_steps=2)
    assert max(a.size) == IG_MAX_SIDE and a.heat.shape == a.size
    assert a.heat.min() >= 0 and a.heat.max() == pytest.approx(1.0)
    assert "n_steps=2" in a.note
    b = attribute(model, rgb, labels, 2, (599, 299), "IntegratedGradients", n_steps=-5)
    assert "n_steps=1" in b.note and b.pixel == (599, 299)  # steps clamped to 1..32


def test_concurrent_analyses_keep_their_own_features(explorer, monkeypatch):
    """Two threads analyse two images on one model at the same time, with no lock."""
    import threading

    images = [explorer.example_image(i).rgb for i in (7, 8)]
    serial = [explorer.model.analyse(im) for im in images]
    out = [None, None]
    both_inside = threading.Barrier(2)  # a lock around network passes would never let it pass
    cls = type(explorer.model.model.decoder)
    forward = cls.forward

    def overlapping(self, *args, **kwargs):
        both_inside.wait(timeout=60)
        return forward(self, *args, **kwargs)

    def work(i: int) -> None:
        out[i] = explorer.model.analyse(images[i])

    monkeypatch.setattr(cls, "forward", overlapping)
    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    monkeypatch.undo()
    assert not both_inside.broken and None not in out
    for got, want in zip(out, serial, strict=True):
        np.testing.assert_array_equal(got.labels, want.labels)
        for k, v in want.cache.record.tensors().items():
            torch.testing.assert_close(got.cache.record.tensors()[k], v)
    assert not np.array_equal(out[0].labels, out[1].labels)  # two different images


def test_training_size_comes_from_the_model_directory(tmp_path):
    import json

    from isa_explorer.explorer.served_model import DEFAULT_TRAIN_SIZE

    small_isanet(classes=7, class_names=ex_names()).save_pretrained(tmp_path / "m")
    assert ExplorerModel(tmp_path / "m").train_size == DEFAULT_TRAIN_SIZE == (128, 256)
    (tmp_path / "m" / "train_config.json").write_text(json.dumps({"crop_size": [96, 192]}))
    em = ExplorerModel(tmp_path / "m")
    assert em.train_size == (96, 192) and em.is_synthetic and not em.loaded
    state = Explorer(em).load_example("t", 0)
    assert state.size == (96, 192)


def ex_names() -> tuple[str, ...]:
    from isa_explorer.data.synthetic import SYNTHETIC_INFO

    return SYNTHETIC_INFO.class_names


def test_an_image_of_odd_size_maps_clicks_through_the_unpadded_cells(explorer):
    rgb = np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    state = explorer.load_image("odd", rgb)
    assert state.cache.feature_size == (13, 17)  # ceil(97 / 8), ceil(131 / 8): no padding
    result = explorer.click("odd", 130, 96, show_grid=True)
    assert result.cell == (16, 12)
    dh, dw = explorer.display(state).size
    assert all(p.shape == (dh, dw, 3) for p in result.panels.values())
    rows, cols = state.cache.cell_edges()
    assert rows[-1] == 97 and cols[-1] == 131
    spans = re.findall(r"\| (\d+)-(\d+), (\d+)-(\d+) \|", result.regions)  # pixels of top cells
    assert spans
    for x0, x1, y0, y1 in (tuple(map(int, s)) for s in spans):
        assert 0 <= x0 <= x1 <= 130 and 0 <= y0 <= y1 <= 96


def test_the_default_model_says_it_knows_synthetic_classes_only():
    em = ExplorerModel()
    assert em.is_synthetic and em.zoo_entry is None
    for text in (em.upload_note, em.summary):
        assert "synthetic" in text and "python app.py --checkpoint cityscapes-r50" in text


def _screen_after(demo, screen: dict, trigger, event: str, session: str) -> dict:
    """Run the callbacks of ``trigger``'s ``event`` and their ``.then`` chain as Gradio would:
    inputs read from ``screen`` (component -> shown value), updates written back; a skipped
    output keeps its value."""
    from types import SimpleNamespace

    fns = list(demo.fns.values())
    chain = [f for f in fns if (trigger._id, event) in f.targets]
    while chain and (nxt := [f for f in fns if f.trigger_after == chain[-1]._id]):
        chain += nxt[:1]
    assert chain, f"nothing listens to {event}"
    for f in chain:
        args = [screen.get(c, c.value) for c in f.inputs]
        out = f.fn(*args, request=SimpleNamespace(session_hash=session))
        out = out if isinstance(out, tuple) else (out,)
        for c, value in zip(f.outputs, out, strict=True):
            if not (isinstance(value, dict) and value.get("__type__") == "update"):  # gr.skip()
                screen[c] = value
    return screen


@pytest.mark.filterwarnings("ignore:.*truncated:UserWarning")
def test_a_failed_upload_or_a_cleared_file_leaves_no_stale_image(explorer, tmp_path):
    """Photo, click, then a truncated PNG: nothing of the photo stays, on screen or stored."""
    import io

    from PIL import Image

    from isa_explorer.explorer.app import build_app

    demo = build_app(explorer=explorer)
    blocks = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    upload, shown = blocks["upload"], ["prediction", "legend", "query", "regions"]
    shown += [f"map-{n}" for n in ("long", "short", "combined")]
    photo, truncated = tmp_path / "photo.png", tmp_path / "truncated.png"
    Image.fromarray(explorer.example_image(4).rgb).save(photo)
    data = io.BytesIO()
    Image.fromarray(explorer.example_image(5).rgb).save(data, "PNG")
    truncated.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    for then in ("upload", "clear"):  # a bad file straight away, or the file box cleared first
        screen = _screen_after(demo, {upload: str(photo)}, upload, "upload", then)
        assert "Loaded upload photo.png" in screen[blocks["status"]]
        explorer.click(then, 100, 60)  # what a click on the prediction does
        if then == "clear":
            screen = _screen_after(demo, screen, upload, "clear", then)
            assert screen[blocks["status"]] == "Pick an example or upload an image."
            assert then not in explorer.store
        screen[upload] = str(truncated)
        screen = _screen_after(demo, screen, upload, "upload", then)
        assert screen[blocks["status"]].startswith("**Problem:**")
        assert "truncated" in screen[blocks["status"]]
        values = {n: screen[blocks[n]] for n in shown}
        stale = [n for n, v in values.items() if not (v is None or isinstance(v, str) and not v)]
        assert stale == [], f"{then}: still shown after a failed upload: {stale}"
        with pytest.raises(ExplorerError, match="no image loaded"):
            explorer.click_display(then, 10, 10)
    screen = _screen_after(demo, screen, blocks["load-example"], "click", "upload")
    assert screen[upload] is None and "Loaded example" in screen[blocks["status"]]


def test_the_example_status_line_says_the_size_once(explorer):
    from isa_explorer.explorer.app import build_app

    demo = build_app(explorer=explorer)
    blocks = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    screen = _screen_after(demo, {}, blocks["load-example"], "click", "status-line")
    status = screen[blocks["status"]]
    h, w = explorer.model.train_size
    assert status.startswith(f"Loaded example 0 (as drawn): {w}x{h} pixels.")
    assert status.count(f"{w}x{h}") == 1
