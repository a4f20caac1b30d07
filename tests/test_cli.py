"""The ``isa-explorer`` command: every tool under one name, each with its own options."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
