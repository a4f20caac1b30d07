"""A real browser (headless Chromium via Playwright) loads an example and clicks a pixel.

The Explore and Efficiency tabs are photographed at a wide and a narrow window, and at each no
label may overflow its box or run under a toolbar button.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch

from isa_explorer.explorer import Explorer, ExplorerModel, app

CHROMIUM = Path("/usr/bin/chromium")
#: Window widths of the screenshots and layout checks, and their height.
WIDTHS, HEIGHT = (1400, 900), 1000
#: The README's screenshot of the Explore tab (1400 px wide, after a click).
DOCS_SHOT = Path(__file__).resolve().parents[1] / "docs" / "app_explore.jpg"
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
    page = browser.new_page(viewport={"width": WIDTHS[0], "height": HEIGHT})
    # Not "networkidle": the app keeps a heartbeat stream open (demo.unload needs it).
    page.goto(url, wait_until="load", timeout=60_000)
    page.locator("#load-example").wait_for(state="visible", timeout=60_000)
    return page


@pytest.fixture(scope="module")
def page(browser, url):
    return _open(browser, url)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go (``--basetemp`` keeps them in a known place)."""
    return tmp_path_factory.mktemp("screens")


# Problems of the visible blocks: a label wider than its box, a label under one of its block's
# toolbar buttons, or a label over a plot (it would hide the figure's title).
_CLIPPED_LABELS = """() => {
  const shown = (e) => e.checkVisibility() && e.getBoundingClientRect().width > 0;
  const meet = (a, b) => a.left < b.right - 1 && b.left < a.right - 1
    && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  const problems = [];
  for (const block of document.querySelectorAll('.block')) {
    if (!shown(block)) continue;
    const own = (sel) => [...block.querySelectorAll(sel)]
      .filter((e) => e.closest('.block') === block && shown(e));
    const buttons = own('.icon-button-wrapper button').map((b) => b.getBoundingClientRect());
    const plots = own('[data-testid="matplotlib"] img').map((i) => i.getBoundingClientRect());
    for (const label of own('label[data-testid="block-label"]')) {
      const box = label.getBoundingClientRect();
      const what = `${block.id || 'a block'}: label "${label.innerText.trim()}"`;
      if (label.scrollWidth > label.clientWidth + 1) problems.push(`${what} is cut`);
      if (buttons.some((b) => meet(box, b))) problems.push(`${what} runs under a button`);
      if (plots.some((p) => meet(box, p))) problems.push(`${what} covers the figure`);
    }
  }
  return problems;
}"""


def _screenshots(page, shots: Path, name: str) -> list[Path]:
    """Screenshots of the page at every width of ``WIDTHS``, each after the layout checks."""
    paths = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": HEIGHT})
        page.wait_for_timeout(500)  # the layout follows the window
        assert page.evaluate(_CLIPPED_LABELS) == [], f"{name} at {width} px"
        paths.append(shots / f"{name}_{width}.png")
        page.screenshot(path=str(paths[-1]), full_page=True)
        assert paths[-1].stat().st_size > 10_000
    page.set_viewport_size({"width": WIDTHS[0], "height": HEIGHT})
    return paths


def _images_shown(page) -> list[str]:
    """The ids of the Explore tab's images that show something."""
    return page.evaluate(
        "() => ['prediction', 'map-long', 'map-short', 'map-combined']"
        ".filter(id => document.querySelector(`#${id} img`))"
    )


def _settle(page) -> None:
    """Wait until no event is pending (every progress indicator hidden)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"status-tracker\"]')]"
        ".every(t => t.classList.contains('hide'))",
        timeout=60_000,
    )


def _upload(page, path: Path) -> None:
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():  # a previous upload is still shown
        clear.first.click()
        page.wait_for_function("() => !document.querySelector('#prediction img')")
    page.locator("#upload input[type=file]").set_input_files(str(path))


def test_click_before_loading_an_image_says_what_to_do(page):
    page.locator("#prediction").click()  # an empty image: nothing to select, no crash
    assert "Pick an example" in page.locator("#status").inner_text()


def test_example_then_click_shows_the_three_attention_maps(page, shots):
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
    assert [page.locator(f"#map-{n} label").inner_text().strip() for n in ("long", "short")] == [
        "Long-range",
        "Short-range",
    ]
    assert "same offset in every 8x8 block" in page.locator("#maps-help").inner_text()
    _screenshots(page, shots, "explore")
    page.screenshot(path=str(DOCS_SHOT), type="jpeg", quality=85, full_page=True)


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
    assert "not an image in a readable format" in status and "Traceback" not in status


def test_efficiency_tab_shows_the_committed_results_or_how_to_make_them(page):
    page.get_by_role("tab", name="Efficiency").click()
    page.wait_for_function(
        "() => !document.body.innerText.includes('Open this tab to load the committed results')",
        timeout=60_000,
    )
    text = page.locator("body").inner_text()
    assert "Committed results" in text or "isa-explorer bench attention" in text
    page.get_by_role("tab", name="Explore").click()


def test_the_live_benchmark_runs_what_its_button_promises(page, shots):
    from isa_explorer.explorer.efficiency import live_modules

    page.get_by_role("tab", name="Efficiency").click()
    button = page.locator("#live-benchmark")
    promised = set(re.findall(r"\d+x\d+", button.inner_text()))
    assert "512x1024" in promised
    button.click()
    page.wait_for_function(
        "() => document.querySelector('#live-plot img')?.naturalWidth > 0", timeout=300_000
    )
    rows = page.evaluate(
        "() => [...document.querySelectorAll('#live-text tbody tr')]"
        ".map(r => [...r.cells].map(c => c.innerText.trim()))"
    )
    ran = {(row[0], row[2]) for row in rows if row[3] == "ok"}
    assert ran == {(m, size) for m in live_modules() for size in promised}, rows
    assert not any(row[-1] in ("0.0", "0") for row in rows)  # unmeasured: "< 1 (not measured)"
    _screenshots(page, shots, "efficiency")
    page.get_by_role("tab", name="Explore").click()


def test_an_uploaded_16_bit_grey_image_is_converted_and_predicted(page, tmp_path, shots):
    import numpy as np
    from PIL import Image

    path = tmp_path / "deep.png"
    deep = np.linspace(0, 65535, 96 * 160).reshape(96, 160).astype(np.uint16)
    Image.fromarray(deep).save(path)
    _upload(page, path)
    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('Loaded upload')",
        timeout=60_000,
    )
    status = page.locator("#status").inner_text()
    assert "160x96" in status and "16-bit" in status and "grey" in status
    _screenshots(page, shots, "explore_upload")  # a file in the box: its clear button shows


def test_a_failed_upload_after_a_photo_leaves_nothing_of_the_photo(page, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    photo, truncated, data = tmp_path / "photo.png", tmp_path / "truncated.png", io.BytesIO()
    Image.fromarray(rgb).save(photo)
    Image.fromarray(rgb).save(data, "PNG")
    truncated.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    _upload(page, photo)
    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('Loaded upload photo.png')"
        " && document.querySelector('#prediction img')?.naturalWidth > 0",
        timeout=60_000,
    )
    box = page.locator("#prediction img").bounding_box()
    page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
    page.locator("#map-combined img").wait_for(state="visible", timeout=60_000)
    # Clearing the file box takes its image away...
    page.locator("#upload button[aria-label='Clear']").click()
    page.wait_for_function("() => !document.querySelector('#map-combined img')", timeout=30_000)
    assert _images_shown(page) == []
    assert page.locator("#status").inner_text().strip() == "Pick an example or upload an image."
    # ...and a file that fails to load shows no image either, only the problem.
    page.locator("#upload input[type=file]").set_input_files(str(truncated))
    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('Problem')", timeout=60_000
    )
    _settle(page)
    assert "truncated" in page.locator("#status").inner_text()
    assert "truncated" in page.locator("#upload").inner_text()  # the file box names the file
    for part in ("#query", "#regions", "#legend"):
        assert page.locator(part).inner_text().strip() == "", part
    # Redrawing (the grid checkbox) finds no stored image to draw: the photo is gone.
    page.get_by_text("Show feature cells and 8x8 blocks").click()
    page.wait_for_timeout(500)
    _settle(page)
    assert _images_shown(page) == []
    page.get_by_text("Show feature cells and 8x8 blocks").click()
    # An example replaces the failed file: the file box no longer names it.
    page.locator("#load-example").click()
    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('Loaded example')",
        timeout=60_000,
    )
    assert "truncated" not in page.locator("#upload").inner_text()


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
