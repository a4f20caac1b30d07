"""The ``isa-explorer`` command: every tool under one name, each with its own options."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import isa_explorer
from isa_explorer import cli
from isa_explorer.bench.cli import BENCHMARKS
from isa_explorer.experiments.cli import EXPERIMENTS

TOOLS = [[name] for name in cli.COMMANDS if name not in ("bench", "experiment")]
TOOLS += [["bench", name] for name in BENCHMARKS] + [["experiment", n] for n in EXPERIMENTS]


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("app", "fit", "evaluate", "predict", "convert", "zoo", "export", "bench"):
        assert f"  {name} " in out
    assert cli.main([]) == 2  # no command: the list, and a usage error


@pytest.mark.parametrize("argv", TOOLS, ids=" ".join)
def test_each_tool_answers_help_under_its_full_name(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: isa-explorer {' '.join(argv)}")


def test_unknown_commands_name_the_choices(capsys):
    assert cli.main(["train"]) == 2
    assert "unknown command 'train'; choose from app, fit" in capsys.readouterr().err
    assert cli.main(["bench", "gpu-everything"]) == 2
    assert "unknown benchmark 'gpu-everything'; choose from attention" in capsys.readouterr().err


def test_python_dash_m_and_the_version():
    done = subprocess.run(
        [sys.executable, "-m", "isa_explorer", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("isa-explorer 0.")


def test_a_command_whose_extra_is_missing_says_how_to_install_it(monkeypatch, capsys):
    real = cli.importlib.import_module

    def without_gradio(name: str):
        if name == "isa_explorer.explorer.app":
            raise ModuleNotFoundError("No module named 'gradio'", name="gradio")
        return real(name)

    monkeypatch.setattr(cli.importlib, "import_module", without_gradio)
    assert cli.main(["app", "--help"]) == 1
    err = capsys.readouterr().err
    assert "isa-explorer app needs 'gradio'" in err and "isa-explorer[all]" in err


PACKAGE = Path(cli.__file__).resolve().parent


def _defines_main(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


def _runs_main(path: Path) -> bool:
    """Whether the module ends in ``if __name__ == "__main__":`` that calls ``main``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
            return any(ast.unparse(c.func) == "main" for c in calls)
    return False


def runnable_modules() -> list[str]:
    """``python -m`` names of every module with a ``main`` and every package with a __main__."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            names.append(".".join(parts[:-1]))
        elif _defines_main(path):
            names.append(".".join(parts))
    return names


def test_every_module_with_a_main_runs_it():
    """``python -m MODULE`` of a module that has ``main()`` must not exit 0 having done nothing."""
    silent = [
        str(p.relative_to(PACKAGE.parent))
        for p in sorted(PACKAGE.rglob("*.py"))
        if _defines_main(p) and not _runs_main(p)
    ]
    assert not silent, f"main() defined but never run under python -m: {silent}"
    assert len(runnable_modules()) >= 15 and "isa_explorer.convert" in runnable_modules()


@pytest.mark.slow
def test_python_dash_m_help_of_every_runnable_module():
    """Each runnable module answers ``--help`` with its usage (exit 0), none prints nothing."""

    def help_of(name: str) -> tuple[str, subprocess.CompletedProcess]:
        cmd = [sys.executable, "-m", name, "--help"]
        return name, subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(help_of, runnable_modules()))
    bad = {
        name: f"exit {p.returncode}: {(p.stdout + p.stderr).strip()[-300:]!r}"
        for name, p in done
        if p.returncode != 0 or not p.stdout.startswith("usage:")
    }
    assert not bad, bad


#: The developer benchmarks: scripts of the repository (``python benchmarks/NAME.py``), moved
#: out of the package (``isa_explorer/bench/click.py``, ...). The decoder benchmark came back:
#: ``isa-explorer bench decoder`` (:data:`TOOLS`).
SCRIPTS_DIR = PACKAGE.parent / "benchmarks"
SCRIPTS = ("click_latency", "synthetic", "export")


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_benchmark_script_answers_help_under_its_command(name, capsys, monkeypatch):
    assert _runs_main(SCRIPTS_DIR / f"{name}.py")
    monkeypatch.syspath_prepend(str(SCRIPTS_DIR))  # as ``python benchmarks/NAME.py`` does
    with pytest.raises(SystemExit) as done:
        importlib.import_module(name).main(["--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python benchmarks/{name}.py")
    moved = ("click", "synthetic", "export")
    assert not [m for m in moved if (PACKAGE / "bench" / f"{m}.py").exists()]


@pytest.mark.slow
def test_benchmark_scripts_answer_help_when_run_as_scripts():
    """``python benchmarks/NAME.py --help`` from the repository root: the script's folder is
    first on ``sys.path``, so no script may shadow a package its imports use."""

    def help_of(name: str) -> tuple[str, subprocess.CompletedProcess]:
        cmd = [sys.executable, f"benchmarks/{name}.py", "--help"]
        root = SCRIPTS_DIR.parent
        return name, subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(help_of, SCRIPTS))
    bad = {
        name: f"exit {p.returncode}: {(p.stdout + p.stderr).strip()[-300:]!r}"
        for name, p in done
        if p.returncode != 0 or not p.stdout.startswith(f"usage: python benchmarks/{name}.py")
    }
    assert not bad, bad


def test_help_and_the_package_import_need_no_torch():
    """``isa-explorer --help`` and ``import isa_explorer`` stay light (lazy top level, PEP 562);
    the first use of a model name imports it, and ``isa_explorer.models`` registers isanet."""
    light = (
        "import sys, contextlib, io\n"
        "import isa_explorer\n"
        "from isa_explorer.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help']); main(['bench', '--help']); main(['experiment', '--help'])\n"
        "heavy = sorted(m for m in ('torch', 'gradio', 'numpy', 'segmentation_models_pytorch')"
        " if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "import segmentation_models_pytorch as smp\n"
        "assert 'isanet' not in smp.MODEL_ARCHITECTURES_MAPPING\n"
        "from isa_explorer import ISANet\n"
        "assert smp.MODEL_ARCHITECTURES_MAPPING['isanet'] is ISANet is isa_explorer.ISANet\n"
        "assert 'load_model' in dir(isa_explorer)\n"
    )
    done = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with pytest.raises(AttributeError, match="has no attribute 'load_modle'"):
        _ = isa_explorer.load_modle
