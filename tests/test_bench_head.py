"""The head benchmark: per-case measurements, subprocess isolation, probe cache, CLI output."""

import json
import sys
from pathlib import Path

import pytest
import torch

from isa_explorer.attention import query_maps
from isa_explorer.models.fusion import is_fused

#: The decoder benchmark: a script of the repository, ``python benchmarks/decoder.py``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import decoder as bench_head

SMALL = dict(in_channels=24, classes=3, channels=32, isa_channels=16)


@pytest.mark.parametrize("path", ["fused", "explicit", "dense", "dense-explicit"])
def test_measure_decoder_reports_time_and_memory(path):
    r = bench_head.measure_decoder(path, (12, 20), runs=2, warmup=1, head=SMALL)
    assert r["status"] == "ok" and r["path"] == path and r["positions"] == 240
    assert len(r["times_ms"]) == 2 and all(t > 0 for t in r["times_ms"])
    assert r["median_ms"] == pytest.approx(sum(r["times_ms"]) / 2, abs=0.02)
    assert r["peak_mib"] >= 0


def test_paths_share_weights_and_agree():
    torch.manual_seed(0)
    fused = bench_head.build_decoder("fused", SMALL)
    explicit = bench_head.build_decoder("explicit", SMALL)
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(1, 24, 17, 9)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), explicit(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown path 'sparse'"):
        bench_head.build_decoder("sparse")


def test_probe_cache_gives_maps_of_the_feature_grid():
    cache = bench_head.capture_cache((12, 20))
    assert cache.feature_size == (12, 20) and cache.image_size == (96, 160)
    maps = query_maps(cache, 100, 50)
    assert maps.query_feature == (12, 6)
    for name in ("long", "short", "combined"):
        assert maps.maps[name].shape == (12, 20)
    # 12x20 pads to 16x24: the combined map sums to one over the padded grid, less here.
    assert 0 < maps["combined"].sum() <= 1 + 1e-6
    r = bench_head.measure_probe((12, 20), queries=4, warmup=1)
    assert r["status"] == "ok" and r["median_ms"] > 0 and r["queries"] == 4


def test_cli_runs_cases_in_subprocesses_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--sizes", "8x16", "--paths", "fused", "explicit", "--runs", "1", "--warmup", "0"]
    assert bench_head.main([*argv, "--no-probe", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["path"] for r in report["results"]] == ["fused", "explicit"]
    assert all(r["status"] == "ok" and r["size"] == [8, 16] for r in report["results"])
    assert set(report["ratios"]["8x16"]) == {
        "memory_fused_over_explicit",
        "time_fused_over_explicit",
    }
    system = report["system"]
    assert (
        system["command"].startswith("python benchmarks/decoder.py ")
        and "--sizes 8x16" in system["command"]
    )
    assert system["threads"] >= 1 and len(system["loadavg"]) == 3 and system["torch"]
    assert "fused/explicit memory" in capsys.readouterr().out


def test_bad_size_is_rejected_with_the_expected_format():
    with pytest.raises(SystemExit):
        bench_head.main(["--sizes", "128by256"])


def test_rounds_pool_the_timed_runs_and_keep_the_largest_peak():
    a = bench_head.measure_decoder("fused", (8, 8), runs=2, warmup=0, head=SMALL)
    b = {**a, "times_ms": [1.0, 2.0, 30.0], "peak_mib": a["peak_mib"] + 5}
    merged = bench_head.merge_rounds([a, {"status": "failed", "error": "x"}, b])
    assert merged["rounds"] == 2 and len(merged["times_ms"]) == 5
    assert merged["median_ms"] == sorted(merged["times_ms"])[2]
    assert merged["peak_mib"] == b["peak_mib"]
    assert bench_head.merge_rounds([{"status": "timeout"}])["status"] == "timeout"


@pytest.mark.parametrize("path", ["fused", "explicit-checkpoint", "dense"])
def test_training_mode_times_a_training_step(path):
    r = bench_head.measure_decoder(path, (12, 20), runs=2, warmup=1, head=SMALL, mode="train")
    assert r["status"] == "ok" and r["mode"] == "train" and len(r["times_ms"]) == 2
    model = bench_head.build_decoder(path, SMALL, mode="train")
    assert model.training and not is_fused(model)
    assert getattr(model, "checkpoint_relations", False) == path.endswith("-checkpoint")
    x = torch.randn(1, 24, 12, 20)
    bench_head.train_step(model, x)  # the gradients are computed, then cleared
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="training path"):
        bench_head.build_decoder("fused-checkpoint", SMALL, mode="infer")


def test_cli_training_mode_writes_its_own_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--mode", "train", "--sizes", "8x16", "--paths", "fused", "explicit"]
    assert bench_head.main([*argv, "--runs", "1", "--warmup", "0"]) == 0
    report = json.loads((tmp_path / "results" / "bench_head_train_cpu.json").read_text())
    assert report["mode"] == "train" and "probe" not in report
    assert [r["path"] for r in report["results"]] == ["fused", "explicit"]
    assert all(r["status"] == "ok" and r["mode"] == "train" for r in report["results"])
    with pytest.raises(SystemExit):  # checkpointing is a training path
        bench_head.main(["--paths", "fused-checkpoint", "--sizes", "8x16"])
