"""Screenshots of the notebooks' interactive views, taken in JupyterLab in headless Chromium.

    python docs/notebook_screenshots.py            # writes docs/notebook_*.png

Starts JupyterLab on a free local port (no token, bound to 127.0.0.1, for the run only) on a
scratch copy of ``notebooks/``, opens notebooks 1, 2 and 3, runs all their cells with the JupyterLab menu, waits for the
ipympl figure of each interactive view to render live, clicks the attention view once, and
saves the output of each view's cell. Needs the dev extra (playwright) and Chromium at
``/usr/bin/chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
VIEWS = {  # notebook -> (text of the view's cell, screenshot)
    "03_inside_a_model.ipynb": ("AttentionView(compare", "notebook_attention.png"),
    "01_isa_from_scratch.ipynb": ("GroupingView(h=", "notebook_grouping.png"),
    "02_cost.ipynb": ("CostView(resolution", "notebook_cost.png"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(port: int, workspaces: str, notebooks: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
        "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
        f"--ServerApp.root_dir={notebooks}", "--ServerApp.disable_check_xsrf=True",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly", f"--LabApp.workspaces_dir={workspaces}", *(["--allow-root"] if os.geteuid() == 0 else []),
    ]  # fmt: skip
    lab = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).status_code == 200:
                return lab
        except httpx.HTTPError:
            time.sleep(1)
    lab.terminate()
    raise RuntimeError("JupyterLab did not start")


def shoot(page, url: str, marker: str, out: Path, click: bool) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook", timeout=120_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    no_news = page.get_by_role("button", name="No", exact=True)
    if no_news.count():  # JupyterLab asks once whether to fetch its news
        no_news.first.click()
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    cell = page.locator(".jp-CodeCell", has_text=marker).first
    figure = cell.locator(".jupyter-matplotlib-canvas-div canvas").first
    figure.wait_for(timeout=300_000)
    cell.scroll_into_view_if_needed()
    page.wait_for_timeout(3000)
    if click:  # a click on the combined panel: the live canvas answers
        box = figure.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.62, box["y"] + box["height"] * 0.45)
        page.wait_for_timeout(3000)
    view = cell.locator(".jp-OutputArea-child", has=page.locator(".jupyter-matplotlib")).first
    view.screenshot(path=str(out))
    print(f"wrote {out}")


def main() -> int:
    port = _free_port()
    workspaces = tempfile.TemporaryDirectory(prefix="lab-workspaces-")
    # A copy of the notebooks: JupyterLab's autosave must not write outputs into the repository.
    scratch = Path(workspaces.name) / "repo"
    shutil.copytree(ROOT / "notebooks", scratch / "notebooks")
    for shared in ("tests", "results"):  # what the notebooks read by relative path
        (scratch / shared).symlink_to(ROOT / shared)
    lab = start_lab(port, workspaces.name, scratch / "notebooks")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                ],
            )
            for i, (notebook, (marker, name)) in enumerate(VIEWS.items()):
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                url = f"http://127.0.0.1:{port}/lab/workspaces/shot{i}/tree/{notebook}?reset"
                shoot(page, url, marker, ROOT / "docs" / name, notebook.startswith("03"))
                page.close()
            browser.close()
    finally:
        lab.terminate()
        lab.wait(timeout=30)
        workspaces.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
