"""The Efficiency tab: memory and time of the attention heads against the resolution.

Shows the committed CPU measurement (:mod:`isa_explorer.costs.cases`), every attention module
of every head, and runs a small live measurement in this process on request, bounded in sizes,
passes, modules and seconds, one run at a time per server.

The live run measures one module per head (:func:`live_modules`, its explicit path): every
head is shown, and its estimate stays under half the time budget (every module, the fused
paths too, would about double it). The fused paths add little time contrast, and their small
peaks are what the in-process measurement resolves worst; they are in the committed results,
measured in fresh processes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from isa_explorer.costs import cases, plot
from isa_explorer.costs.analytic import analytic_costs, modules

#: Inputs of the live run (feature maps at 1/8), all run unless the time budget runs out.
LIVE_RESOLUTIONS = ((128, 256), (256, 512), (512, 1024))
#: Speed assumed for the live run's time estimate (a 2-core CPU manages about this).
LIVE_ESTIMATE_GFLOPS = 20.0
#: Cases estimated under this many seconds per pass give the median of 2 runs after 1 warm-up;
#: longer ones run once, without warm-up (the smaller sizes before them warmed the kernels).
LIVE_REPEAT_SECONDS = 0.25
#: Cases the benchmark predicts (at its default rate) to take longer per pass are skipped: a
#: guard for larger ``resolutions`` than the defaults, which all stay well below it.
LIVE_MAX_SECONDS = 30.0
#: Once a live run has taken this long (a busy server), its larger resolutions are not started.
LIVE_BUDGET_SECONDS = 60.0
#: Channels of the live run (the published head's, as the committed results).
LIVE_CHANNELS, LIVE_ISA_CHANNELS = 512, 256
#: In-process, peak RSS growth under 1 MiB cannot be told from the allocator reusing memory
#: freed earlier by the server: such peaks are reported as not measured and not drawn.
LIVE_MIN_PEAK_MIB = 1.0

_live_lock = threading.Lock()


class EfficiencyUnavailable(RuntimeError):
    """No results, or a live run already running; the message says what to do."""


def committed_report(path: str | Path | None = None) -> tuple[Figure, str]:
    """Plot of the committed benchmark results and a table of them.

    Args:
        path: A report JSON; default the committed one (``cases.COMMITTED_RESULTS``).

    Raises:
        EfficiencyUnavailable: No results at ``path`` (the message gives the command).
    """
    path = Path(path) if path is not None else cases.COMMITTED_RESULTS
    try:
        report = cases.load_results(path)
    except (FileNotFoundError, ValueError) as err:
        raise EfficiencyUnavailable(str(err)) from None
    fig = plot.plot_results(report)
    system = report.get("system", {})
    keys = ("device_name", "threads", "torch", "loadavg", "time_utc", "command")
    where = ", ".join(f"{k} `{system[k]}`" for k in keys if k in system)
    header = f"**Committed results** ({path.name}{'; ' + where if where else ''})\n\n"
    return fig, header + results_table(report["results"])


def _size(res: tuple[int, int]) -> str:
    return f"{res[0]}x{res[1]}"


def live_modules() -> list[str]:
    """One attention module per head with a cost (:func:`~isa_explorer.costs.analytic.modules`
    lists a head's explicit path first): the modules of the live run."""
    chosen: dict[str, str] = {}
    for module, (head, _) in modules().items():
        chosen.setdefault(head, module)
    return list(chosen.values())


def live_plan(
    resolutions: tuple[tuple[int, int], ...] = LIVE_RESOLUTIONS,
    channels: int = LIVE_CHANNELS,
    isa_channels: int = LIVE_ISA_CHANNELS,
) -> list[dict[str, Any]]:
    """The cases of a live run, smallest input first, with their repeats and time estimate.

    Returns:
        One dict per case of a module of :func:`live_modules`: ``resolution``, ``module``,
        ``estimate_s`` (one pass, analytic FLOPs at :data:`LIVE_ESTIMATE_GFLOPS`), ``runs`` and
        ``warmup``.
    """
    plan, live = [], live_modules()
    for res in sorted(resolutions, key=lambda r: r[0] * r[1]):
        costs = analytic_costs(res[0] // 8, res[1] // 8, 8, channels, isa_channels)
        for module in live:
            cost = costs[module]
            seconds = cost["flops"]["forward"] / (LIVE_ESTIMATE_GFLOPS * 1e9)
            runs, warmup = (2, 1) if seconds < LIVE_REPEAT_SECONDS else (1, 0)
            case = dict(resolution=tuple(res), module=module, estimate_s=seconds)
            plan.append(case | dict(runs=runs, warmup=warmup))
    return plan


def live_button_text(resolutions: tuple[tuple[int, int], ...] = LIVE_RESOLUTIONS) -> str:
    """What the live run's button promises: its inputs and its estimated duration."""
    plan = live_plan(resolutions)
    seconds = sum(c["estimate_s"] * (c["runs"] + c["warmup"]) for c in plan)
    sizes = sorted({c["resolution"] for c in plan}, key=lambda r: r[0] * r[1])
    names = [_size(r) for r in sizes]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (
        f"Run a live benchmark now (forward pass of every head's attention at {listed}, "
        f"about {max(5, 5 * round(seconds / 5)):.0f} s)"
    )


def live_description() -> str:
    """Markdown above the live run's button: how it measures and when it stops early."""
    return (
        "The live run times one module per head, its explicit path (the committed results "
        "above hold every module, fused paths and training passes too), forward pass, on this "
        f"server's CPU: the median of 2 "
        f"runs after 1 warm-up for cases estimated under {LIVE_REPEAT_SECONDS:g} s, one run "
        f"otherwise. Its time estimate assumes {LIVE_ESTIMATE_GFLOPS:g} GFLOP/s; no larger input "
        f"starts after {LIVE_BUDGET_SECONDS:g} s (a busy server). Peak memory is the growth of "
        f"the server's resident memory (approximate): under {LIVE_MIN_PEAK_MIB:g} MiB it is not "
        "measured, shown as such and not drawn."
    )


def live_run(
    resolutions: tuple[tuple[int, int], ...] = LIVE_RESOLUTIONS,
    max_seconds: float = LIVE_MAX_SECONDS,
    budget_seconds: float = LIVE_BUDGET_SECONDS,
    channels: int = LIVE_CHANNELS,
    isa_channels: int = LIVE_ISA_CHANNELS,
) -> tuple[Figure, str]:
    """Measure the modules of :func:`live_modules` (forward pass) at small sizes, now, in this
    process.

    Runs the cases of :func:`live_plan`. Only one live run executes at a time; a concurrent
    request is refused. Resolutions run from the smallest; once ``budget_seconds`` have passed,
    the larger ones are not started. Peak memory is the growth of the server's resident memory
    during the case: approximate (other requests and the allocator's reuse blur it; peaks under
    :data:`LIVE_MIN_PEAK_MIB` are reported as not measured), unlike the committed results,
    measured in a fresh process per case.

    Args:
        resolutions: Input sizes ``(H, W)``.
        max_seconds: Skip cases the benchmark predicts to take longer per pass.
        budget_seconds: Time after which no further resolution is started.
        channels: Head channels; isa_channels: query/key channels.

    Raises:
        EfficiencyUnavailable: Another live run is in progress.
    """
    if not _live_lock.acquire(blocking=False):
        raise EfficiencyUnavailable("a live benchmark is already running; try again shortly")
    shape = dict(channels=channels, isa_channels=isa_channels)
    try:
        start, results, not_run = time.perf_counter(), [], []
        plan = live_plan(resolutions, **shape)
        for res in dict.fromkeys(c["resolution"] for c in plan):  # smallest first
            if results and time.perf_counter() - start > budget_seconds:
                not_run.append(_size(res))
                continue
            for case in (c for c in plan if c["resolution"] == res):
                results += cases.run_cases(
                    resolutions=[res],
                    modules=[case["module"]],
                    passes=["forward"],
                    group=8,
                    device="cpu",
                    max_seconds=max_seconds,
                    runs=case["runs"],
                    warmup=case["warmup"],
                    **shape,
                )
        seconds = time.perf_counter() - start
    finally:
        _live_lock.release()
    fig = plot.plot_results(results, passes=("forward",), min_peak_mib=LIVE_MIN_PEAK_MIB)
    stopped = f"; not started (time budget {budget_seconds:g} s): {', '.join(not_run)}"
    header = (
        f"**Live run** on this server's CPU (which may be busy): forward pass, the median of 2 "
        f"runs after 1 warm-up (under {LIVE_REPEAT_SECONDS:g} s estimated) or 1 run, memory "
        f"in-process RSS growth, approximate; {seconds:.0f} s in all"
        f"{stopped if not_run else ''}.\n\n"
    )
    return fig, header + results_table(results, LIVE_MIN_PEAK_MIB)


def results_table(results: list[dict[str, Any]], min_peak_mib: float | None = None) -> str:
    """Markdown table: module, pass, input, status, repeats, time and peak memory per case.

    The reasons of cases that did not run follow the table, which stays narrow.

    Args:
        results: Result dicts of a benchmark run.
        min_peak_mib: Resolution of the peak memory (default the record's, 0.1 MiB): a smaller
            peak reads ``< resolution (not measured)``, never ``0.0``.
    """
    min_peak_mib = plot.MIN_PEAK_MIB if min_peak_mib is None else min_peak_mib
    lines = [
        "*input*: image size (feature map at 1/8); *runs*: timed + warm-up; *ms*: median per "
        "pass; *MiB*: peak memory growth.",
        "",
        "| module | pass | input | status | runs | ms | MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    reasons = []
    for r in results:
        res = r.get("resolution", ["?", "?"])
        passes = {"forward": "fwd", "forward+backward": "fwd+bwd"}.get(r.get("pass"), r.get("pass"))
        case = f"{r.get('module')} | {passes} | {res[0]}x{res[1]}"
        if r.get("status") != "ok":
            lines.append(f"| {case} | {r.get('status', '?')} | - | - | - |")
            reasons.append(f"- {case.replace(' | ', ' ')}: {r.get('reason', 'no reason given')}")
            continue
        peak = plot.measured_peak(r, min_peak_mib)
        mib = f"{peak:.1f}" if peak is not None else f"< {min_peak_mib:g} (not measured)"
        runs = f"{r.get('runs', '?')} + {r.get('warmup', 0)}"
        lines.append(f"| {case} | ok | {runs} | {r['median_ms']:.1f} | {mib} |")
    if reasons:
        lines += ["", "Not run:", "", *reasons]
    return "\n".join(lines)
