"""A real browser (headless Chromium via Playwright) loads an example and clicks a pixel."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from isa_explorer.explorer import Explorer, ExplorerModel, app

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:::gradio.queueing"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def explorer() -> Explorer:
    torch.manual_seed(0)
    return Explorer(ExplorerModel())


@pytest.fixture(scope="module")
def url(explorer):
    demo = app.build_app(explorer=explorer)
    kwargs = app.launch_kwargs(port=_free_port())
    demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        yield f"http://127.0.0.1:{kwargs['server_port']}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    # Not "networkidle": the app keeps a heartbeat stream open (demo.unload needs it).
    page.goto(url, wait_until="load", timeout=60_000)
    page.locator("#load-example").wait_for(state="visible", timeout=60_000)
    return page


@pytest.fixture(scope="module")
def page(browser, url):
    return _open(browser, url)


def test_click_before_loading_an_image_says_what_to_do(page):
    page.locator("#prediction").click()  # an empty image: nothing to select, no crash
    assert "Pick an example" in page.locator("#status").inner_text()


def test_example_then_click_shows_the_three_attention_maps(page, tmp_path):
    page.locator("#load-example").click()
    image = page.locator("#prediction img")
    image.wait_for(state="visible", timeout=60_000)
    page.wait_for_function(
        "() => document.querySelector('#prediction img')?.naturalWidth > 0", timeout=30_000
    )
    assert "Loaded example 0" in page.locator("#status").inner_text()
    assert "cue-red" in page.locator("#legend").inner_text()
    box = image.bounding_box()
    # A pixel at 40 % / 60 % of the image; the displayed image may be scaled by the layout.
    page.mouse.click(box["x"] + 0.4 * box["width"], box["y"] + 0.6 * box["height"])
    for name in ("long", "short", "combined"):
        page.locator(f"#map-{name} img").wait_for(state="visible", timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#map-long img, #map-short img, #map-combined img')]"
        ".every(i => i.naturalWidth > 0)",
        timeout=30_000,
    )
    query = page.locator("#query").inner_text()
    # 40 % of 256 = 102.4, 60 % of 128 = 76.8 (one display pixel of slack either way).
    x, y = (int(v) for v in query.split("(x=")[1].split(")")[0].replace("y=", "").split(", "))
    assert abs(x - 102) <= 2 and abs(y - 77) <= 2, query
    assert "Most attended cells" in page.locator("#regions").inner_text()
    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_attribution_of_the_clicked_pixel_appears(page):
    page.get_by_role("tab", name="Attribution").click()
    page.locator("#explain").click()
    page.locator("#attribution img").wait_for(state="visible", timeout=60_000)
    page.wait_for_function(
        "() => document.querySelector('#attribution-text')?.innerText.includes('LayerGradCam')",
        timeout=60_000,
    )
    assert "at pixel (" in page.locator("#attribution-text").inner_text()
    page.get_by_role("tab", name="Explore").click()


def test_a_corrupt_upload_gives_a_clear_status_message(page, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image at all")
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('Problem')",
        timeout=60_000,
    )
    status = page.locator("#status").inner_text()
    assert "not an image PIL can read" in status and "Traceback" not in status


def test_efficiency_tab_shows_the_committed_results_or_how_to_make_them(page):
    page.get_by_role("tab", name="Efficiency").click()
    page.wait_for_function(
        "() => !document.body.innerText.includes('Open this tab to load the committed results')",
        timeout=60_000,
    )
    text = page.locator("body").inner_text()
    assert "Committed results" in text or "isa-explorer bench attention" in text
    page.get_by_role("tab", name="Explore").click()


def test_an_uploaded_16_bit_grey_image_is_converted_and_predicted(page, tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "deep.png"
    deep = np.linspace(0, 65535, 96 * 160).reshape(96, 160).astype(np.uint16)
    Image.fromarray(deep).save(path)
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():  # a previous upload is still shown
        clear.first.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('Loaded upload')",
        timeout=60_000,
    )
    status = page.locator("#status").inner_text()
    assert "160x96" in status and "16-bit" in status and "grey" in status


def test_closing_a_tab_frees_its_analysed_image(browser, url, explorer):
    import time

    tab = _open(browser, url)
    before = len(explorer.store)
    tab.locator("#load-example").click()
    tab.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('Loaded example')",
        timeout=60_000,
    )
    assert len(explorer.store) == before + 1
    tab.close()
    deadline = time.monotonic() + 60
    while len(explorer.store) > before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(explorer.store) == before  # demo.unload -> SessionStore.discard
