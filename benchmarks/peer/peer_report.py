"""The peer benchmark's report: medians over rounds, ratios to mmseg, the issue's targets, and
the JSON and markdown written after every case (:func:`write_out`). Imported by
``peer_bench.py`` when it runs; the cases themselves are measured there."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import peer_bench as bench
from peer_settings import HEADS, KINDS, default_kinds


def summarise(rows: list[dict], modes: list[str], sizes: list[str], heads=("isa",)) -> list[dict]:
    """Medians over the rounds and the ratios to mmseg, per head, mode, size and kind."""
    summary = []
    for head in heads:
        for mode in modes:
            for size in sizes:
                h, w = map(int, size.split("x"))
                med = {}
                for k in KINDS:
                    key = (head, k, mode, h, w)
                    rs = [
                        r
                        for r in rows
                        if (r.get("head", "isa"), r["kind"], r["mode"], r["h"], r["w"]) == key
                        and "median_s" in r
                    ]
                    if rs:
                        t = statistics.median(r["median_s"] for r in rs)
                        m = statistics.median(r["peak_growth_mib"] for r in rs)
                        fast = min(r["min_s"] for r in rs)  # least disturbed by other load
                        med[k] = (t, m, len(rs), fast)
                base = med.get("mmseg")
                for k, (t, m, n, fast) in med.items():
                    rt = t / base[0] if base else float("nan")
                    rm = m / base[1] if base else float("nan")
                    rf = fast / base[3] if base else float("nan")
                    summary.append(
                        dict(
                            head=head,
                            mode=mode,
                            size=size,
                            kind=k,
                            rounds=n,
                            time_s=round(t, 3),
                            mem_mib=round(m, 1),
                            time_ratio=round(rt, 3),
                            mem_ratio=round(rm, 3),
                            fastest_s=round(fast, 3),
                            fastest_ratio=round(rf, 3),
                        )
                    )
    return summary


#: The issue's targets, ours / mmseg: (time, memory) by mode and size (None: no target).
TARGETS = {("train", None): (0.9, 0.8), ("infer", "128x256"): (0.75, 0.6)}


def target(mode: str, size: str) -> tuple[float, float] | None:
    return TARGETS.get((mode, size), TARGETS.get((mode, None)))


def case_key(r: dict) -> tuple:
    return (r.get("head", "isa"), r["kind"], r["mode"], r["h"], r["w"], r.get("round", 0))


def _system(argv: list[str]) -> dict:
    import torch

    return dict(
        command=" ".join([os.path.relpath(bench.__file__, bench.PROJECT), *argv]),
        torch=torch.__version__,
        python=platform.python_version(),
        cpu=platform.processor() or platform.machine(),
        cpu_model=_cpu_model(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),  # the vector ISA torch uses
        cores=os.cpu_count(),
        threads=2,
        loadavg=[round(x, 2) for x in os.getloadavg()],
        date=time.strftime("%Y-%m-%d"),
    )


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's name for it."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def _run_text(run: str | dict) -> str:
    """A run of the file as the report lists it: the command and, where recorded, the machine."""
    if isinstance(run, str):  # runs before the machine was recorded
        return f"`{run}`"
    return f"`{run['command']}` ({run['cpu_model']}, {run['cpu_capability']}; {run['date']})"


def write_out(path: str, rows: list[dict], failures: list[dict], argv: list[str]) -> None:
    """The JSON (rows, skipped cases, summary, wall seconds per head), rewritten atomically,
    and its markdown table beside it (``.md``)."""
    heads = [h for h in HEADS if any(r.get("head", "isa") == h for r in rows + failures)]
    modes = [m for m in ("infer", "train") if any(r["mode"] == m for r in rows + failures)]
    sizes = sorted(
        {f"{r['h']}x{r['w']}" for r in rows + failures}, key=lambda s: int(s.split("x")[0])
    )
    wall: dict[str, float] = {}
    for r in rows + failures:
        wall[r.get("head", "isa")] = wall.get(r.get("head", "isa"), 0.0) + r.get("wall_s", 0.0)
    summary = summarise(rows, modes, sizes, heads)
    system = _system(argv)
    runs = []  # every invocation that added to the file, in order
    if os.path.exists(path):
        with open(path) as f:
            runs = json.load(f).get("runs", [])
    run = {k: system[k] for k in ("command", "cpu_model", "cpu_capability", "date")}
    if not runs or runs[-1] != run:  # a run's entry names the machine it ran on
        runs.append(run)
    doc = dict(
        system=system,
        runs=runs,
        summary=summary,
        wall_s_per_head={h: round(s, 1) for h, s in wall.items()},
        rows=rows,
        failures=failures,
    )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
    md = os.path.splitext(path)[0] + ".md"
    with open(md + ".tmp", "w") as f:
        f.write(markdown(doc))
    os.replace(md + ".tmp", md)


def markdown(doc: dict, sizes=("64x128", "128x256"), modes=("train", "infer")) -> str:
    """Every head, mode and size: mmseg's time and memory, each of our kinds' ratios, the
    issue's target and whether it is met; cases without figures say why."""
    s = doc["system"]
    out = [
        "# Each head against mmsegmentation 1.2.2 (CPU)",
        "",
        f"torch {s['torch']}, {s['cores']} cores, {s['threads']} threads, batch 1, 2048-channel "
        f"input, 19 classes; {s['date']}. Time: median over rounds of each case's median step; "
        "memory: peak RSS growth; fastest: the fastest step of any round (the machine is "
        "shared, the least disturbed figure). Ratios are ours / mmseg. Targets (the issue): training at "
        "most 0.9x time and 0.8x memory; inference at 128x256 at most 0.75x time and 0.6x "
        "memory.",
        "",
        "Runs (each resumed the last):",
        "",
        *[f"- {_run_text(c)}" for c in doc.get("runs") or [s["command"]]],
        "",
        "| head | mode | size | mmseg s | mmseg MiB | ours | rounds | s | MiB | time x | "
        "fastest x | memory x | target (time, memory) | met |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    summ = {(r["head"], r["mode"], r["size"], r["kind"]): r for r in doc["summary"]}
    fails: dict[tuple, str] = {}
    for r in doc["failures"]:
        fails.setdefault((r["head"], r["mode"], f"{r['h']}x{r['w']}", r["kind"]), r["skipped"])

    def why_not(head: str, mode: str, size: str, kind: str) -> str:
        whys = [
            f"{who}: {w}"
            for who, k in (("mmseg", "mmseg"), ("ours", kind))
            if (w := fails.get((head, mode, size, k)))
        ]
        return "; ".join(whys) or "not run (time)"

    for head in HEADS:
        for mode in modes:
            for size in sizes:
                tg = target(mode, size)
                tgs = f"<= {tg[0]}, <= {tg[1]}" if tg else "none"
                b = summ.get((head, mode, size, "mmseg"))
                bt = f"{b['time_s']:.3f}" if b else "-"
                bm = f"{b['mem_mib']:.0f}" if b else "-"
                extra = [
                    k
                    for k in KINDS
                    if (head, mode, size, k) in summ and k not in default_kinds(head, mode)
                ]
                for k in [*default_kinds(head, mode)[1:], *extra]:
                    r = summ.get((head, mode, size, k))
                    if r and b:
                        met = "-"
                        if tg:
                            miss = [
                                n
                                for n, v, t in (
                                    ("time", r["time_ratio"], tg[0]),
                                    ("memory", r["mem_ratio"], tg[1]),
                                )
                                if v > t
                            ]
                            met = "yes" if not miss else "no (" + ", ".join(miss) + ")"
                        out.append(
                            f"| {head} | {mode} | {size} | {bt} | {bm} | {k} | {r['rounds']} | "
                            f"{r['time_s']:.3f} | {r['mem_mib']:.0f} | {r['time_ratio']:.2f} | "
                            f"{r['fastest_ratio']:.2f} | {r['mem_ratio']:.2f} | {tgs} | {met} |"
                        )
                    else:
                        note = why_not(head, mode, size, k)
                        out.append(
                            f"| {head} | {mode} | {size} | {bt} | {bm} | {k} | 0 | - | - | - | "
                            f"- | - | {tgs} | {note} |"
                        )
    out += ["", "Wall seconds per head (every case, process start included): "]
    out[-1] += ", ".join(f"{h} {v:.0f} s" for h, v in doc["wall_s_per_head"].items()) + "."
    return "\n".join(out) + "\n"
