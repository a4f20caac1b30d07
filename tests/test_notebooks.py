"""The teaching notebooks: reviewable jupytext pairs that run top to bottom on the CPU.

Each notebook is kept twice in ``notebooks/``: a jupytext percent script (``NN_name.py``, the
reviewed source) and its paired ``NN_name.ipynb`` stored without outputs. After editing the
script, refresh the pair with ``jupytext --sync notebooks/*.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 600  # a loaded CPU can be several times slower than an idle one


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def _kernel_manager() -> KernelManager:
    """A ``python3`` kernel of the interpreter running the tests (nothing registered globally).

    With no kernel directories, the spec manager only knows ipykernel's own ``python3`` spec,
    which launches ``sys.executable``: a user-wide ``python3`` spec cannot take over.
    """
    specs = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    return KernelManager(kernel_name=NATIVE_KERNEL_NAME, kernel_spec_manager=specs)


EXPECTED = [
    "01_isa_from_scratch",
    "02_cost",
    "03_inside_a_model",
    "04_why_context_matters",
    "05_real_datasets",
    "06_checkpoints_training_evaluation",
    "07_isa_among_its_peers",
]


def test_notebooks_are_present():
    assert [p.stem for p in SOURCES] == EXPECTED


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_pair_is_in_sync_and_stored_without_outputs(source: Path):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --sync {source}`"
    stored = nbformat.read(ipynb, as_version=4)
    assert _cells(jupytext.read(source)) == _cells(stored), (
        f"{ipynb.name} differs from {source.name}: run `jupytext --sync notebooks/*.py`"
    )
    for cell in stored.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{ipynb.name} holds outputs: store it stripped (`jupytext --sync` writes none)"
            )


def test_every_ipynb_has_its_source():
    orphans = [p.name for p in NOTEBOOKS_DIR.glob("*.ipynb") if not p.with_suffix(".py").exists()]
    assert not orphans, f"notebooks without a jupytext source: {orphans}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_opens_with_what_it_teaches_and_ends_with_exercises(source: Path):
    cells = jupytext.read(source).cells
    assert cells[0].cell_type == "markdown" and "What this notebook teaches" in cells[0].source
    assert cells[-1].cell_type == "markdown" and "## Exercises" in cells[-1].source


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(source: Path):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    client = NotebookClient(
        nb,
        km=_kernel_manager(),
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    elapsed = time.perf_counter() - start
    print(f"{source.stem}: {elapsed:.1f} s")
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
