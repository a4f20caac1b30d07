"""The decoder benchmark (``isa-explorer bench decoder``): every registered head's paths,
per-case measurements and FLOPs, subprocess isolation, probe cache, CLI output and figure."""

import json

import pytest
import torch

import isa_explorer.bench.decoder as bench_head
from isa_explorer import heads
from isa_explorer.attention import query_maps
from isa_explorer.bench import cli as bench_cli
from isa_explorer.bench.decoder_plot import plot_decoder
from isa_explorer.models.fusion import is_fused

#: Tiny heads: every head's shape, EMA's bases and DA's PAM channels small.
SMALL = dict(
    in_channels=24,
    classes=3,
    channels=32,
    key_channels=16,
    options={"ema": {"ema_channels": 32, "num_bases": 8}, "da": {"pam_channels": 8}},
)
PATHS = bench_head.decoder_paths()
#: ``(head, fused path, explicit path)`` of the heads with both implementations.
PAIRS = [
    (p.head, f"{p.head}-fused", f"{p.head}-explicit")
    for name, p in PATHS.items()
    if p.impl == "fused" and not p.checkpoint and f"{p.head}-explicit" in PATHS
]


def test_paths_come_from_the_registry():
    assert list(PATHS) == [
        "isa-fused",
        "isa-explicit",
        "isa-fused-checkpoint",
        "isa-explicit-checkpoint",
        "dense-fused",
        "dense-explicit",
        "fcn",
        "nl-fused",
        "nl-explicit",
        "cc-explicit",
        "da-fused",
        "da-explicit",
        "gc-explicit",
        "ema-explicit",
    ]
    assert {p.head for p in PATHS.values()} == set(heads.names())
    for name, p in PATHS.items():  # one path per implementation the head declares
        assert p.impl is None or p.impl in heads.get(p.head).impls, name
    infer, train = bench_head.default_paths("infer"), bench_head.default_paths("train")
    assert "dense-explicit" not in infer + train
    assert not any(PATHS[p].checkpoint for p in infer)
    assert [p for p in train if PATHS[p].checkpoint] == ["isa-fused-checkpoint"]
    assert set(train) - set(infer) == {"isa-fused-checkpoint"}
    # The published settings: EMA's 256 channels, DA's 64 PAM channels; else 512 and 256.
    _, _, ema = bench_head.head_config("ema-explicit")
    assert ema.channels == 256 and ema.options["ema_channels"] == 512
    assert bench_head.head_config("da-fused")[2].options == {"pam_channels": 64}
    cin, classes, dense = bench_head.head_config("dense-fused")
    assert (cin, classes, dense.channels, dense.key_channels) == (2048, 19, 512, 256)
    assert bench_head.head_config("ema-explicit", SMALL)[2].options["num_bases"] == 8


@pytest.mark.parametrize("path", ["isa-fused", "isa-explicit", "dense-fused", "dense-explicit"])
def test_measure_decoder_reports_time_and_memory(path):
    r = bench_head.measure_decoder(path, (12, 20), runs=2, warmup=1, head=SMALL)
    assert r["status"] == "ok" and r["path"] == path and r["positions"] == 240
    assert r["head"] == PATHS[path].head and r["impl"] == PATHS[path].impl
    assert len(r["times_ms"]) == 2 and all(t > 0 for t in r["times_ms"])
    assert r["median_ms"] == pytest.approx(sum(r["times_ms"]) / 2, abs=0.02)
    assert r["peak_mib"] >= 0


@pytest.mark.parametrize("path", list(PATHS))
def test_every_path_runs_and_counts_its_flops(path):
    """Each registered head's paths, a training step and (unless checkpointed) a forward."""
    modes = ["train"] if PATHS[path].checkpoint else ["infer", "train"]
    for mode in modes:
        r = bench_head.measure_decoder(path, (12, 20), 1, 0, head=SMALL, mode=mode)
        assert r["status"] == "ok" and r["mode"] == mode and r["median_ms"] > 0, mode
        flops = bench_head.decoder_flops(path, (12, 20), SMALL, mode)
        assert flops["flops"] > 0
        declared = heads.get(PATHS[path].head).cost(8, 8, heads.HeadConfig(8, 8)) is not None
        assert ("attention_flops_analytic" in flops) == declared
        if declared:
            assert 0 < flops["attention_flops_analytic"] <= flops["flops"], mode
    if len(modes) == 2:  # a training step costs more than a forward
        infer, train = (bench_head.decoder_flops(path, (12, 20), SMALL, m) for m in modes)
        assert train["flops"] > infer["flops"]


@pytest.mark.parametrize("name,fused_path,explicit_path", PAIRS)
def test_fused_and_explicit_share_weights_and_agree(name, fused_path, explicit_path):
    torch.manual_seed(0)
    fused = bench_head.build_decoder(fused_path, SMALL, mode="train")
    explicit = bench_head.build_decoder(explicit_path, SMALL, mode="train")
    explicit.load_state_dict(fused.state_dict())  # the same weights, names and shapes
    x = torch.randn(1, 24, 17, 9)  # (1, Cin, h, w): ISA pads 17x9 to 24x16
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), explicit.eval()(x), atol=1e-5, rtol=1e-5)


def test_pairs_cover_the_heads_with_two_implementations():
    assert [n for n, _, _ in PAIRS] == ["isa", "dense", "nl", "da"]
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


def test_cli_runs_cases_in_subprocesses_and_writes_json_and_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--sizes", "8x16", "--paths", "isa-fused", "isa-explicit", "--runs", "1"]
    assert bench_head.main([*argv, "--warmup", "0", "--no-probe", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["path"] for r in report["results"]] == ["isa-fused", "isa-explicit"]
    for r in report["results"]:
        assert r["status"] == "ok" and r["size"] == [8, 16] and r["head"] == "isa"
        assert 0 < r["attention_flops_analytic"] <= r["flops"]
    assert set(report["ratios"]["isa"]["8x16"]) == {
        "memory_fused_over_explicit",
        "time_fused_over_explicit",
    }
    assert report["head_configs"]["isa"]["key_channels"] == 256
    system = report["system"]
    assert system["command"].startswith("isa-explorer bench decoder ")
    assert "--sizes 8x16" in system["command"]
    assert system["threads"] >= 1 and len(system["loadavg"]) == 3 and system["torch"]
    assert "isa 8x16: fused/explicit memory" in capsys.readouterr().out
    png, svg = out.with_suffix(".png"), out.with_suffix(".svg")
    assert png.read_bytes().startswith(b"\x89PNG") and b"<svg" in svg.read_bytes()[:2000]


def test_worker_runs_as_a_module(monkeypatch):
    seen = {}

    def fake_run_fresh(command, spec, timeout=None):
        seen.update(command=command, spec=spec)
        return bench_head.worker(spec)  # what the fresh process runs

    monkeypatch.setattr(bench_head, "run_fresh", fake_run_fresh)
    spec = dict(kind="decoder", path="fcn", size=[8, 8], runs=1, warmup=0, device="cpu")
    r = bench_head.run_case({**spec, "head": SMALL})
    assert seen["command"][1:] == ["-m", "isa_explorer.bench.decoder", "--worker"]
    assert r["status"] == "ok" and r["path"] == "fcn" and r["impl"] is None


def test_cases_predicted_past_the_memory_budget_are_skipped():
    report = bench_head.run([(8, 16)], ["fcn", "dense-explicit"], probe_size=None, head=SMALL,
                            max_memory=1)  # fmt: skip
    assert [r["status"] for r in report["results"]] == ["skipped", "skipped"]
    assert "memory budget" in report["results"][1]["reason"]
    assert all(r["flops"] > 0 for r in report["results"]) and report["ratios"] == {}
    plot_decoder(report)  # nothing measured: empty axes, no error


def test_bench_cli_lists_and_helps_the_decoder_benchmark(capsys):
    assert bench_cli.main(["--help"]) == 0
    assert "decoder" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        bench_cli.main(["decoder", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "usage: isa-explorer bench decoder" in text and "ema-explicit" in text


def test_bad_size_is_rejected_with_the_expected_format():
    with pytest.raises(SystemExit):
        bench_head.main(["--sizes", "128by256"])


def test_rounds_pool_the_timed_runs_and_keep_the_largest_peak():
    a = bench_head.measure_decoder("isa-fused", (8, 8), runs=2, warmup=0, head=SMALL)
    b = {**a, "times_ms": [1.0, 2.0, 30.0], "peak_mib": a["peak_mib"] + 5}
    merged = bench_head.merge_rounds([a, {"status": "failed", "error": "x"}, b])
    assert merged["rounds"] == 2 and len(merged["times_ms"]) == 5
    assert merged["median_ms"] == sorted(merged["times_ms"])[2]
    assert merged["peak_mib"] == b["peak_mib"]
    assert bench_head.merge_rounds([{"status": "timeout"}])["status"] == "timeout"


@pytest.mark.parametrize("path", ["isa-fused", "isa-explicit-checkpoint", "dense-fused"])
def test_training_mode_times_a_training_step(path):
    r = bench_head.measure_decoder(path, (12, 20), runs=2, warmup=1, head=SMALL, mode="train")
    assert r["status"] == "ok" and r["mode"] == "train" and len(r["times_ms"]) == 2
    assert r["checkpoint"] == path.endswith("-checkpoint")
    model = bench_head.build_decoder(path, SMALL, mode="train")
    assert model.training and not is_fused(model)
    assert getattr(model, "checkpoint_relations", False) == path.endswith("-checkpoint")
    x = torch.randn(1, 24, 12, 20)
    bench_head.train_step(model, x)  # the gradients are computed, then cleared
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="training path"):
        bench_head.build_decoder("isa-fused-checkpoint", SMALL, mode="infer")


def test_cli_training_mode_writes_its_own_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--mode", "train", "--sizes", "8x16", "--paths", "isa-fused-checkpoint"]
    assert bench_head.main([*argv, "--runs", "1", "--warmup", "0", "--no-plot"]) == 0
    report = json.loads((tmp_path / "results" / "bench_decoder_train_cpu.json").read_text())
    assert report["mode"] == "train" and "probe" not in report
    assert [r["path"] for r in report["results"]] == ["isa-fused-checkpoint"]
    assert all(r["status"] == "ok" and r["mode"] == "train" for r in report["results"])
    assert not (tmp_path / "results" / "bench_decoder_train_cpu.png").exists()
    with pytest.raises(SystemExit):  # checkpointing is a training path
        bench_head.main(["--paths", "isa-fused-checkpoint", "--sizes", "8x16"])
