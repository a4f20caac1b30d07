"""Wall time, peak memory and machine description for the benchmarks.

Peak memory on the CPU is the growth of the peak resident set size over the resident set size
at a baseline taken once the model and inputs exist. On Linux the peak is the kernel's
high-water mark ``VmHWM``, reset at the baseline through ``/proc/self/clear_refs``
(``ru_maxrss`` also holds the spawning parent's peak, which hides small growths); elsewhere,
``ru_maxrss``. Freed memory still counts towards a process's peak, so each benchmark case runs
in a fresh subprocess (:func:`~isa_explorer.bench.worker.run_worker`). On CUDA it is
``torch.cuda.max_memory_allocated`` over the memory allocated at the baseline.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

MiB = 2**20
#: Environment of the worker processes. glibc raises its mmap threshold (up to 32 MiB) after the
#: first free above it, so later tensors stay in the heap and the peak RSS depends on heap
#: fragmentation; a fixed 1 MiB threshold makes the peak RSS follow the peak of live tensors.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576"}


class PeakMemory:
    """Peak memory growth (bytes) of the code run after :meth:`start`.

    Args:
        device: ``"cpu"`` (peak RSS of this process) or a CUDA device.
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.baseline = 0
        self.method = ""

    def start(self) -> PeakMemory:
        """Take the baseline (call once the inputs exist)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        elif _reset_peak_rss():
            self.baseline = _proc_status("VmRSS")
            self.method = "VmHWM (peak RSS, reset at the baseline) - VmRSS at the baseline"
        else:
            self.baseline = _ru_maxrss()
            self.method = "ru_maxrss growth"
        return self

    def growth(self) -> int:
        """Bytes above the baseline at the peak since :meth:`start`."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = _proc_status("VmHWM")
        else:
            peak = _ru_maxrss()
        return max(0, peak - self.baseline)


def _ru_maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status("VmHWM")
    except (OSError, KeyError):
        return False
    return True


def time_runs(
    fn: Callable[[], Any], runs: int, warmup: int, device: str | torch.device = "cpu"
) -> list[float]:
    """Seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed calls."""
    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def median_ms(times: list[float]) -> float:
    """Median of ``times`` (seconds) in milliseconds."""
    return 1000.0 * statistics.median(times)


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes a new case may use: ``MemAvailable`` (CPU) or free device memory (CUDA)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot tell the available memory: install psutil")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info(device: str | torch.device = "cpu", command: str | None = None) -> dict[str, Any]:
    """Device, torch version, threads, load average and the command line of this run.

    ``os.getloadavg()`` is recorded because timings on a shared machine depend on it.
    """
    dev = torch.device(device)
    main = getattr(sys.modules.get("__main__"), "__spec__", None)  # python -m MODULE
    module = main.name if main is not None else os.path.basename(sys.argv[0])
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "worker_env": WORKER_ENV,
        "command": command or f"python -m {module} {' '.join(sys.argv[1:])}",
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
