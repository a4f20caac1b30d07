"""The Efficiency tab: memory and time of ISA vs dense attention against the resolution.

Shows the committed CPU measurement of :mod:`isa_explorer.benchmark` and runs a small live
measurement on request, bounded in sizes, passes and seconds, one run at a time per server.
The benchmark module is imported only when the tab is used.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

#: Inputs of the live run (feature maps at 1/8): small enough for seconds on a CPU.
LIVE_RESOLUTIONS = ((128, 256), (256, 512), (512, 1024))
#: Longest predicted time of one pass in the live run; longer cases are skipped.
LIVE_MAX_SECONDS = 1.0
#: Once a live run has taken this long, its larger resolutions are not started.
LIVE_BUDGET_SECONDS = 20.0
#: Channels of the live run (the published head's, as the committed results).
LIVE_CHANNELS, LIVE_ISA_CHANNELS = 512, 256

_live_lock = threading.Lock()


class EfficiencyUnavailable(RuntimeError):
    """The benchmark module or its results are not available; the message says what to do."""


def _benchmark():
    try:
        from isa_explorer.bench import attention as benchmark
    except ImportError as err:
        raise EfficiencyUnavailable(
            f"the benchmark module could not be imported ({err}); reinstall the package"
        ) from None
    return benchmark


def committed_report(path: str | Path | None = None) -> tuple[Figure, str]:
    """Plot of the committed benchmark results and a table of them.

    Args:
        path: A report JSON; default the committed one (``benchmark.COMMITTED_RESULTS``).

    Raises:
        EfficiencyUnavailable: No results at ``path`` (the message gives the command).
    """
    bench = _benchmark()
    path = Path(path) if path is not None else Path(bench.COMMITTED_RESULTS)
    try:
        report = bench.load_results(path)
    except (FileNotFoundError, ValueError) as err:
        raise EfficiencyUnavailable(str(err)) from None
    fig = bench.plot_results(report)
    system = report.get("system", {})
    keys = ("device_name", "threads", "torch", "loadavg", "time_utc", "command")
    where = ", ".join(f"{k} `{system[k]}`" for k in keys if k in system)
    header = f"**Committed results** ({path.name}{'; ' + where if where else ''})\n\n"
    return fig, header + results_table(report["results"])


def live_run(
    resolutions: tuple[tuple[int, int], ...] = LIVE_RESOLUTIONS,
    max_seconds: float = LIVE_MAX_SECONDS,
    budget_seconds: float = LIVE_BUDGET_SECONDS,
    subprocess: bool = False,
    channels: int = LIVE_CHANNELS,
    isa_channels: int = LIVE_ISA_CHANNELS,
) -> tuple[Figure, str]:
    """Measure the four attention modules (forward pass) at small sizes, now.

    Only one live run executes at a time; a concurrent request is refused. Resolutions run
    from the smallest; once ``budget_seconds`` have passed, the larger ones are not started.
    In-process (the default), peak memory is the growth of the server's resident memory during
    the case: approximate (other requests and the allocator's reuse blur it), unlike the
    committed results, measured in a fresh process per case.

    Args:
        resolutions: Input sizes ``(H, W)``.
        max_seconds: Skip cases predicted to take longer per pass.
        budget_seconds: Time after which no further resolution is started.
        subprocess: Each case in a fresh process (exact peak memory, seconds more per case).
        channels: Head channels; isa_channels: query/key channels.

    Raises:
        EfficiencyUnavailable: Another live run is in progress, or no benchmark module.
    """
    bench = _benchmark()
    if not _live_lock.acquire(blocking=False):
        raise EfficiencyUnavailable("a live benchmark is already running; try again shortly")
    try:
        start, results, not_run = time.perf_counter(), [], []
        for res in sorted(resolutions, key=lambda r: r[0] * r[1]):
            if time.perf_counter() - start > budget_seconds:
                not_run.append(f"{res[0]}x{res[1]}")
                continue
            results += bench.run_benchmark(
                resolutions=[tuple(res)],
                modules=list(bench.MODULES),
                passes=["forward"],
                group=8,
                device="cpu",
                max_seconds=max_seconds,
                subprocess=subprocess,
                runs=2,
                warmup=1,
                channels=channels,
                isa_channels=isa_channels,
            )
        seconds = time.perf_counter() - start
    finally:
        _live_lock.release()
    fig = bench.plot_results(results, passes=("forward",))
    memory = "fresh process per case" if subprocess else "in-process RSS growth, approximate"
    header = (
        f"**Live run** on this server's CPU (which may be busy): forward pass, median of 2 runs "
        f"after 1 warm-up, cases predicted over {max_seconds:g} s per pass skipped, memory "
        f"{memory}; {seconds:.0f} s in all"
        + (
            f"; not started (time budget {budget_seconds:g} s): {', '.join(not_run)}"
            if not_run
            else ""
        )
        + ".\n\n"
    )
    return fig, header + results_table(results)


def results_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: module, pass, resolution, status, time and peak memory per case."""
    lines = [
        "| module | pass | input | feature | status | median ms | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        res, feat = r.get("resolution", ["?", "?"]), r.get("feature", ["?", "?"])
        ok = r.get("status") == "ok"
        status = r.get("status", "?") + ("" if ok else f": {r.get('reason', '')}")
        ms = f"{r['median_ms']:.1f}" if ok else "-"
        mib = f"{r['peak_mib']:.1f}" if ok else "-"
        lines.append(
            f"| {r.get('module')} | {r.get('pass')} | {res[0]}x{res[1]} | {feat[0]}x{feat[1]} "
            f"| {status} | {ms} | {mib} |"
        )
    return "\n".join(lines)
