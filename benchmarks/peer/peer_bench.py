#!/usr/bin/env python
"""Same-run peer benchmark: mmsegmentation 1.2.2's context heads against ISA Explorer's.

Runs in a venv that has mmseg (mmengine, mmcv-lite + :mod:`mmcv_ext_shim`) and the project on
the same torch (README.md beside this file says how). Heads (``--heads``, the project's names):
``isa``, ``nl``, ``cc``, ``da``, ``gc``, ``ema``, each with its published settings
(``HEADS`` of ``peer_settings.py``: 2048 input channels, 19 classes, batch 1; mmseg's with BN for SyncBN, ours
through ``heads.get(name).build(2048, 19, HeadConfig(...))`` as ``ISANet`` builds its
decoder). Every case runs in a fresh process with 2 threads; the kinds alternate their order
from round to round; each case reports the median wall time of ``--reps`` steps (4) after one
warm-up and its peak RSS growth (``VmHWM`` reset through ``/proc/self/clear_refs``, baseline
once the head and the input exist). Modes: ``infer`` (eval, ``no_grad``, the logits) and
``train`` (train mode, forward + mean-square loss summed over every training output (DA's
three: mmseg's ``forward`` tuple, our ``forward_train``) + backward + ``zero_grad``).

Kinds: ``mmseg``; ours: ``fused`` and ``explicit`` (that ``attn_impl``) for the heads that have
both (isa, nl, da), else ``ours`` (its one path); ``fused-checkpoint`` and
``explicit-checkpoint`` (training, ISA: activation checkpointing); ``fused-prepared`` /
``ours-prepared`` (inference: the head as ``load_model(..., for_inference=True)`` gives it).
ISA run alone keeps its earlier four kinds per mode (:data:`ISA_KINDS`).

With ``--out X.json`` the JSON (and ``X.md``, the table) is rewritten after every case; a rerun
skips the cases it holds, so a run can be stopped and resumed (``--stop-at HH:MM`` UTC starts
no case after that time). A case past ``--case-timeout`` or that brings the machine's
available memory under ``--reserve-mib`` is stopped and recorded as skipped, with the reason.

Usage:
    python benchmarks/peer/peer_bench.py --heads isa,nl,cc,da,gc,ema --sizes 64x128,128x256 \\
        --modes train,infer --rounds 3 --out results/peer_heads_cpu.json
    python benchmarks/peer/peer_bench.py --one KIND MODE H W --head HEAD
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

from peer_settings import HEADS, ISA_KINDS, default_kinds

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.environ.get("PROJECT_DIR", os.path.dirname(os.path.dirname(HERE)))


def _kib(field: str, source: str = "/proc/self/status") -> int:
    """A ``KiB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) or ``/proc/meminfo``."""
    with open(source) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def build(kind: str, head_name: str = "isa"):
    """The head ``head_name`` of ``kind`` and its training and inference calls on a
    ``(1, 2048, h, w)`` feature map: ``(head, train_call, infer_call)``; ``train_call`` returns
    every output the head trains on (DA: three), ``infer_call`` the logits."""
    import torch

    spec = HEADS[head_name]
    if kind == "mmseg":
        sys.path.insert(0, HERE)
        import mmcv_ext_shim

        mmcv_ext_shim.install()
        from mmengine.logging import MMLogger

        MMLogger.get_instance("peer", log_level="WARNING")
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules

        register_all_modules()
        cfg = dict(
            in_channels=2048,
            in_index=3,
            dropout_ratio=0.1,
            num_classes=19,
            norm_cfg=dict(type="BN", requires_grad=True),
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            **spec["mmseg"],
        )
        torch.manual_seed(0)

        def outputs(h, x):  # DAHead returns (pam_cam, pam_out, cam_out); predict takes [0]
            y = h([None, None, None, x])
            return list(y) if isinstance(y, (tuple, list)) else [y]

        return MODELS.build(cfg), outputs, (lambda h, x: outputs(h, x)[0])
    sys.path.insert(0, PROJECT)
    from isa_explorer import heads
    from isa_explorer.heads.protocol import HeadConfig

    impl = kind.removesuffix("-checkpoint").removesuffix("-prepared")
    extra = {} if impl == "ours" else {"attn_impl": impl}
    torch.manual_seed(0)
    head = heads.get(head_name).build(2048, 19, HeadConfig(**spec["ours"], **extra))
    if kind.endswith("-checkpoint"):
        head.set_full_checkpoint(True)
    if kind.endswith("-prepared"):  # the project's inference path (load_model(for_inference=True))
        head = _for_inference(head.eval())
    return head, (lambda h, x: list(h.forward_train(x).values())), (lambda h, x: h(x))


def _for_inference(head):
    """``head`` as ``load_model(..., for_inference=True)`` gives it, in either layout.

    Checkouts with ``isa_explorer.models.prepare`` (the BN-folded twin) call
    ``prepare_for_inference(head, inplace=True)``; later ones fuse in place through
    ``isa_explorer.models.fuse_for_inference(head)``, which returns the head.
    """
    try:
        from isa_explorer.models.prepare import prepare_for_inference
    except ModuleNotFoundError as e:
        if e.name != "isa_explorer.models.prepare":
            raise
        from isa_explorer.models import fuse_for_inference

        return fuse_for_inference(head)
    return prepare_for_inference(head, inplace=True)


def one(
    kind: str, mode: str, h: int, w: int, head_name: str = "isa", reps: int = 4, warmup: int = 1
) -> dict:
    """One case in this process; prints and returns its result."""
    import torch

    torch.set_num_threads(2)
    head, train_call, infer_call = build(kind, head_name)
    g = torch.Generator().manual_seed(1234 + 1000 * h + w)
    x = torch.randn(1, 2048, h, w, generator=g)
    head.train(mode == "train")
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    rss0 = _kib("VmRSS")
    times = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        if mode == "train":  # a mean-square loss summed over every training output
            ys = train_call(head, x)
            sum(y.float().square().mean() for y in ys).backward()
            head.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                ys = infer_call(head, x)
        dt = time.perf_counter() - t0
        del ys
        if i >= warmup:
            times.append(dt)
    res = dict(
        head=head_name,
        kind=kind,
        mode=mode,
        h=h,
        w=w,
        median_s=statistics.median(times),
        min_s=min(times),
        times_s=times,
        peak_growth_mib=(_kib("VmHWM") - rss0) / 1024,
        torch=torch.__version__,
    )
    print("RESULT " + json.dumps(res), flush=True)
    return res


def dense_estimate_mib(head: str, kind: str, mode: str, h: int, w: int) -> float:
    """A training step's peak where the head materialises its dense affinity (mmseg's and
    our ``explicit`` NL / DA): three ``N x N`` float32 buffers (the affinity, its softmax and
    their gradient) and the rest of the step (as the fused path's: ~2.5 GiB at 128x256,
    scaled by ``N``), plus the process (~1.5 GiB); 0 where it does not."""
    if not HEADS[head].get("dense") or mode != "train" or kind not in ("mmseg", "explicit"):
        return 0.0
    n = h * w
    return (3 * n**2 * 4 + 2.5 * 2**30 * n / 32768 + 1.5 * 2**30) / 2**20


def run_case(
    head: str, kind: str, mode: str, h: int, w: int, timeout_s: float, reserve_mib: float
) -> dict:
    """``one()`` in a fresh process, stopped when it runs past ``timeout_s`` or when the
    machine's available memory falls under ``reserve_mib``; the case's row, or a failure
    (``skipped`` with the reason)."""
    cmd = [sys.executable, __file__, "--one", kind, mode, str(h), str(w), "--head", head]
    est, avail = (
        dense_estimate_mib(head, kind, mode, h, w),
        _kib("MemAvailable", "/proc/meminfo") / 1024,
    )
    if est and est > avail - reserve_mib:
        reason = (
            f"not run: 3 N^2 float32 affinity buffers + the rest ({est / 1024:.1f} GiB) over "
            f"the available memory ({avail / 1024:.1f} GiB, other jobs running) less "
            f"{reserve_mib / 1024:.0f} GiB"
        )
        return dict(head=head, kind=kind, mode=mode, h=h, w=w, wall_s=0.0, skipped=reason)
    t0 = time.time()
    peak_rss = 0
    reason = None
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT
    ) as p:
        while p.poll() is None:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    rss = next(int(s.split()[1]) for s in f if s.startswith("VmRSS:"))
                peak_rss = max(peak_rss, rss)
            except (OSError, StopIteration):
                pass
            if time.time() - t0 > timeout_s:
                reason = f"over {timeout_s:.0f} s"
            elif _kib("MemAvailable", "/proc/meminfo") < reserve_mib * 1024:
                reason = (
                    f"out of memory: available memory under {reserve_mib:.0f} MiB "
                    f"at {peak_rss / 2**20:.1f} GiB RSS"
                )
            if reason:
                p.kill()
                break
            time.sleep(0.25)
        out, err = p.communicate()
    wall = time.time() - t0
    base = dict(head=head, kind=kind, mode=mode, h=h, w=w, wall_s=round(wall, 1))
    line = [s for s in out.splitlines() if s.startswith("RESULT ")]
    if line and not reason:
        load = round(os.getloadavg()[0], 2)  # the machine is shared: what else ran
        return {**json.loads(line[0][7:]), "wall_s": round(wall, 1), "loadavg": load}
    if not reason:
        last = (err.strip().splitlines() or ["no output"])[-1]
        reason = "out of memory" if "memory" in last.lower() else f"failed: {last[-300:]}"
    return {**base, "skipped": reason, "stderr": err[-800:], "loadavg": os.getloadavg()[0]}


def kinds_of(arg: str | None, heads: list[str], head: str, mode: str) -> list[str]:
    """``--kinds`` if given; else ISA's four per mode when it runs alone, else the defaults."""
    if arg:
        return arg.split(",")
    return list(ISA_KINDS[mode] if heads == ["isa"] else default_kinds(head, mode))


def _ordered(kinds, rnd: int) -> list[str]:
    """The kinds in alternating order from round to round."""
    return list(kinds) if rnd % 2 == 0 else list(kinds)[::-1]


def _load(path: str | None) -> tuple[list[dict], list[dict]]:
    if path and os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
        return doc.get("rows", []), doc.get("failures", [])
    return [], []


def main() -> int:
    from peer_report import case_key, summarise, write_out  # the report, once cases run

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", nargs=4, metavar=("KIND", "MODE", "H", "W"))
    ap.add_argument("--head", default="isa", help="the head of --one")
    ap.add_argument("--heads", default="isa", help=f"comma-separated, of {','.join(HEADS)}")
    ap.add_argument("--sizes", default="64x128,128x256")
    ap.add_argument("--modes", default="infer,train")
    ap.add_argument("--kinds", help="comma-separated (default: mmseg and ours, by head)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=4, help="timed steps per case, after one warm-up")
    ap.add_argument("--case-timeout", type=float, default=600, help="seconds; then skipped")
    ap.add_argument("--reserve-mib", type=float, default=1024, help="stop a case under this")
    ap.add_argument("--stop-at", help="UTC HH:MM: start no case after it")
    ap.add_argument("--redo-skipped", action="store_true", help="rerun cases recorded skipped")
    ap.add_argument("--out", help="JSON, rewritten after every case (and .md); reruns resume")
    a = ap.parse_args()
    if a.one:
        k, m, h, w = a.one
        one(k, m, int(h), int(w), a.head, reps=a.reps)
        return 0
    modes, sizes, heads = a.modes.split(","), a.sizes.split(","), a.heads.split(",")
    rows, failures = _load(a.out)
    if a.redo_skipped:
        failures = []
    done = {case_key(r) for r in rows + failures}
    # round, then size, then head: every case gets a round before any gets its next one
    cases = [
        (head, k, mode, size, rnd)
        for rnd in range(a.rounds)
        for size in sizes
        for head in heads
        for mode in modes
        for k in _ordered(kinds_of(a.kinds, heads, head, mode), rnd)
    ]
    for head, k, mode, size, rnd in cases:
        h, w = map(int, size.split("x"))
        if (head, k, mode, h, w, rnd) in done:
            continue
        if a.stop_at and time.strftime("%H:%M", time.gmtime()) >= a.stop_at:
            print("stop time reached", flush=True)
            break
        slow = [f for f in failures if case_key(f)[:5] == (head, k, mode, h, w)]
        slow = [f for f in slow if f["skipped"].startswith(("over", "out of memory"))]
        if k != "mmseg" and any(case_key(f) == (head, "mmseg", mode, h, w, rnd) for f in failures):
            # no ratio without mmseg's figure: spend the time elsewhere
            why = "not run: mmseg's case was skipped, so no ratio"
            r = dict(head=head, kind=k, mode=mode, h=h, w=w, wall_s=0.0, skipped=why)
        elif slow:  # it ran out of time or memory in an earlier round: it would again
            why = f"not run: {slow[0]['skipped']} in round {slow[0].get('round', 0)}"
            r = dict(head=head, kind=k, mode=mode, h=h, w=w, wall_s=0.0, skipped=why)
        else:
            r = run_case(head, k, mode, h, w, a.case_timeout, a.reserve_mib)
        r["round"] = rnd
        (failures if "skipped" in r else rows).append(r)
        print({q: v for q, v in r.items() if q not in ("times_s", "stderr")}, flush=True)
        if a.out:
            write_out(a.out, rows, failures, sys.argv[1:])
    summary = summarise(rows, modes, sizes, heads)
    print("\nhead mode size kind time_s mem_MiB time/mmseg mem/mmseg")
    for s in summary:
        print(
            f"{s['head']} {s['mode']} {s['size']} {s['kind']} {s['time_s']:.3f} "
            f"{s['mem_mib']:.0f} {s['time_ratio']:.2f} {s['mem_ratio']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
