"""The training, inference, graph-break and SyncBatchNorm sections of the GPU check.

Each ``*_cases`` function returns the :class:`plan.Case` list of one
section. Training goes through :func:`isa_explorer.training.train` (what ``train/fit.py``
runs) with the published recipe; inference runs the model as ``load_model(...,
for_inference=True)`` returns it (:func:`~isa_explorer.models.fuse_for_inference`),
channels-last. The head benchmarks and the token-budget sweep are in
``heads.py``.
"""

from __future__ import annotations

import copy
import gc
import json
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fake_cityscapes import write_fake_cityscapes
from graph_breaks import graph_breaks, graphs_over_sizes
from isa_explorer.bench.decoder import HEAD, build_decoder
from isa_explorer.configs import TrainConfig, get_config
from isa_explorer.costs.measure import MiB, PeakMemory, time_runs
from isa_explorer.models.fusion import fuse_for_inference
from isa_explorer.training import build_model, train
from isa_explorer.training.steps import amp_dtype
from plan import RECIPE, Case, Plan, autocast

GiB = 2**30


class Context:
    """What the cases of one run share: the plan, a scratch folder, the generated data."""

    def __init__(self, plan: Plan, scratch: Path):
        self.plan, self.scratch = plan, Path(scratch)
        self._cityscapes: Path | None = None

    def cityscapes(self) -> Path:
        """The generated Cityscapes layout (written on first use)."""
        if self._cityscapes is None:
            p = self.plan
            splits = {"train": p.train_scenes, "val": p.val_scenes}
            self._cityscapes = write_fake_cityscapes(
                self.scratch / "cityscapes", splits, p.train_data
            )
        return self._cityscapes


def free(device: str) -> None:
    """Drop compiled graphs and cached device memory between cases."""
    torch._dynamo.reset()
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def recipe_config(plan: Plan, extra: tuple[str, ...] = ()) -> TrainConfig:
    """:data:`RECIPE` at the plan's sizes, random init, with ``extra`` overrides."""
    sizes = (f"scale={json.dumps(list(plan.scale))}", f"crop_size={json.dumps(list(plan.crop))}")
    overrides = ("model.encoder_weights=none", *sizes, *plan.model_overrides, *extra)
    return get_config(RECIPE, overrides)


def _estimate(
    plan: Plan, compiled: bool, full: tuple[float, float], smoke: tuple[float, float]
) -> float:
    """Expected seconds of a case: ``(eager, compiled)`` of the full or the smoke plan."""
    return (smoke if plan.smoke else full)[int(compiled)]


# -- 1. training through train() -------------------------------------------------------------
def train_cases(plan: Plan, ctx: Context) -> list[Case]:
    """Fused and explicit ISA, eager and compiled, bf16 autocast: one ``train()`` run each;
    and the fused one with the relation blocks checkpointed (``checkpoint_attention``)."""
    compiled_too = (False, True) if plan.compile else (False,)
    runs = [(impl, False, c) for c in compiled_too for impl in ("fused", "explicit")]
    runs.insert(2, ("fused", True, False))  # (impl, checkpoint_attention, compile)
    cases = []
    for impl, checkpoint, compiled in runs:
        tag = f"{impl} checkpoint" if checkpoint else impl
        name = f"train {tag} {'compiled' if compiled else 'eager'}"
        run = partial(_train_case, plan, ctx, impl, compiled, name, checkpoint)
        estimate = _estimate(plan, compiled, full=(20, 75), smoke=(6, 25))
        cases.append(Case("train", name, run, estimate, compiled))
    return cases


def _train_case(
    plan: Plan, ctx: Context, impl: str, compiled: bool, name: str, checkpoint: bool = False
) -> dict[str, Any]:
    n = plan.train_iters
    cfg = recipe_config(
        plan,
        (
            f"data_root={ctx.cityscapes()}",
            f"model.decoder_attn_impl={impl}",
            f"compile={json.dumps(compiled)}",
            f"checkpoint_attention={json.dumps(checkpoint)}",
            "amp=true",
            f"iters={n}",
            f"eval_interval={n}",
            f"ckpt_interval={n}",
            f"log_interval={n}",
            f"workers={plan.workers}",
        ),
    )
    run_dir = ctx.scratch / name.replace(" ", "-")
    t0 = time.perf_counter()
    try:
        result = train(cfg, run_dir, progress=False)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        free(plan.device)
    spi = result["sec_per_iter"]
    cuda = torch.device(plan.device).type == "cuda"
    return {
        "impl": impl,
        "compile": compiled,
        "checkpoint_attention": checkpoint,
        "amp": str(amp_dtype(cfg, torch.device(plan.device))).replace("torch.", ""),
        "encoder": cfg.model["encoder_name"],
        "crop": list(cfg.crop_size),
        "batch_per_gpu": cfg.batch_size,
        "iters": n,
        "timed_iters": n - min(5, n // 4),
        "sec_per_iter": round(spi, 4),
        "images_per_s": round(cfg.batch_size / spi, 2),
        "peak_memory_gib": round(result["peak_memory_bytes"] / GiB, 3),
        "memory_method": (
            "torch.cuda.max_memory_allocated over the training iterations"
            if cuda
            else "peak RSS of the whole process (grows over the run)"
        ),
        "wall_s": round(time.perf_counter() - t0, 1),
        "workers": plan.workers,
    }


# -- 2. whole-image inference ----------------------------------------------------------------
def inference_cases(plan: Plan, ctx: Context) -> list[Case]:
    """The fused R-50-D8 on whole images: fp32 and bf16, eager and compiled."""
    cases = []
    for compiled in (False, True) if plan.compile else (False,):
        for dtype in ("fp32", "bf16") if not compiled else ("bf16", "fp32"):
            name = f"inference {dtype} {'compiled' if compiled else 'eager'}"
            run = partial(_inference_case, plan, dtype, compiled)
            estimate = _estimate(plan, compiled, full=(8, 45), smoke=(3, 12))
            cases.append(Case("inference", name, run, estimate, compiled))
    return cases


def _inference_case(plan: Plan, dtype: str, compiled: bool) -> dict[str, Any]:
    device = torch.device(plan.device)
    torch.manual_seed(0)
    model = build_model(recipe_config(plan).model).to(device)
    model = fuse_for_inference(model).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, *plan.image, device=device)  # (1, 3, H, W) normalised images
    x = x.contiguous(memory_format=torch.channels_last)
    fn = torch.compile(model) if compiled else model

    def call(f: nn.Module = fn) -> torch.Tensor:
        with torch.inference_mode(), autocast(device, dtype):
            return f(x)

    t0 = time.perf_counter()
    out = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first = time.perf_counter() - t0
    diff = float((out.float() - call(model).float()).abs().max()) if compiled else None
    del out
    mem = PeakMemory(device).start()
    times = time_runs(call, plan.runs, plan.warmup, device)
    growth = mem.growth()
    median = statistics.median(times)
    result = {
        "dtype": dtype,
        "compile": compiled,
        "image": list(plan.image),
        "batch": 1,
        "images_per_s": round(1 / median, 2),
        "median_ms": round(1000 * median, 2),
        "first_call_s": round(first, 2),
        "peak_growth_mib": round(growth / MiB, 1),
        "memory_method": mem.method,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / GiB, 3)
    if diff is not None:
        result["max_abs_diff_vs_eager"] = diff
    del model, fn
    free(plan.device)
    return result


# -- graph breaks ----------------------------------------------------------------------------
def graph_break_cases(plan: Plan, ctx: Context) -> list[Case]:
    """Graphs and graph breaks of the decoder and the model (dynamo capture, no codegen)."""
    cases = [
        Case("graph_breaks", f"decoder {impl} train", partial(_decoder_breaks, plan, impl), 5)
        for impl in ("fused", "explicit")
    ]
    cases.append(Case("graph_breaks", "decoder fused for inference", partial(_fused_breaks, plan)))
    cases.append(Case("graph_breaks", "decoder over sizes", partial(_recompiles, plan)))
    cases.append(Case("graph_breaks", "model train", partial(_model_breaks, plan, False), 20))
    cases.append(
        Case("graph_breaks", "model fused for inference", partial(_model_breaks, plan, True), 20)
    )
    return cases


def _decoder(plan: Plan, impl: str) -> tuple[nn.Module, torch.Tensor]:
    cfg = dict(HEAD if plan.head is None else plan.head)
    torch.manual_seed(0)
    dec = build_decoder(f"isa-{impl}", cfg, mode="train").to(plan.device)  # the plain ISA head
    x = torch.randn(2, cfg["in_channels"], *plan.target_feature, device=plan.device)
    return dec, x  # x: (2, Cin, h, w)


def _decoder_breaks(plan: Plan, impl: str) -> dict[str, Any]:
    dec, x = _decoder(plan, impl)
    return {"size": list(plan.target_feature), **graph_breaks(dec.train(), x)}


def _fused_breaks(plan: Plan) -> dict[str, Any]:
    dec, x = _decoder(plan, "fused")
    with torch.no_grad():
        out = graph_breaks(fuse_for_inference(dec), x)
    return {"size": list(plan.target_feature), **out}


def _recompiles(plan: Plan) -> dict[str, Any]:
    dec, x = _decoder(plan, "fused")
    xs = [x.new_zeros(1, x.shape[1], h, w) for h, w in plan.recompile_sizes]
    return graphs_over_sizes(dec.eval(), xs)


def _model_breaks(plan: Plan, fused: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = recipe_config(plan)
    model = build_model(cfg.model).to(plan.device)
    if fused:
        x = torch.randn(1, 3, *plan.image, device=plan.device)  # (1, 3, H, W)
        with torch.no_grad():
            out = graph_breaks(fuse_for_inference(model), x)
    else:
        x = torch.randn(cfg.batch_size, 3, *plan.crop, device=plan.device)  # (B, 3, h, w)
        out = graph_breaks(model.train().forward_train, x)
    del model
    free(plan.device)
    return {"input": list(x.shape), **out}


# -- SyncBatchNorm ---------------------------------------------------------------------------
def sync_bn_cases(plan: Plan, ctx: Context) -> list[Case]:
    """SyncBatchNorm in a one-process group: NCCL on CUDA, Gloo on the CPU."""
    return [Case("sync_bn", "sync_bn", partial(_sync_bn, plan), 5)]


def _sync_bn(plan: Plan) -> dict[str, Any]:
    """SyncBatchNorm against BatchNorm2d in a one-process group (outputs, gradients, stats).

    With one process, ``SyncBatchNorm.forward`` falls back to plain batch norm, so on CUDA
    the synchronised path (statistics gathered over the group) runs through the autograd
    function the module calls with several processes. On the CPU the module's own forward is
    called, and the error it raises is recorded (it needs CUDA).
    """
    device = torch.device(plan.device)
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            init_method=f"file://{tmp}/store",
            rank=0,
            world_size=1,
            **({"device_id": device} if cuda else {}),
        )
        try:
            return _compare_sync_bn(plan, device)
        finally:
            dist.destroy_process_group()


def _compare_sync_bn(plan: Plan, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    b, c, h, w = plan.bn_shape
    bn = nn.BatchNorm2d(c).to(device).train()
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(bn)).train()
    x = torch.randn(b, c, h, w, device=device) * 3 + 1  # (B, C, H, W)
    grad = torch.randn_like(x)
    result: dict[str, Any] = {"shape": [b, c, h, w], "backend": dist.get_backend()}
    if device.type != "cuda":
        try:
            sync(x)
            result["forward"] = "ran"
        except ValueError as e:
            result["forward"] = f"needs CUDA: {e}"
        return result
    from torch.nn.modules._functions import SyncBatchNorm as SyncBatchNormFunction

    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = bn(xa)
    ya.backward(grad)
    args = (sync.weight, sync.bias, sync.running_mean, sync.running_var, sync.eps, sync.momentum)
    yb = SyncBatchNormFunction.apply(xb, *args, dist.group.WORLD, 1)
    yb.backward(grad)
    pairs = {
        "output": (ya, yb),
        "input_grad": (xa.grad, xb.grad),
        "weight_grad": (bn.weight.grad, sync.weight.grad),
        "running_mean": (bn.running_mean, sync.running_mean),
        "running_var": (bn.running_var, sync.running_var),
    }
    result["max_abs_diff"] = {k: float((a - b).abs().max()) for k, (a, b) in pairs.items()}
    result["forward"] = "synchronised (NCCL all-gather of the batch statistics)"
    return result
