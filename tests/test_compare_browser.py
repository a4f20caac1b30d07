"""The Compare tab in a real browser (headless Chromium via Playwright): three heads, an
example scene, a click; every number shown is the library's for that pixel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_app_browser import _CLIPPED_LABELS, CHROMIUM, HEIGHT, WIDTHS, _free_port

from isa_explorer.explorer import Explorer, ExplorerModel, app
from isa_explorer.explorer import compare_panels as panels
from isa_explorer.explorer.compare import Comparison
from isa_explorer.explorer.map_stats import LABELS

#: The README's screenshot of the Compare tab (1400 px wide, after a click).
DOCS_SHOT = Path(__file__).resolve().parents[1] / "docs" / "app_compare.jpg"
HEADS = ["isa", "nl", "cc"]  # the default choice without da, in its order
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:::gradio.queueing"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}"),
]


@pytest.fixture(scope="module")
def url():
    torch.manual_seed(0)
    demo = app.build_app(explorer=Explorer(ExplorerModel()))
    kwargs = app.launch_kwargs(port=_free_port())
    demo.queue(default_concurrency_limit=2).launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        yield f"http://127.0.0.1:{kwargs['server_port']}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": WIDTHS[0], "height": HEIGHT})
            page.goto(url, wait_until="load", timeout=60_000)
            page.get_by_role("tab", name="Compare").click()
            page.locator("#compare-load").wait_for(state="visible", timeout=60_000)
            yield page
        finally:
            browser.close()


def _status_has(page, text: str, timeout: int = 120_000) -> str:
    page.wait_for_function(
        "t => document.querySelector('#compare-status')?.innerText.includes(t)",
        arg=text,
        timeout=timeout,
    )
    return page.locator("#compare-status").inner_text()


def _table(page, i: int) -> dict[str, list[str]]:
    """The statistics table under column ``i``: ``{label: [this pixel, image mean]}``."""
    rows = page.evaluate(
        "i => [...document.querySelectorAll(`#compare-stats-${i} tbody tr`)]"
        ".map(r => [...r.cells].map(c => c.innerText.trim()))",
        i,
    )
    return {r[0]: r[1:] for r in rows}


def test_a_click_shows_every_heads_panels_and_the_librarys_numbers(page, tmp_path):
    for name in ("da",):  # the default choice is isa, nl, cc, da: three are asked for
        page.locator("#compare-heads").get_by_label(name, exact=True).uncheck()
    page.locator("#compare-load").click()
    _status_has(page, "Costs and image means ready")
    image = page.locator("#compare-image img")
    box = image.bounding_box()
    page.mouse.click(box["x"] + 0.4 * box["width"], box["y"] + 0.6 * box["height"])
    status = _status_has(page, "Query pixel")
    x, y = (int(v) for v in status.split("(")[1].split(")")[0].split(", "))
    assert abs(x - 102) <= 2 and abs(y - 77) <= 2, status  # 40 % of 256, 60 % of 128

    # The library, on its own, for the same scene and pixel.
    cmp = Comparison()
    cmp.load_example("lib", 3, "as drawn", HEADS)
    cmp.image_averages("lib")
    click = cmp.click("lib", x, y)
    for i, head in enumerate(click.heads):
        assert f"{head.head} head" in page.locator(f"#compare-title-{i}").inner_text()
        for part in ("final", "pred"):
            page.wait_for_function(
                f"() => document.querySelector('#compare-{part}-{i} img')?.naturalWidth > 0",
                timeout=30_000,
            )
        shown = _table(page, i)
        means = click.state.averages[head.name].means
        assert set(shown) == {LABELS[k] for k in head.statistics}
        for key, value in head.statistics.items():
            assert shown[LABELS[key]] == [panels.fmt(key, value), panels.fmt(key, means[key])]
        text = page.locator(f"#compare-stats-{i}").inner_text()
        assert f"Predicted {head.class_name}" in text and "Forward pass on this image:" in text
        assert "ms (median of" in text  # measured, not pending
        steps = page.locator(f"#compare-steps-{i} img")
        assert steps.count() >= 1
    assert not page.locator("#compare-final-3").is_visible()  # three heads, three columns
    assert "log scale" in page.locator("#compare-scale-bar").inner_text()
    assert page.evaluate(_CLIPPED_LABELS) == []

    page.locator("#compare-save").click()
    _status_has(page, "Saved the maps and statistics")
    names = page.locator("#compare-files").inner_text()
    assert f"compare_x{x}_y{y}" in names and ".npz" in names and ".json" in names
    page.screenshot(path=str(DOCS_SHOT), type="jpeg", quality=80, full_page=True)


def test_too_many_heads_is_refused_with_a_message(page):
    heads = page.locator("#compare-heads")
    heads.get_by_label("da", exact=True).check()
    _status_has(page, "Costs and image means ready")  # four heads: da analysed, measured
    assert page.locator("#compare-final-3").is_visible()
    heads.get_by_label("gc", exact=True).check()
    assert "choose 2 to 4 heads" in _status_has(page, "Problem")
    heads.get_by_label("gc", exact=True).uncheck()
    _status_has(page, "with 4 heads")  # all four ran and were measured: nothing runs again
    assert "Problem" not in page.locator("#compare-status").inner_text()
    assert "da head" in page.locator("#compare-title-3").inner_text()
