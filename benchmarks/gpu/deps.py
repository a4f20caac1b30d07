#!/usr/bin/env python
"""Build ``.gpu_deps/``: what the GPU check needs beyond a GPU machine's own packages.

A GPU machine with torch, torchvision, timm (and its huggingface_hub), safetensors, tqdm,
tensorboard, pillow and onnx but no package registry lacks only segmentation-models-pytorch,
which is pure Python. ``python benchmarks/gpu/deps.py`` installs the version installed
here into ``.gpu_deps/`` (``pip install --no-deps --target``), checks that nothing in it is
compiled, and prints its size and the command that runs the check there with it on
``PYTHONPATH`` (``docs/gpu_check.md``). The folder is git-ignored; it travels with the
working tree when named explicitly.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

#: Distributions the GPU machine lacks; each must be pure Python.
PACKAGES = ("segmentation-models-pytorch",)
#: Suffixes of compiled files, which would tie the folder to one Python and platform.
COMPILED = (".so", ".pyd", ".dylib")
DEVICE_COMMAND = (
    "PYTHONUNBUFFERED=1 PYTHONPATH=.gpu_deps:. python3 benchmarks/gpu/run.py "
    "--out $OUT/gpu_check.json"
)


def build(target: Path, packages: tuple[str, ...] = PACKAGES) -> int:
    """Install ``packages`` (at the versions installed here) into a fresh ``target``.

    Returns:
        The folder's size in bytes.

    Raises:
        RuntimeError: A package holds compiled files.
        subprocess.CalledProcessError: pip failed.
    """
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in packages]
    if target.exists():
        shutil.rmtree(target)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet"]
    subprocess.run([*cmd, "--target", str(target), *pins], check=True)
    files = [p for p in target.rglob("*") if p.is_file()]
    compiled = [p for p in files if p.suffix in COMPILED]
    if compiled:
        raise RuntimeError(f"compiled files in {target}: {[str(p) for p in compiled[:5]]}")
    return sum(p.stat().st_size for p in files)


def main(argv: list[str] | None = None) -> int:
    """Build the folder; print its size and the command to run on the GPU machine."""
    p = argparse.ArgumentParser(prog="python benchmarks/gpu/deps.py", description=__doc__)
    p.add_argument("--target", type=Path, default=Path(".gpu_deps"))
    args = p.parse_args(argv)
    size = build(args.target)
    print(f"{args.target}: {', '.join(PACKAGES)}, {size / 2**20:.1f} MiB, pure Python")
    print(f"on the GPU machine, from the repository root (carry {args.target}):")
    print(f"  {DEVICE_COMMAND}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
