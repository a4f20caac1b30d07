"""The GPU check's summary rows, each against its target, and its markdown report.

:func:`summarize` turns the cases of a report (``run.py``) into rows of
``section, case, measurement, value, target, met``; ``met`` is ``"met"`` / ``"not met"`` on a
GPU, ``"n/a (smoke)"`` in a smoke run, ``"not measured"`` where the case did not run and
empty where a row has no target. :func:`markdown` writes them as tables.
"""

from __future__ import annotations

from typing import Any

#: The targets on one H200: training peak memory (bytes per GPU), whole-image images/s, the
#: fused / explicit ratio of the attention step (time and memory), decoder graph breaks.
TRAIN_MEMORY_BYTES = 4e9
TRAIN_MEMORY_TARGET = "<= 4 GB/GPU (seed: 5.87 GB on a V100, fp32)"
INFERENCE_FPS = 10.0
INFERENCE_TARGET = ">= 10 images/s (seed: 2.91 on a V100)"
ATTENTION_RATIO = 0.5
ATTENTION_TARGET = "<= 0.5x explicit"
BREAKS_TARGET = "0 graph breaks"


def _judge(report: dict[str, Any], ok: bool) -> str:
    if report["smoke"]:
        return "n/a (smoke)"
    if not str(report["system"].get("device", "")).startswith("cuda"):
        return "n/a (not on a GPU)"
    return "met" if ok else "not met"


def _row(section: str, case: str, what: str, value: Any, target: str = "", met: str = "") -> dict:
    return {"section": section, "case": case, "measurement": what, "value": value,
            "target": target, "met": met}  # fmt: skip


def _cases(report: dict[str, Any], section: str) -> list[dict[str, Any]]:
    return report["sections"].get(section, {}).get("cases", [])


def _not_run(case: dict[str, Any]) -> str:
    return f"{case['status']}: {case.get('reason') or case.get('error', '')}"


def _train_rows(report: dict[str, Any]) -> list[dict]:
    rows = []
    for c in _cases(report, "train"):
        name = c["name"]
        if c["status"] != "ok":
            rows.append(_row("train", name, "peak memory", _not_run(c), TRAIN_MEMORY_TARGET,
                             "not measured"))  # fmt: skip
            continue
        gb = c["peak_memory_gib"] * 2**30 / 1e9
        rows += [
            _row("train", name, "s/iter", c["sec_per_iter"]),
            _row("train", name, "images/s", c["images_per_s"]),
            _row("train", name, f"peak memory ({c['amp']})",
                 f"{gb:.2f} GB ({c['peak_memory_gib']:.2f} GiB)", TRAIN_MEMORY_TARGET,
                 _judge(report, gb * 1e9 <= TRAIN_MEMORY_BYTES)),
        ]  # fmt: skip
    return rows


def _inference_rows(report: dict[str, Any]) -> list[dict]:
    rows = []
    for c in _cases(report, "inference"):
        name = c["name"]
        if c["status"] != "ok":
            rows.append(_row("inference", name, "images/s", _not_run(c), INFERENCE_TARGET,
                             "not measured"))  # fmt: skip
            continue
        size = "x".join(map(str, c["image"]))
        rows.append(_row("inference", name, f"images/s at {size}", c["images_per_s"],
                         INFERENCE_TARGET, _judge(report, c["images_per_s"] >= INFERENCE_FPS)))  # fmt: skip
        memory = c.get("peak_memory_gib")
        rows.append(_row("inference", name, "peak memory",
                         f"{memory} GiB" if memory is not None else f"{c['peak_growth_mib']} MiB growth"))  # fmt: skip
        if "max_abs_diff_vs_eager" in c:
            rows.append(_row("inference", name, "max |compiled - eager| logit",
                             f"{c['max_abs_diff_vs_eager']:.2e}"))  # fmt: skip
    return rows


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if a is None or b is None or not b.get(key):
        return None
    return round(a[key] / b[key], 3)


def _head_rows(report: dict[str, Any]) -> list[dict]:
    ok = [c for c in _cases(report, "heads") if c["status"] == "ok"]
    by = {(c["bench"], c["module"], c["pass"], tuple(c["size"])): c for c in ok}
    target = tuple(report["plan"]["target_feature"])
    rows = []
    for size in [tuple(s) for s in report["plan"]["features"]]:
        tag = f"{size[0]}x{size[1]}"
        for bench, fused, explicit in (
            ("attention", "isa-fused", "isa-explicit"),
            ("decoder", "isa-fused", "isa-explicit"),
        ):
            p = "forward+backward"
            a, b = by.get((bench, fused, p, size)), by.get((bench, explicit, p, size))
            judged = bench == "attention" and size == target
            for key, what in (("median_ms", "time"), ("peak_mib", "memory")):
                r = _ratio(a, b, key)
                met = "" if not judged else "not measured" if r is None else _judge(
                    report, r <= ATTENTION_RATIO)  # fmt: skip
                rows.append(_row("heads", f"{bench} fwd+bwd {tag}", f"fused / explicit {what}",
                                 r, ATTENTION_TARGET if judged else "", met))  # fmt: skip
        p = "forward+backward"
        a, b = (
            by.get(("decoder", "isa-fused-checkpoint", p, size)),
            by.get(("decoder", "isa-fused", p, size)),
        )
        for key, what in (("median_ms", "time"), ("peak_mib", "memory")):
            rows.append(_row("heads", f"decoder fwd+bwd {tag}",
                             f"isa-fused-checkpoint / isa-fused {what}", _ratio(a, b, key)))  # fmt: skip
    return rows


def _budget_rows(report: dict[str, Any]) -> list[dict]:
    rows = []
    ok = [c for c in _cases(report, "token_budget") if c["status"] == "ok"]
    for dtype in ("fp32", "bf16"):
        cases = [c for c in ok if c["dtype"] == dtype]
        if not cases:
            continue
        best = min(cases, key=lambda c: c["median_ms"])
        size = "x".join(map(str, best["size"]))
        for c in cases:
            rows.append(_row("token_budget", f"{dtype} {size}", f"budget {c['token_budget']}",
                             f"{c['median_ms']} ms, {c['peak_mib']} MiB"))  # fmt: skip
        rows.append(_row("token_budget", f"{dtype} {size}", "fastest budget",
                         best["token_budget"], f"chosen by measurement (now {best['default_budget']})",
                         "n/a (smoke)" if report["smoke"] else "see value"))  # fmt: skip
    return rows


def _graph_rows(report: dict[str, Any]) -> list[dict]:
    rows = []
    for c in _cases(report, "graph_breaks"):
        name = c["name"]
        judged = name.startswith("decoder") and name != "decoder over sizes"
        if c["status"] != "ok":
            rows.append(_row("graph_breaks", name, "graph breaks", _not_run(c),
                             BREAKS_TARGET if judged else "", "not measured" if judged else ""))  # fmt: skip
        elif name == "decoder over sizes":
            sizes = ", ".join("x".join(map(str, s)) for s in c["sizes"])
            rows.append(_row("graph_breaks", name, f"graphs after each of {sizes}", c["graphs"]))
        else:
            value = f"{c['graph_breaks']} ({c['graphs']} graph(s))"
            if c["break_reasons"]:
                value += ": " + "; ".join(c["break_reasons"])
            rows.append(_row("graph_breaks", name, "graph breaks", value,
                             BREAKS_TARGET if judged else "",
                             _judge(report, c["graph_breaks"] == 0) if judged else ""))  # fmt: skip
    return rows


def _sync_rows(report: dict[str, Any]) -> list[dict]:
    rows = []
    for c in _cases(report, "sync_bn"):
        if c["status"] != "ok":
            rows.append(_row("sync_bn", c["name"], "forward", _not_run(c)))
            continue
        rows.append(_row("sync_bn", c["name"], f"forward ({c['backend']})", c["forward"]))
        for key, value in c.get("max_abs_diff", {}).items():
            rows.append(_row("sync_bn", c["name"], f"max |sync - plain| {key}", f"{value:.2e}"))
    return rows


def summarize(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's summary rows (see the module docstring)."""
    builders = (_train_rows, _inference_rows, _head_rows, _budget_rows, _graph_rows, _sync_rows)
    return [row for build in builders for row in build(report)]


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the summary against the targets, every case, the head table."""
    s = report["system"]
    title = "GPU check" + (
        " (smoke: tiny sizes on the CPU, targets not judged)" if report["smoke"] else ""
    )
    lines = [
        f"# {title}",
        "",
        f"{s.get('device_name')} ({s.get('device')}), torch {s.get('torch')}, CUDA "
        f"{s.get('cuda')}; {report['status']}, {report.get('elapsed_s', 0)} s.",
        "",
        f"Command: `{s.get('command')}`",
        "",
        "| section | case | measurement | value | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.get("summary") or summarize(report):
        lines.append("| " + " | ".join(_cell(r[k]) for k in
                     ("section", "case", "measurement", "value", "target", "met")) + " |")  # fmt: skip
    lines += [
        "",
        "## Cases",
        "",
        "| section | case | status | seconds | note |",
        "|---|---|---|---|---|",
    ]
    for name, section in report["sections"].items():
        if "error" in section:
            lines.append(f"| {name} | (all) | failed | | {_cell(section['error'])} |")
        for c in section["cases"]:
            note = c.get("reason") or c.get("error") or ""
            lines.append(
                f"| {name} | {c['name']} | {c['status']} | {c.get('seconds', '')} | {_cell(note)} |"
            )
    heads = [c for c in _cases(report, "heads") if c["status"] == "ok"]
    if heads:
        lines += ["", "## Head benchmarks", "", "| bench | module | pass | features | median ms | peak MiB |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for c in heads:
            size = "x".join(map(str, c["size"]))
            lines.append(f"| {c['bench']} | {c['module']} | {c['pass']} | {size} | "
                         f"{c['median_ms']} | {c['peak_mib']} |")  # fmt: skip
    return "\n".join(lines) + "\n"
