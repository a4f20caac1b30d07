"""The attention benchmark: analytic costs vs counted FLOPs, skipping, CLI outputs, loading."""

import json

import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.flop_counter import FlopCounterMode

from isa_explorer.bench.attention_cli import main
from isa_explorer.bench.runner import run_benchmark
from isa_explorer.costs import cases
from isa_explorer.costs.analytic import analytic_costs, attention_module, modules
from isa_explorer.costs.flops import backward, count_flops, register_sdpa_formulas
from isa_explorer.costs.plot import plot_results
from isa_explorer.heads.isa import auto_group

SMALL = dict(channels=32, isa_channels=16)


@pytest.mark.parametrize("module", list(modules()))
@pytest.mark.parametrize("size,group", [((12, 20), 4), ((12, 20), 8), ((9, 31), 8)])
def test_analytic_flops_match_the_flop_counter(module, size, group):
    """Forward and forward+backward matmul FLOPs as run on the CPU, padding included (EMA's
    module has no backward: its forward+backward is its training forward)."""
    register_sdpa_formulas()  # as count_flops does: torch counts the CPU flash kernel as 0
    analytic = analytic_costs(*size, group, **SMALL)[module]
    torch.manual_seed(0)
    m = attention_module(module, group=group, **SMALL)
    x = torch.randn(1, 32, *size)
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        m.eval()(x)
    x.requires_grad_()
    assert fwd.get_total_flops() == analytic["flops"]["forward"]
    with FlopCounterMode(display=False) as both:
        backward(m.train()(x))
    assert both.get_total_flops() == pytest.approx(analytic["flops"]["forward+backward"], 1e-6)
    # The meta-device count used for cases too large to run is the same.
    assert count_flops(module, size, "forward", group=group, **SMALL) == (fwd.get_total_flops())


def test_every_costed_head_is_measured_once_per_implementation():
    """NL and DA honour ``attn_impl`` (two modules each); CC, GC and EMA always build their
    affinities (one module each, not two names for the same computation)."""
    assert list(modules()) == [
        "isa-explicit",
        "isa-fused",
        "dense-explicit",
        "dense-fused",
        "nl-explicit",
        "nl-fused",
        "cc-explicit",
        "da-explicit",
        "da-fused",
        "gc-explicit",
        "ema-explicit",
    ]


def test_analytic_affinity_memory_dense_vs_isa():
    costs = analytic_costs(128, 256, 8)
    n = 128 * 256
    assert costs["dense-explicit"]["affinity_elements"] == n * n
    assert costs["isa-explicit"]["affinity_elements"] == n * (n // 64 + 64)
    assert costs["isa-fused"]["affinity_bytes"] == 4 * n * (n // 64 + 64)
    # The fused paths materialise no affinity: the peak model holds activations only.
    fused, explicit = costs["dense-fused"], costs["dense-explicit"]
    assert fused["predicted_peak_bytes"]["forward"] < explicit["affinity_bytes"] / 5
    assert explicit["predicted_peak_bytes"]["forward"] > 2 * explicit["affinity_bytes"]
    # auto: the sqrt(N)-optimal square group (64x64 -> 8x8, 64 = sqrt(4096)).
    assert auto_group(64, 64) == 8
    assert auto_group(128, 256) ** 4 == pytest.approx(n, rel=0.2)


def test_cases_that_will_not_fit_are_predicted_and_skipped():
    """The N^2 heads (dense, NL, DA's PAM) are skipped where their affinity will not fit."""
    n2 = ["dense-explicit", "nl-explicit", "da-explicit"]
    results = run_benchmark(
        [(4096, 8192), (64, 128)],
        n2,
        ["forward"],
        subprocess=False,
        runs=1,
        warmup=0,
        max_memory=2**30,
        max_seconds=600,
        **SMALL,
    )
    big, small = results[: len(n2)], results[len(n2) :]
    for r in big:
        assert r["status"] == "skipped" and "memory budget" in r["reason"], r
        assert r["feature"] == [512, 1024]
        assert r["analytic"]["affinity_mib"] >= 512**2 * 1024**2 * 4 / 2**20
        assert r["flops"] == r["analytic"]["flops"]  # counted without running
    for r in small:
        assert r["status"] == "ok" and r["median_ms"] > 0 and r["peak_mib"] >= 0
    slow = run_benchmark(
        [(2048, 4096)], ["isa-fused"], ["forward+backward"], subprocess=False, max_seconds=1
    )
    assert slow[0]["status"] == "skipped" and "max_seconds" in slow[0]["reason"]


def test_cli_writes_json_and_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--resolutions", "64x96", "96x160", "--modules", "isa-explicit", "dense-explicit"]
    argv += ["--passes", "forward", "--runs", "1", "--warmup", "0", "--group", "auto"]
    argv += ["--channels", "32", "--isa-channels", "16", "--no-subprocess", "--out", str(out)]
    assert main(argv) == 0
    report = cases.load_results(out)
    assert report["config"]["group"] == "auto" and report["system"]["command"].endswith(str(out))
    assert [r["status"] for r in report["results"]] == ["ok"] * 4
    assert report["results"][0]["group"] == auto_group(8, 12)
    assert report["results"][1]["group"] is None  # dense: no blocks
    assert set(report["summary"]) == {"8x12", "12x20"}
    for row in report["summary"].values():  # every module against dense's explicit path
        assert set(row["modules"]) == {"isa-explicit", "dense-explicit"}
        assert row["modules"]["dense-explicit"]["analytic_peak_over_dense"] == 1.0
        assert row["modules"]["isa-explicit"]["analytic_affinity_over_dense"] < 1.0
    for suffix, magic in ((".png", b"\x89PNG"), (".svg", b"<?xml")):
        assert out.with_suffix(suffix).read_bytes().startswith(magic)
    assert "peak memory / dense-explicit (forward): isa-explicit" in capsys.readouterr().out


def test_one_case_in_a_fresh_subprocess():
    (r,) = run_benchmark([(64, 64)], ["isa-fused"], ["forward+backward"], runs=1, warmup=0, **SMALL)
    assert r["status"] == "ok" and r["runs"] == 1 and r["peak_mib"] > 0
    assert r["memory_method"].startswith(("VmHWM", "ru_maxrss"))


def test_committed_results_load_and_plot():
    report = cases.load_results()
    # Recorded as run, with its --out (tests/test_references.py checks that it still resolves).
    command = report["system"]["command"]
    assert command.startswith("isa-explorer bench attention ")
    assert "--out isa_explorer/assets/results/benchmark_cpu.json" in command
    rows = report["results"]
    assert {r["module"] for r in rows} == set(modules())
    assert any(r["status"] == "skipped" for r in rows) and any(r["status"] == "ok" for r in rows)
    fig = Figure()
    axes = fig.subplots(1, 2)
    assert plot_results(report, axes) is fig
    assert len(axes[0].lines) > 4 and axes[0].get_xscale() == "log"


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown module 'sparse'"):
        attention_module("sparse")
    with pytest.raises(FileNotFoundError, match="isa-explorer bench attention"):
        cases.load_results(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a benchmark report"):
        cases.load_results(tmp_path / "x.json")
    with pytest.raises(SystemExit):
        main(["--group", "big"])


def test_sdpa_kernels_are_counted_like_the_matmuls_they_replace():
    """The CPU flash kernel SDPA dispatches to counts as Q K^T and A V, forward and backward."""
    import torch.nn.functional as F

    register_sdpa_formulas()
    assert register_sdpa_formulas() == []  # registered once; a second call is a no-op
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as fused:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    with FlopCounterMode(display=False) as explicit:
        a = (q @ k.transpose(-1, -2) / 4).softmax(-1)
        (a @ v).sum().backward()
    matmul_forward = 2 * (2 * 2 * 3 * 40 * 40 * 16)  # Q K^T and A V
    assert fused.get_total_flops() == 3.5 * matmul_forward  # torch's SDPA convention: bwd 2.5x
    assert explicit.get_total_flops() == 3 * matmul_forward  # matmul backward: 2x
