#!/usr/bin/env python
"""Same-run peer benchmark: mmsegmentation 1.2.2's ``ISAHead`` against ISA Explorer's decoder.

Runs in a venv that has mmseg (mmengine, mmcv-lite + :mod:`mmcv_ext_shim`) and the project on
the same torch (README.md beside this file says how). The head is the published one: 2048
input channels -> 512 / 256 -> 19 classes, batch 1. Every case runs in a fresh process with 2
threads; the kinds of a size alternate their order from round to round; each case reports the
median wall time of 4 steps after one warm-up and its peak RSS growth (``VmHWM`` reset through
``/proc/self/clear_refs``, baseline once the head and the input exist). Modes: ``infer`` (eval,
``no_grad``, the plain decoder) and ``train`` (train mode, forward + mean-square loss +
backward + ``zero_grad``).

Kinds: ``mmseg``; ``fused`` and ``explicit`` (:class:`ISADecoder` with that ``attn_impl``);
``fused-checkpoint`` and ``explicit-checkpoint`` (training only: the relation blocks under
activation checkpointing); ``fused-prepared`` (inference only: the decoder made ready for
inference, as ``load_model(..., for_inference=True)`` gives it: ``prepare_for_inference`` where
the checkout has ``isa_explorer.models.prepare``, else ``isa_explorer.models.fuse_for_inference``).

Usage:
    python benchmarks/peer/peer_bench.py --sizes 64x128,128x256 --modes infer,train --rounds 3 \\
        --out results/peer_cpu.json
    python benchmarks/peer/peer_bench.py --one KIND MODE H W
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.environ.get("PROJECT_DIR", os.path.dirname(os.path.dirname(HERE)))
KINDS = (
    "mmseg",
    "fused",
    "explicit",
    "fused-checkpoint",
    "explicit-checkpoint",
    "fused-prepared",
)
DEFAULT_KINDS = {
    "infer": ("mmseg", "fused", "explicit", "fused-prepared"),
    "train": ("mmseg", "fused", "explicit", "fused-checkpoint"),
}


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def build(kind: str):
    """The head of ``kind`` and how to call it on a ``(1, 2048, h, w)`` feature map."""
    import torch

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
            type="ISAHead",
            in_channels=2048,
            in_index=3,
            channels=512,
            isa_channels=256,
            down_factor=(8, 8),
            dropout_ratio=0.1,
            num_classes=19,
            norm_cfg=dict(type="BN", requires_grad=True),
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        )
        torch.manual_seed(0)
        return MODELS.build(cfg), (lambda h, x: h([None, None, None, x]))
    sys.path.insert(0, PROJECT)
    from isa_explorer import heads
    from isa_explorer.heads.protocol import HeadConfig

    impl = kind.removesuffix("-checkpoint").removesuffix("-prepared")
    torch.manual_seed(0)
    head = heads.get("isa").build(2048, 19, HeadConfig(512, 256, attn_impl=impl))
    head.set_full_checkpoint(kind.endswith("-checkpoint"))
    if kind.endswith("-prepared"):  # the project's inference path (load_model(for_inference=True))
        head = _for_inference(head.eval())
    return head, (lambda h, x: h(x))


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


def one(kind: str, mode: str, h: int, w: int, reps: int = 4, warmup: int = 1) -> dict:
    """One case in this process; prints and returns its result."""
    import torch

    torch.set_num_threads(2)
    head, call = build(kind)
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
        if mode == "train":
            y = call(head, x)
            y.float().square().mean().backward()
            head.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                y = call(head, x)
        dt = time.perf_counter() - t0
        del y
        if i >= warmup:
            times.append(dt)
    res = dict(
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


def summarise(rows: list[dict], modes: list[str], sizes: list[str]) -> list[dict]:
    """Medians over the rounds and the ratios to mmseg, per mode, size and kind."""
    summary = []
    for mode in modes:
        for size in sizes:
            h, w = map(int, size.split("x"))
            med = {}
            for k in KINDS:
                rs = [r for r in rows if (r["kind"], r["mode"], r["h"], r["w"]) == (k, mode, h, w)]
                if rs:
                    t = statistics.median(r["median_s"] for r in rs)
                    m = statistics.median(r["peak_growth_mib"] for r in rs)
                    med[k] = (t, m, len(rs))
            base = med.get("mmseg")
            for k, (t, m, n) in med.items():
                rt = t / base[0] if base else float("nan")
                rm = m / base[1] if base else float("nan")
                summary.append(
                    dict(
                        mode=mode,
                        size=size,
                        kind=k,
                        rounds=n,
                        time_s=round(t, 3),
                        mem_mib=round(m, 1),
                        time_ratio=round(rt, 3),
                        mem_ratio=round(rm, 3),
                    )
                )
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", nargs=4, metavar=("KIND", "MODE", "H", "W"))
    ap.add_argument("--sizes", default="64x128,128x256")
    ap.add_argument("--modes", default="infer,train")
    ap.add_argument("--kinds", help="comma-separated (default: by mode, see the docstring)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.one:
        k, m, h, w = a.one
        one(k, m, int(h), int(w))
        return 0
    modes, sizes = a.modes.split(","), a.sizes.split(",")
    rows: list[dict] = []
    failures: list[dict] = []
    for mode in modes:
        kinds = a.kinds.split(",") if a.kinds else list(DEFAULT_KINDS[mode])
        for size in sizes:
            h, w = map(int, size.split("x"))
            for r in range(a.rounds):
                for k in kinds if r % 2 == 0 else kinds[::-1]:
                    cmd = [sys.executable, __file__, "--one", k, mode, str(h), str(w)]
                    p = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT)
                    line = [s for s in p.stdout.splitlines() if s.startswith("RESULT ")]
                    if not line:
                        print(k, mode, size, "FAILED", p.stderr[-800:], flush=True)
                        failures.append(dict(kind=k, mode=mode, size=size, error=p.stderr[-800:]))
                        continue
                    rows.append(json.loads(line[0][7:]))
                    print(rows[-1], flush=True)
    summary = summarise(rows, modes, sizes)
    print("\nmode size kind time_s mem_MiB time/mmseg mem/mmseg")
    for s in summary:
        print(
            f"{s['mode']} {s['size']} {s['kind']} {s['time_s']:.3f} {s['mem_mib']:.0f} "
            f"{s['time_ratio']:.2f} {s['mem_ratio']:.2f}"
        )
    if a.out:
        import torch

        system = dict(
            command=" ".join([os.path.relpath(__file__, PROJECT), *sys.argv[1:]]),
            torch=torch.__version__,
            python=platform.python_version(),
            cpu=platform.processor() or platform.machine(),
            cores=os.cpu_count(),
            threads=2,
            loadavg=[round(x, 2) for x in os.getloadavg()],
            date=time.strftime("%Y-%m-%d"),
        )
        with open(a.out, "w") as f:
            json.dump(
                dict(system=system, summary=summary, rows=rows, failures=failures), f, indent=1
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
