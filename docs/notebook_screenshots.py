"""Screenshots of the notebooks' interactive views, taken in JupyterLab in headless Chromium.

    python docs/notebook_screenshots.py [NOTEBOOK.ipynb ...]   # writes docs/notebook_*.png

Starts JupyterLab on a free port of 127.0.0.1 (no token, for the run only) on a scratch copy of
``notebooks/``; for each notebook of :data:`VIEWS` (or those named) it waits until the notebook's
Python 3 kernel is attached and idle (REST ``/api/sessions`` and the toolbar; a "Select Kernel"
dialog gets Python 3), runs all cells from the menu, waits for every cell and the view's ipympl
figure, clicks the view where :data:`VIEWS` says, waits for its redraw and saves the view.

Every wait polls the real state with a generous time limit (a busy 2-core machine is slow) and,
past it, fails with a message naming the notebook, the step and what was last seen; a picture of
the page then is left in the temporary directory. Needs the dev extra (playwright) and Chromium
at ``/usr/bin/chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# notebook -> (text of the view's cell, screenshot, click first at (x, y) fractions of its canvas)
VIEWS = {
    "03_inside_a_model.ipynb": ("AttentionView(compare", "notebook_attention.png", (0.7, 0.6)),
    "01_isa_from_scratch.ipynb": ("GroupingView(h=", "notebook_grouping.png", None),
    "02_cost.ipynb": ("CostView(resolution", "notebook_cost.png", None),
    "07_isa_among_its_peers.ipynb": ("CompareView([", "notebook_compare.png", (0.3, 0.3)),
}
# Time limits of the steps, in seconds: generous, for a 2-core machine busy with other work.
LAB_START_S = 180
NOTEBOOK_OPEN_S = 180
KERNEL_ATTACH_S = 300
KERNEL_IDLE_S = 300
RUN_ALL_S = 900
FIGURE_S = 300
CLICK_S = 180
STABLE_POLLS = 3  # "all cells ran" must hold this many polls in a row (cells run one by one)
T = TypeVar("T")

# What the page shows, read in one go: the notebook's toolbar (kernel name, execution
# indicator), open dialogs, the code cells' prompts ("[3]:", "[*]:", "[ ]:") and the pixels of
# the view's canvas (how many are drawn, and a hash to see them change).
PAGE_STATE_JS = """(marker) => {
  const all = (s) => Array.from(document.querySelectorAll(s));
  const kernel = document.querySelector('.jp-Toolbar-kernelName');
  const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
  const cell = all('.jp-CodeCell').find((c) => c.textContent.includes(marker));
  const canvas = cell && cell.querySelector('.jupyter-matplotlib-canvas-div canvas');
  let pixels = null;
  if (canvas && canvas.width && canvas.height) {
    const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let drawn = 0, hash = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3]) drawn++;
      hash = (Math.imul(hash, 31) + d[i] + 3 * d[i + 1] + 7 * d[i + 2]) | 0;
    }
    pixels = {drawn, hash};
  }
  return {
    notebook: document.querySelector('.jp-Notebook') !== null,
    kernel: kernel ? kernel.textContent.trim() : null,
    indicator: indicator ? indicator.getAttribute('data-status') : null,
    dialogs: all('.jp-Dialog-header').map((e) => e.textContent.trim()),
    prompts: all('.jp-CodeCell .jp-InputPrompt').map((e) => e.textContent.trim()),
    view_cell: Boolean(cell),
    pixels,
  };
}"""


class StepTimeout(RuntimeError):
    """A step did not finish within its time limit; the message says which and what was seen."""


class RunAllStopped(RuntimeError):
    """Run All ended before the last cell (a cell raised); the message quotes its error."""


def wait_for(
    what: str, probe: Callable[[], tuple[T | None, str]], timeout_s: float, *, poll_s: float = 1.0
) -> T:
    """Poll ``probe`` until it returns a value, or fail naming ``what`` and the last state seen.

    Args:
        what: The awaited step, as the error message names it (notebook and step).
        probe: Returns ``(value, seen)``: ``value`` is ``None`` while waiting, and ``seen`` is a
            short description of the current state.
        timeout_s: The time limit.
        poll_s: Seconds between two probes.

    Returns:
        The first value that is not ``None``.

    Raises:
        StepTimeout: No value within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value, seen = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise StepTimeout(
                f"timed out after {timeout_s:.0f} s waiting for {what}; last seen: {seen}"
            )
        time.sleep(poll_s)


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Turn a Playwright timeout inside the block into a :class:`StepTimeout` naming ``what``."""
    try:
        yield
    except PlaywrightTimeout as e:
        raise StepTimeout(f"timed out waiting for {what}: {e.message.splitlines()[0]}") from e


def kernel_of(sessions: list[dict[str, Any]], notebook: str) -> dict[str, Any] | None:
    """The kernel model of ``notebook``'s session in ``GET /api/sessions``, or ``None``."""
    for session in sessions:
        path = session.get("path") or (session.get("notebook") or {}).get("path", "")
        if path == notebook or Path(path).name == notebook:
            return session.get("kernel")
    return None


def prompt_counts(prompts: list[str]) -> tuple[int, int, int]:
    """``(ran, queued or running, all)`` code cells, from their prompts ``[3]:``, ``[*]:``, ``[ ]:``."""
    ran = sum(p.strip("[]: ").isdigit() for p in prompts)
    running = sum("*" in p for p in prompts)
    return ran, running, len(prompts)


def describe(page_state: dict[str, Any], kernel: dict[str, Any] | None) -> str:
    """One line on what JupyterLab shows: the kernel (REST and page), dialogs, cells, figure."""
    rest = "no session" if kernel is None else "{execution_state} {name} kernel".format(**kernel)
    ran, running, total = prompt_counts(page_state.get("prompts", []))
    pixels = page_state.get("pixels")
    parts = [
        f"REST: {rest}, {(kernel or {}).get('connections', 0)} connections",
        f"page: kernel {page_state.get('kernel')!r}, indicator {page_state.get('indicator')!r}",
        f"cells run {ran} of {total} ({running} queued)",
        "figure drawn" if pixels and pixels["drawn"] else "no figure drawn",
    ]
    if page_state.get("dialogs"):
        parts.append(f"dialogs {page_state['dialogs']}")
    return "; ".join(parts)


def start_lab(port: int, workspaces: str, notebooks: Path, log: Path) -> subprocess.Popen:
    """Start JupyterLab on ``127.0.0.1:port`` and wait until its REST API answers."""
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
        "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
        f"--ServerApp.root_dir={notebooks}", "--ServerApp.disable_check_xsrf=True",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly", f"--LabApp.workspaces_dir={workspaces}", *(["--allow-root"] if os.geteuid() == 0 else []),
    ]  # fmt: skip
    with log.open("wb") as out:
        lab = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def up() -> tuple[bool | None, str]:
        if lab.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"JupyterLab exited with code {lab.returncode} at start:\n{tail}")
        try:
            code = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=5).status_code
        except httpx.HTTPError as e:
            return None, f"GET /api/status: {type(e).__name__}"
        return (True if code == 200 else None), f"GET /api/status: HTTP {code}"

    try:
        wait_for(f"JupyterLab's start on port {port}", up, LAB_START_S)
    except BaseException:
        lab.terminate()
        raise
    return lab


class NotebookRun:
    """One notebook opened in JupyterLab: its kernel, Run All, and its view's screenshot.

    Args:
        page: A fresh browser page.
        base: JupyterLab's address, ``http://127.0.0.1:<port>``.
        notebook: The notebook's file name.
        marker: Text of the view's cell.
    """

    poll_s = 1.0  # seconds between two looks at the page and the REST API

    def __init__(self, page: Page, base: str, notebook: str, marker: str):
        self.page, self.base, self.notebook, self.marker = page, base, notebook, marker
        self.start = time.monotonic()
        self.picked_kernel = False  # a "Select Kernel" dialog was answered

    def kernel(self) -> dict[str, Any] | None:
        """The notebook's kernel as JupyterLab's REST API reports it."""
        return kernel_of(httpx.get(f"{self.base}/api/sessions", timeout=10).json(), self.notebook)

    def state(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """What the page shows and the REST kernel, after answering JupyterLab's dialogs."""
        self.picked_kernel |= self.answer_dialogs()
        return self.page.evaluate(PAGE_STATE_JS, self.marker), self.kernel()

    def answer_dialogs(self) -> bool:
        """Pick Python 3 in a "Select Kernel" dialog; decline the news. Whether a kernel was picked."""
        no_news = self.page.get_by_role("button", name="No", exact=True)  # the news toast
        if no_news.count() and no_news.first.is_visible():  # it may slide away meanwhile
            with contextlib.suppress(PlaywrightError):
                no_news.first.click(timeout=2000)
        dialog = self.page.locator(".jp-Dialog", has_text="Select Kernel")
        if not dialog.count():
            return False
        with step(f"{self.notebook}: the Select Kernel dialog"):
            choice = dialog.locator("select")
            values = [o.get_attribute("value") or "" for o in choice.locator("option").all()]
            python3 = [v for v in values if '"python3"' in v]
            if python3:
                choice.select_option(value=python3[0])
            dialog.locator("button.jp-mod-accept").click()
        print(f"{self.notebook}: answered the Select Kernel dialog with Python 3", flush=True)
        return True

    def wait(self, what: str, done: Callable[[dict, dict | None], T | None], timeout_s: float) -> T:
        """Wait until ``done(page_state, kernel)`` returns a value; print the step's time."""

        def probe() -> tuple[T | None, str]:
            page_state, kernel = self.state()
            return done(page_state, kernel), describe(page_state, kernel)

        value = wait_for(f"{self.notebook}: {what}", probe, timeout_s, poll_s=self.poll_s)
        print(f"{self.notebook}: {what} ({time.monotonic() - self.start:.1f} s)", flush=True)
        return value

    def open(self, url: str) -> None:
        """Open the notebook and wait until its kernel is attached and idle."""
        with step(f"{self.notebook}: the page {url}"):
            self.page.goto(url, timeout=NOTEBOOK_OPEN_S * 1000)
        self.wait("notebook open", lambda s, _k: s["notebook"] or None, NOTEBOOK_OPEN_S)

        def attached(s: dict, k: dict | None) -> bool | None:
            on_page = s["kernel"] not in (None, "", "No Kernel") and not s["dialogs"]
            connected = k is not None and k.get("connections", 0) > 0
            return True if on_page and connected else None

        def idle(s: dict, k: dict | None) -> bool | None:
            rest_idle = k is not None and k.get("execution_state") == "idle"
            return True if rest_idle and s["indicator"] == "idle" else None

        self.wait("kernel attach (Python 3 kernel connected)", attached, KERNEL_ATTACH_S)
        self.wait("kernel idle", idle, KERNEL_IDLE_S)

    def click_run_all(self) -> None:
        """Click Run > Run All Cells in JupyterLab's menu."""
        self.picked_kernel = False
        with step(f"{self.notebook}: the menu Run > Run All Cells"):
            self.page.get_by_role("menuitem", name="Run", exact=True).click()
            self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

    def run_all(self) -> None:
        """Run all cells from the menu and wait until they have all run."""
        self.click_run_all()
        calm = [0]

        def finished(s: dict, k: dict | None) -> tuple[int, int] | None:
            ran, running, total = prompt_counts(s["prompts"])
            idle = k is not None and k["execution_state"] == "idle" and s["indicator"] == "idle"
            if self.picked_kernel and idle and not ran and not running:
                self.click_run_all()  # the dialog came instead of the run: run all again
            quiet = idle and not running and ran
            calm[0] = calm[0] + 1 if quiet else 0
            return (ran, total) if calm[0] >= STABLE_POLLS else None

        ran, total = self.wait("Run All (every cell run, kernel idle)", finished, RUN_ALL_S)
        if ran < total:
            errors = self.page.locator(
                ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
            )
            last = errors.last.inner_text()[-2000:] if errors.count() else "(no error output)"
            raise RunAllStopped(
                f"{self.notebook}: Run All stopped after {ran} of {total} code cells:\n{last}"
            )

    def figure(self, after: int | None = None) -> int:
        """Wait until the view's canvas has drawn (and differs from ``after``) and holds still.

        Returns:
            The hash of the canvas's pixels.
        """
        seen: list[int] = []

        def drawn(s: dict, _k: dict | None) -> int | None:
            pixels = s["pixels"]
            if not (pixels and pixels["drawn"]) or pixels["hash"] == after:
                seen.clear()
                return None
            seen.append(pixels["hash"])
            return pixels["hash"] if seen[-2:] == [pixels["hash"]] * 2 else None

        what = "the view's figure" if after is None else "the view's redraw after the click"
        return self.wait(what, drawn, FIGURE_S if after is None else CLICK_S)

    def shoot(self, url: str, out: Path, click: tuple[float, float] | None) -> None:
        """Open, run all, wait for the view (click it once if asked) and save its output."""
        self.open(url)
        self.run_all()
        cell = self.page.locator(".jp-CodeCell", has_text=self.marker).first
        canvas = cell.locator(".jupyter-matplotlib-canvas-div canvas").first
        with step(f"{self.notebook}: the view's cell on screen"):
            cell.scroll_into_view_if_needed(timeout=FIGURE_S * 1000)
        before = self.figure()
        if click:  # a click inside a panel: the live canvas answers
            with step(f"{self.notebook}: a click on the view"):
                canvas.scroll_into_view_if_needed(timeout=CLICK_S * 1000)  # a tall cell's too
                box = canvas.bounding_box(timeout=CLICK_S * 1000)
                if box is None:
                    raise StepTimeout(f"{self.notebook}: the view's canvas is not on screen")
                x, y = box["x"] + box["width"] * click[0], box["y"] + box["height"] * click[1]
                self.page.mouse.click(x, y)
            self.figure(after=before)
            self.page.wait_for_timeout(1500)  # the toolbar's fade-in (0.5 s) has ended
        view = cell.locator(".jp-OutputArea-child", has=self.page.locator(".jupyter-matplotlib"))
        with step(f"{self.notebook}: the screenshot of the view"):
            view.first.screenshot(path=str(out), timeout=FIGURE_S * 1000)
        print(f"wrote {out}", flush=True)

    def shut_down(self) -> None:
        """End the notebook's session (and kernel): the next notebook gets the CPU."""
        for session in httpx.get(f"{self.base}/api/sessions", timeout=10).json():
            if kernel_of([session], self.notebook) is not None:
                httpx.delete(f"{self.base}/api/sessions/{session['id']}", timeout=60)


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv  # the notebooks to photograph (none: all)
    if unknown := sorted(set(names) - set(VIEWS)):
        raise SystemExit(f"no view to photograph in {unknown}: choose from {', '.join(VIEWS)}")
    views = {n: v for n, v in VIEWS.items() if not names or n in names}
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    workspaces = tempfile.TemporaryDirectory(prefix="lab-workspaces-")
    # A copy of the notebooks: JupyterLab's autosave must not write outputs into the repository.
    scratch = Path(workspaces.name) / "repo"
    shutil.copytree(ROOT / "notebooks", scratch / "notebooks")
    for shared in ("tests", "results"):  # what the notebooks read by relative path
        (scratch / shared).symlink_to(ROOT / shared)
    try:
        lab = start_lab(port, workspaces.name, scratch / "notebooks", scratch / "lab.log")
    except (StepTimeout, RuntimeError) as e:
        workspaces.cleanup()
        print(f"notebook_screenshots: {e}", file=sys.stderr)
        return 1
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            for i, (notebook, (marker, name, click)) in enumerate(views.items()):
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                run = NotebookRun(page, base, notebook, marker)
                url = f"{base}/lab/workspaces/shot{i}/tree/{notebook}?reset"
                try:
                    run.shoot(url, ROOT / "docs" / name, click)
                except (StepTimeout, RunAllStopped) as e:
                    picture = Path(tempfile.gettempdir()) / f"notebook_screenshots_{i}.png"
                    with contextlib.suppress(PlaywrightError):
                        page.screenshot(path=str(picture))
                    print(f"notebook_screenshots: {e}\nthe page then: {picture}", file=sys.stderr)
                    return 1
                run.shut_down()
                page.close()
            browser.close()
    finally:
        lab.terminate()
        lab.wait(timeout=30)
        workspaces.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
