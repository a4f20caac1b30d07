"""The waiting logic of ``docs/notebook_screenshots.py``, on a scripted page (no browser).

The screenshot script itself needs JupyterLab and Chromium; these tests drive its waits with a
page object that replays what JupyterLab shows, and check what they wait for and what a time
out says.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("playwright")
pytest.importorskip("httpx")

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "notebook_screenshots.py"
NOTEBOOK = "03_inside_a_model.ipynb"


@pytest.fixture
def shots(monkeypatch):
    """The script as a module, with every step's time limit cut to 0.2 s."""
    spec = importlib.util.spec_from_file_location("notebook_screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in (
        "NOTEBOOK_OPEN_S",
        "KERNEL_ATTACH_S",
        "KERNEL_IDLE_S",
        "RUN_ALL_S",
        "FIGURE_S",
        "CLICK_S",
    ):
        monkeypatch.setattr(module, name, 0.2)
    return module


def page_state(kernel: str | None, indicator: str | None = "idle", **more: Any) -> dict:
    """What the script reads from the page (the keys of its ``PAGE_STATE_JS``)."""
    state = {"notebook": True, "kernel": kernel, "indicator": indicator, "dialogs": []}
    return state | {"prompts": ["[ ]:"] * 3, "view_cell": True, "pixels": None} | more


def rest_kernel(state: str = "idle", connections: int = 1) -> dict:
    """A kernel model as ``GET /api/sessions`` reports it."""
    return {"id": "k1", "name": "python3", "execution_state": state, "connections": connections}


class ScriptedPage:
    """Replays page states, one per look (the last one stays); no dialog is ever open."""

    def __init__(self, states: list[dict]):
        self.states, self.looks, self.clicks = states, 0, 0

    def goto(self, url: str, timeout: float) -> None:
        pass

    def evaluate(self, script: str, marker: str) -> dict:
        self.looks += 1
        return self.states[min(self.looks, len(self.states)) - 1]

    def get_by_role(self, *args: Any, **kwargs: Any) -> ScriptedPage:
        return self

    def locator(self, *args: Any, **kwargs: Any) -> ScriptedPage:
        return self

    def count(self) -> int:
        return 0

    def click(self) -> None:
        self.clicks += 1


def notebook_run(shots, states: list[dict], kernels: list[dict | None]):
    run = shots.NotebookRun(ScriptedPage(states), "http://lab", NOTEBOOK, "AttentionView(")
    run.poll_s = 0.0
    answers = iter(kernels)
    last = [None]

    def kernel():  # the REST kernel, one per look (the last one stays)
        last[0] = next(answers, last[0])
        return last[0]

    run.kernel = kernel
    return run


def test_the_kernel_counts_as_attached_only_once_the_page_shows_it(shots):
    # Just opened: the toolbar says "No Kernel" while the execution indicator already says
    # idle, and the REST session comes a moment later. Run All clicked then gets a dialog.
    states = [page_state("No Kernel")] * 3 + [page_state("Python 3 (ipykernel)")]
    kernels = [None, rest_kernel("starting", 0), rest_kernel()]
    run = notebook_run(shots, states, kernels)
    run.open("http://lab/notebook")
    # one look for the open notebook, three until the page shows the kernel (the third
    # already has it idle and connected in REST), one for idle
    assert run.page.looks == 5


def test_a_kernel_that_never_attaches_times_out_naming_the_notebook_and_step(shots):
    dialog = page_state("No Kernel", dialogs=["Select Kernel"])
    run = notebook_run(shots, [dialog], [None])
    with pytest.raises(shots.StepTimeout) as e:
        run.open("http://lab/notebook")
    message = str(e.value)
    assert f"{NOTEBOOK}: kernel attach" in message
    assert "'No Kernel'" in message and "no session" in message and "Select Kernel" in message


def test_a_busy_kernel_times_out_as_kernel_idle(shots):
    run = notebook_run(shots, [page_state("Python 3", "busy")], [rest_kernel("busy")])
    with pytest.raises(shots.StepTimeout, match=f"{NOTEBOOK}: kernel idle.*busy python3 kernel"):
        run.open("http://lab/notebook")


def test_run_all_waits_for_every_cell_and_reports_a_stop(shots):
    running = page_state("Python 3", prompts=["[1]:", "[*]:", "[*]:"])  # idle between cells
    done = page_state("Python 3", prompts=["[1]:", "[2]:", "[3]:"])
    run = notebook_run(shots, [page_state("Python 3")] + [running] * 4 + [done], [rest_kernel()])
    run.run_all()
    assert run.page.clicks == 2  # the menu Run, then Run All Cells
    assert run.page.looks == 5 + shots.STABLE_POLLS  # done once it held that many looks
    stopped = page_state("Python 3", prompts=["[1]:", "[2]:", "[ ]:"])  # a cell raised
    run = notebook_run(shots, [stopped], [rest_kernel()])
    with pytest.raises(shots.RunAllStopped, match=f"{NOTEBOOK}: Run All stopped after 2 of 3"):
        run.run_all()


def test_the_figure_must_draw_and_hold_still(shots):
    blank = page_state("Python 3", pixels={"drawn": 0, "hash": 1})
    drawing = [page_state("Python 3", pixels={"drawn": 9, "hash": h}) for h in (2, 3, 3)]
    run = notebook_run(shots, [blank, *drawing], [rest_kernel()])
    assert run.figure() == 3 and run.page.looks == 4
    # after a click: the same pixels are no redraw
    run = notebook_run(shots, [drawing[-1]], [rest_kernel()])
    with pytest.raises(shots.StepTimeout, match="redraw after the click.*figure drawn"):
        run.figure(after=3)


def test_wait_for_returns_the_first_value_and_says_what_it_last_saw(shots):
    answers = iter([(None, "a"), (None, "b"), ("done", "c")])
    assert shots.wait_for("x", lambda: next(answers), 5, poll_s=0) == "done"
    with pytest.raises(shots.StepTimeout) as e:
        shots.wait_for(f"{NOTEBOOK}: lab start", lambda: (None, "HTTP 503"), 0.05, poll_s=0.01)
    assert str(e.value).startswith("timed out after 0 s waiting for 03_inside_a_model.ipynb: lab")
    assert str(e.value).endswith("last seen: HTTP 503")


def test_a_playwright_timeout_is_reported_with_its_step(shots):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with pytest.raises(shots.StepTimeout) as e, shots.step("nb: the menu"):
        raise PlaywrightTimeout("Timeout 5ms exceeded.\nCall log:\n  - waiting for the menu")
    assert str(e.value) == "timed out waiting for nb: the menu: Timeout 5ms exceeded."


def test_sessions_and_prompts_are_read_as_jupyterlab_writes_them(shots):
    sessions = [
        {"path": "01_isa_from_scratch.ipynb", "kernel": rest_kernel("busy")},
        {"path": f"sub/{NOTEBOOK}", "kernel": rest_kernel("idle")},
    ]
    assert shots.kernel_of(sessions, NOTEBOOK)["execution_state"] == "idle"
    assert shots.kernel_of(sessions[:1], NOTEBOOK) is None
    assert shots.prompt_counts(["[1]:", "[12]:", "[*]:", "[ ]:"]) == (2, 1, 4)
    assert shots.prompt_counts([]) == (0, 0, 0)


def test_every_view_is_found_in_its_notebook_and_clicked_inside_its_canvas(shots):
    notebooks = SCRIPT.parents[1] / "notebooks"
    assert "07_isa_among_its_peers.ipynb" in shots.VIEWS
    for notebook, (marker, png, click) in shots.VIEWS.items():
        source = (notebooks / notebook).with_suffix(".py").read_text()
        assert source.count(marker) == 1, f"{notebook}: its view's cell is not unique: {marker!r}"
        assert png.startswith("notebook_") and png.endswith(".png")
        assert click is None or all(0 < f < 1 for f in click)
    assert len({png for _, png, _ in shots.VIEWS.values()}) == len(shots.VIEWS)


def test_an_unknown_notebook_is_refused_before_anything_starts(shots, monkeypatch):
    def no_lab(*args, **kwargs):
        raise AssertionError("JupyterLab started")

    monkeypatch.setattr(shots, "start_lab", no_lab)
    with pytest.raises(SystemExit, match="no view to photograph in .'08_nope.ipynb'.: choose"):
        shots.main(["07_isa_among_its_peers.ipynb", "08_nope.ipynb"])
