"""train/fit.py's command line: ``--list`` of every recipe by model, ``--head`` for your own
data, and a run whose ImageNet weights cannot be had stopping before it reads any data."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from folder_helpers import (
    CLASSES,
    private_home,  # noqa: F401  (autouse: data-check caches in the test's folder)
    tiny_fit_args,
    write_classes,
    write_pair,
)
from training_helpers import one_thread  # noqa: F401 (an autouse fixture)

from isa_explorer.configs import CONFIGS, HEAD_RECIPES, PUBLISHED
from isa_explorer.training.cli import build_config, main, parse_args


def test_list_shows_every_recipe_grouped_by_model(capsys) -> None:
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("  ")}
    assert set(rows) == {*CONFIGS, "config"}  # every config once, and the column titles
    titles = [line for line in lines if not line.startswith("  ")]
    assert titles == [
        *(f"{HEAD_RECIPES[h][0]} (head {h}): {len(n)} published recipes" for h, n in PUBLISHED.items()),
        "synthetic data, and your own (--config folder --head NAME: any head)",
    ]  # fmt: skip
    assert titles[-2] == "emanet (head ema): 4 published recipes"
    # Under each title its recipes: dataset, crop, scale, iterations, batch, test mode.
    at = lines.index("danet (head da): 16 published recipes")
    assert lines[at + 3].split() == [
        "danet_r50-d8_4xb2-40k_cityscapes-769x769", "cityscapes", "769x769", "1025x2049", "40000",
        "2", "slide",
    ]  # fmt: skip
    assert rows["nonlocal_r101-d8_4xb4-160k_ade20k-512x512"] == [
        "ade20k", "512x512", "512x2048", "160000", "4", "whole"
    ]  # fmt: skip
    assert rows["folder"][:3] == ["folder", "512x512", "-"]
    assert max(map(len, lines)) <= 120


def test_head_picks_the_head_of_the_folder_recipe_only(capsys) -> None:
    cfg, run_dir = build_config(parse_args(["--config", "folder", "--head", "ema"]))
    assert (cfg.name, cfg.dataset, run_dir) == ("folder-ema", "folder", Path("runs/folder-ema"))
    assert cfg.model["head"] == "ema" and cfg.model["decoder_channels"] == 256
    assert cfg.model["head_options"]["num_bases"] == 64
    cfg, _ = build_config(parse_args(["--config", "folder", "--head", "da", "--set", "iters=9"]))
    assert (cfg.model["head"], cfg.iters) == ("da", 9)  # overrides still apply
    assert build_config(parse_args(["--config", "folder"]))[0].model["head"] == "isa"

    assert main(["--config", "danet_r50-d8_4xb2-40k_cityscapes-512x1024", "--head", "ema"]) == 2
    err = capsys.readouterr().err
    assert "--head is for --config folder" in err and "--set model.head=ema" in err
    assert "emanet_r50-d8_4xb2-80k_cityscapes-512x1024" in err  # the head's own recipes
    assert main(["--config", "folder", "--head", "xyz"]) == 2
    assert "unknown head 'xyz'" in capsys.readouterr().err


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """A Hugging Face hub that cannot be reached (a closed local port) and an empty cache."""
    import huggingface_hub.constants

    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize("offline", [False, True], ids=["unreachable", "HF_HUB_OFFLINE"])
def test_offline_the_folder_recipe_stops_at_once_naming_the_weight_options(
    no_hub, monkeypatch, tmp_path, capsys, offline
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    run = tmp_path / "run"
    argv = ["--config", "folder", "--data-root", str(tmp_path / "absent"), "--run-dir", str(run)]
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 15  # not the hub client's retries (20 s and more)
    err = capsys.readouterr().err
    assert "could not load the 'imagenet' weights of encoder 'tu-resnet50c'" in err
    assert "--encoder-weights none" in err and "--encoder-weights FILE" in err
    assert "absent" not in err and not run.exists()  # before the data and the run dir


def test_checking_the_data_needs_no_weights(no_hub, tmp_path, capsys) -> None:
    root = tmp_path / "data"
    write_classes(root)
    for split in ("train", "val"):
        write_pair(root, f"{split}/a", np.arange(64).reshape(8, 8) % 3)
    assert main(["--config", "folder", "--data-root", str(root), "--check-data"]) == 0
    assert "no problems" in capsys.readouterr().out.lower()


@pytest.mark.slow
def test_a_tiny_folder_run_trains_another_head(tmp_path, capsys) -> None:
    root = tmp_path / "data"
    write_classes(root)
    for split, n in (("train", 4), ("val", 1)):
        for i in range(n):
            write_pair(root, f"{split}/p{i}", np.arange(1024).reshape(32, 32) % 3, seed=i)
    run = tmp_path / "run"
    assert main([*tiny_fit_args(root, run, iters=2), "--head", "da"]) == 0, capsys.readouterr()
    assert "finished folder-da" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())
    assert saved["name"] == "folder-da" and saved["model"]["head"] == "da"
    log = (run / "log.txt").read_text()
    assert " pam " in log and " cam " in log  # DANet's three loss terms
    metrics = json.loads((run / "metrics.json").read_text())["final_metrics"]
    assert metrics["class_names"] == CLASSES
