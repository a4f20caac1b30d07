#!/usr/bin/env python
"""Resident memory of the explorer (the app's logic) with its default model and a zoo model.

Each case runs in a fresh process, through the public objects the app uses
(:class:`~isa_explorer.explorer.Explorer` over an :class:`~isa_explorer.explorer.ExplorerModel`
and a :class:`~isa_explorer.explorer.SessionStore`), and records ``VmRSS`` (resident now) and
``VmHWM`` (the peak since the previous stage: reset through ``/proc/self/clear_refs``) from
``/proc/self/status`` after each stage: ``start`` (torch and the explorer imported), ``model``
(``ExplorerModel(...)``: for a zoo name the download and the conversion), ``analyse`` (the
image analysed as an upload or an example is: weights loaded, the model made ready for
inference, the attention captured and the image kept in the store) and ``click`` (the
attention maps of the centre pixel drawn).

Cases:

* ``default``: the embedded default model, analysing example scene 0 (the app's first image).
* ``zoo``: a full-size mmseg ISANet R-50-D8 (19 classes, random weights and BatchNorm
  statistics, every key and shape of ``isanet_r50_keys.txt``), saved as mmseg saves
  checkpoints and served over HTTP on 127.0.0.1 as a zoo entry (``ISA_EXPLORER_ZOO_FILE``) in a
  fresh ``ISA_EXPLORER_HOME``: the real download, verification and conversion run; then an
  uploaded ``--size`` RGB PNG (1024x2048 by default) is analysed.
* ``zoo-cached``: the same zoo model once more, now loaded from the cache (a later start).

``--project-dir`` picks the checkout measured (put first on ``sys.path`` in every case; the
``isa_explorer.__file__`` used is recorded), so one script measures an older commit and the
current tree alike.

Usage:
    python benchmarks/app_memory.py --out results/app_memory.json
    python benchmarks/app_memory.py --project-dir /tmp/before --out /tmp/app_memory_before.json
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PROJECT = HERE.parent
KEYS_FILE = DEFAULT_PROJECT / "tests" / "fixtures" / "isanet_r50_keys.txt"  # from mmseg
CASES = ("default", "zoo", "zoo-cached")
ZOO_NAME = "isanet_r50-d8_random-weights_cityscapes-512x1024"
ZOO_FILE = f"/isanet/{ZOO_NAME}/{ZOO_NAME}_20260101_000000-{{sha}}.pth"


def _status_mib(field: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current ``VmRSS``."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def random_checkpoint(keys_file: Path, seed: int = 0) -> bytes:
    """An mmseg-format checkpoint of every key and shape listed in ``keys_file``, random.

    Convolutions get He-normal weights, BatchNorms weights near 1, small biases and running
    statistics near (0, 1), so activations stay finite through the network.

    Args:
        keys_file: Lines ``KEY<TAB>(d0, d1, ...)``; ``#`` lines are comments.
        seed: Seed of the random weights.

    Returns:
        The bytes of ``torch.save({"meta": ..., "state_dict": ...})``.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for line in keys_file.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape_text = line.split("\t")
        shape = tuple(int(d) for d in re.findall(r"\d+", shape_text))
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            state[key] = torch.tensor(0, dtype=torch.long)
        elif leaf == "running_var":
            state[key] = torch.rand(shape, generator=g) * 0.5 + 0.75
        elif leaf in ("running_mean", "bias"):
            state[key] = torch.randn(shape, generator=g) * 0.05
        elif len(shape) == 1:  # a BatchNorm's weight
            state[key] = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    buf = io.BytesIO()
    meta = {"mmseg_version": "1.2.2", "note": "random weights, for memory benchmarks"}
    torch.save({"meta": meta, "state_dict": state}, buf)
    return buf.getvalue()


def serve(files: dict[str, bytes]) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``files`` (URL path -> bytes) on a free port of 127.0.0.1; returns the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            data = files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def child(case: str, project_dir: str, image: str | None, threads: int) -> dict:
    """One case in this process (``--child``); prints and returns its stages.

    Args:
        case: One of :data:`CASES`.
        project_dir: Checkout to import ``isa_explorer`` from (put first on ``sys.path``).
        image: PNG to upload (zoo cases); ``None`` for the default model's example scene.
        threads: torch threads.

    Returns:
        ``{"case", "isa_explorer_file", "model_dir", "stages": [...], ...}``.
    """
    sys.path.insert(0, project_dir)
    stages: list[dict] = []
    t0 = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal t0
        gc.collect()
        stages.append(
            dict(
                stage=name,
                rss_mib=round(_status_mib("VmRSS"), 1),
                peak_mib=round(_status_mib("VmHWM"), 1),
                wall_s=round(time.perf_counter() - t0, 2),
            )
        )
        print(f"  {case} {name}: {stages[-1]}", file=sys.stderr, flush=True)
        _reset_peak()
        t0 = time.perf_counter()

    import torch

    import isa_explorer
    from isa_explorer.explorer import Explorer, ExplorerModel, SessionStore

    torch.set_num_threads(threads)
    stage("start")
    model = ExplorerModel(None if case == "default" else ZOO_NAME)
    stage("model")
    explorer = Explorer(model, SessionStore())
    key = "benchmark-session"
    state = explorer.load_example(key, 0) if image is None else explorer.load_file(key, image)
    stage("analyse")
    h, w = state.size
    explorer.click(key, w // 2, h // 2)
    stage("click")
    res = dict(
        case=case,
        isa_explorer_file=isa_explorer.__file__,
        model_dir=str(model.model_dir),
        image=f"{h}x{w}",
        image_source=state.source,
        state_mib=round(state.nbytes / 2**20, 1),
        store_mib=round(explorer.store.nbytes / 2**20, 1),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        stages=stages,
        peak_mib=max(s["peak_mib"] for s in stages),
    )
    print("RESULT " + json.dumps(res), flush=True)
    return res


def _write_png(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    """A smooth random RGB image of ``size`` ``(H, W)`` (a photo-like PNG, not noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, size[0] // 32), max(2, size[1] // 32), 3), np.uint8)
    Image.fromarray(small).resize((size[1], size[0]), Image.Resampling.BICUBIC).save(path)


def _git_head(project_dir: Path) -> dict:
    """The checkout's commit and whether its tree differs from it (read-only git calls)."""

    def git(*args: str) -> str:
        cmd = ["git", "--no-optional-locks", "-C", str(project_dir), *args]
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()

    return dict(commit=git("rev-parse", "HEAD"), dirty=bool(git("status", "--porcelain")))


def run_cases(a: argparse.Namespace) -> list[dict]:
    """Run each case of ``a.cases`` in a fresh process; the zoo served from this one."""
    project = str(Path(a.project_dir).resolve())
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="app_memory.") as tmp_text:
        tmp = Path(tmp_text)
        env = dict(os.environ, ISA_EXPLORER_HOME=str(tmp / "home"), PYTHONPATH=project)
        env.pop("ISA_EXPLORER_ZOO_URL", None)
        httpd = None
        image = tmp / "upload.png"
        if any(c.startswith("zoo") for c in a.cases):
            data = random_checkpoint(Path(a.keys))
            sha = hashlib.sha256(data).hexdigest()
            path = ZOO_FILE.format(sha=sha[:8])
            httpd, url = serve({path: data})
            entry = dict(
                name=ZOO_NAME,
                url=url + path,
                sha256=sha[:8],
                dataset="cityscapes",
                backbone="R-50-D8",
                crop=[512, 1024],
            )
            (tmp / "zoo.json").write_text(json.dumps([entry]))
            env["ISA_EXPLORER_ZOO_FILE"] = str(tmp / "zoo.json")
            print(f"serving {len(data) / 2**20:.1f} MiB checkpoint at {url}{path}", flush=True)
            h, w = map(int, a.size.split("x"))
            _write_png(image, (h, w))
        try:
            for case in a.cases:
                cmd = [sys.executable, __file__, "--child", case, "--project-dir", project]
                cmd += ["--threads", str(a.threads)]
                if case != "default":
                    cmd += ["--image", str(image)]
                p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
                line = [s for s in p.stdout.splitlines() if s.startswith("RESULT ")]
                if p.returncode or not line:
                    print(f"{case} FAILED (rc {p.returncode}):\n{p.stderr[-2000:]}", flush=True)
                    rows.append(dict(case=case, error=p.stderr[-2000:]))
                    continue
                rows.append(json.loads(line[0][7:]))
                print(f"{case}: {rows[-1]}", flush=True)
        finally:
            if httpd is not None:
                httpd.shutdown()
    return rows


def main() -> int:
    """Parse the arguments, run the cases (or one ``--child``), print a table, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project-dir", default=str(DEFAULT_PROJECT), help="checkout to measure")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, of " + str(CASES))
    ap.add_argument("--size", default="1024x2048", help="HxW of the zoo cases' upload")
    ap.add_argument("--keys", default=str(KEYS_FILE), help="key listing of the mmseg model")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each case")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.project_dir, a.image, a.threads)
        return 0
    a.cases = a.cases.split(",")
    unknown = sorted(set(a.cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {CASES}")
    rows = run_cases(a)
    print("\ncase stage rss_MiB peak_MiB wall_s")
    for r in rows:
        for s in r.get("stages", []):
            print(f"{r['case']} {s['stage']} {s['rss_mib']:.0f} {s['peak_mib']:.0f} {s['wall_s']}")
    if a.out:
        import torch

        system = dict(
            command=" ".join([sys.executable, *sys.argv]),
            project_dir=str(Path(a.project_dir).resolve()),
            **_git_head(Path(a.project_dir)),
            torch=torch.__version__,
            python=platform.python_version(),
            cpu=platform.processor() or platform.machine(),
            cores=os.cpu_count(),
            loadavg=[round(x, 2) for x in os.getloadavg()],
            date=time.strftime("%Y-%m-%d"),
        )
        Path(a.out).write_text(json.dumps(dict(system=system, cases=rows), indent=1) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
