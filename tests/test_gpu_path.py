"""The GPU path on the CPU: bf16 autocast training and exact resume, torch.compile against
eager, channels_last, SyncBatchNorm, and the GPU check's smoke run.

Everything runs through the code ``train/fit.py`` and ``benchmarks/gpu/run.py`` run; only
the parts that need CUDA (SyncBatchNorm's synchronised forward, NCCL) are left to the GPU
check, and the test below shows why they cannot run here.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from conftest import small_isanet
from safetensors.torch import load_file
from torch import nn
from training_helpers import TINY, one_thread  # noqa: F401 (an autouse fixture)

from isa_explorer.bench.decoder import measure_decoder
from isa_explorer.configs import get_config
from isa_explorer.data import build_dataset
from isa_explorer.distributed import SYNC_BN_NEEDS_CUDA, DistInfo, sync_batchnorm
from isa_explorer.heads.isa import ISADecoder
from isa_explorer.models.fusion import fuse_for_inference
from isa_explorer.training import checkpoint, train
from isa_explorer.training.steps import amp_dtype

ROOT = Path(__file__).resolve().parents[1]
#: The GPU check: a script of the repository whose modules import one another by name.
GPU_CHECK = ROOT / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU_CHECK))
import run as gpu_run  # noqa: E402
from fake_cityscapes import FULL_SIZE, write_fake_cityscapes  # noqa: E402
from graph_breaks import graph_breaks  # noqa: E402
from plan import Case, smoke_plan  # noqa: E402
from run import _run_case, run_check  # noqa: E402


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of ``a`` from ``b`` over the largest magnitude of ``b``."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# -- bf16 autocast -----------------------------------------------------------------------------
def test_bf16_autocast_training_lowers_the_loss_and_resumes_exactly(tmp_path, monkeypatch):
    sets = [*TINY, "synthetic.train_length=2", "iters=8", "lr=0.05", "eval_interval=8"]
    cfg = get_config("synthetic-context", [*sets, "amp=true", "ckpt_interval=4"])
    assert amp_dtype(cfg, torch.device("cpu")) == torch.bfloat16
    # Keep a copy of the checkpoint written at iteration 4 (the run overwrites it at 8).
    save = checkpoint.save_checkpoint

    def save_and_copy(path, state):
        save(path, state)
        if state["iteration"] == 4:
            shutil.copy(path, tmp_path / "iter4.pt")

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_and_copy)
    straight = tmp_path / "straight"
    train(cfg, straight, progress=False)
    assert "amp: torch.bfloat16 autocast on cpu" in (straight / "log.txt").read_text()
    losses = [loss for _, loss in json.loads((straight / "metrics.json").read_text())["losses"]]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < 0.8 * losses[0], losses

    # Resume from iteration 4 in another directory: the same weights, bit for bit.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "iter4.pt", resumed / "checkpoints" / "last.pt")
    train(cfg, resumed, resume=True, progress=False)
    assert "at iteration 4" in (resumed / "log.txt").read_text()
    a, b = _final(straight), _final(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key

    # Autocast is in effect: the float32 run of the same config ends elsewhere.
    fp32 = get_config("synthetic-context", [*sets, "amp=false"])
    train(fp32, tmp_path / "fp32", progress=False)
    assert _max_diff(a, _final(tmp_path / "fp32")) > 1e-4


# -- torch.compile -----------------------------------------------------------------------------
def test_compiled_decoder_matches_eager_without_graph_breaks():
    torch.manual_seed(0)
    # No dropout: compiled code draws other random numbers than eager.
    decoder = ISADecoder(64, 5, 32, 16, (8, 8), dropout=0.0).train()
    x = torch.randn(2, 64, 20, 36)  # (B, Cin, h, w): padded to 24x40, the padding path runs
    for impl in ("fused", "explicit"):
        decoder.attn_impl = impl
        assert graph_breaks(decoder, x)["graph_breaks"] == 0, impl
    decoder.attn_impl = "fused"
    with torch.no_grad():
        fused = fuse_for_inference(copy.deepcopy(decoder))
        assert graph_breaks(fused, x)["graph_breaks"] == 0

    # Training: logits and every parameter's gradient.
    compiled = copy.deepcopy(decoder)
    grad = torch.randn(2, 5, 20, 36)
    decoder(x).backward(grad)
    out = torch.compile(compiled)(x)
    out.backward(grad)
    # fp32 throughout; the compiled kernels sum in another order (BatchNorm statistics over
    # 2 x 20 x 36 positions, softmax, matmuls), and training-mode BatchNorm divides by the
    # batch's own deviations, which amplifies that: 2e-5 of the logits' range observed.
    assert _rel(out, decoder(x)) < 1e-4
    # Over all gradients at once: the value projections' biases have a zero gradient up to
    # rounding (softmax rows sum to 1 and BatchNorm removes any constant they add), so one
    # tensor's own scale would compare rounding noise with rounding noise.
    eager_grads = torch.cat([p.grad.flatten() for p in decoder.parameters()])
    compiled_grads = torch.cat([p.grad.flatten() for p in compiled.parameters()])
    assert _rel(compiled_grads, eager_grads) < 1e-4

    # Inference: the fused decoder (compiled: the whole map; eager: streamed).
    fused = fuse_for_inference(decoder)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fused)(x), fused(x), rtol=1e-4, atol=1e-5)


def test_whole_model_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = small_isanet(aux_head=True, aux_channels=16).train()
    x = torch.randn(2, 3, 64, 96)  # (B, 3, H, W)
    train_pass = graph_breaks(model.forward_train, x)
    assert train_pass["graph_breaks"] == 0 and train_pass["graphs"] == 1, train_pass
    with torch.no_grad():
        inference = graph_breaks(fuse_for_inference(model), x)
    assert inference["graph_breaks"] == 0 and inference["graphs"] == 1, inference


@pytest.mark.slow  # inductor builds a training graph: ~50 s on 2 cores with a cold cache
def test_compiled_training_through_train_matches_eager(tmp_path):
    # A ResNet-18 cut after its second stage (stride 8): a small graph for inductor on 2 cores.
    model = (
        'model={"encoder_name": "resnet18", "encoder_depth": 3, "encoder_weights": null, '
        '"encoder_output_stride": 8, "classes": 7, "decoder_channels": 32, '
        '"decoder_isa_channels": 16, "decoder_dropout": 0.0}'
    )
    sets = [*TINY, model, "iters=2", "eval_interval=2", "ckpt_interval=2", "lr=0.05"]
    eager = train(get_config("synthetic-context", sets), tmp_path / "eager", progress=False)
    compiled = get_config("synthetic-context", [*sets, "compile=true"])
    result = train(compiled, tmp_path / "compiled", progress=False)
    # Two fp32 SGD steps from the same weights; the compiled sums differ by ~1e-6 relative.
    assert _max_diff(_final(tmp_path / "eager"), _final(tmp_path / "compiled")) < 1e-4
    # The same predictions but for pixels at a near-tie of two classes.
    miou = eager["final_metrics"]["mIoU"]
    assert result["final_metrics"]["mIoU"] == pytest.approx(miou, abs=1e-3)

    # The model of that run, fused and compiled for inference, gives the eager logits.
    torch.manual_seed(0)
    from isa_explorer import ISANet

    fused = fuse_for_inference(ISANet.from_pretrained(tmp_path / "compiled" / "final"))
    x = torch.randn(1, 3, 96, 192)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fused)(x), fused(x), rtol=1e-4, atol=1e-4)


def test_fused_model_runs_under_bf16_autocast():
    torch.manual_seed(0)
    model = small_isanet(aux_head=True, aux_channels=16).eval()
    fused = fuse_for_inference(copy.deepcopy(model))
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain, fast = model(x), fused(x)
    assert fast.dtype == plain.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa (0.4% per rounding); over ~20 layers the logits stay
    # within a few percent of their range of the fp32 ones.
    scale = float(ref.abs().max())
    assert float((fast.float() - ref).abs().max()) < 0.03 * scale
    assert float((fast.float() - plain.float()).abs().max()) < 0.03 * scale


# -- channels_last -----------------------------------------------------------------------------
def test_channels_last_training_matches_contiguous_end_to_end(tmp_path):
    # No dropout: its mask is drawn in memory order, so it differs between the layouts.
    sets = [*TINY, "iters=2", "eval_interval=2", "ckpt_interval=2", "model.decoder_dropout=0.0"]
    cl = torch.channels_last
    maps: list[bool] = []  # channels-last input of every training conv on a (B, C, H, W) map
    weights: list[bool] = []  # channels-last weight of every training conv

    def record(module, args):
        if isinstance(module, nn.Conv2d) and module.training:
            weights.append(module.weight.is_contiguous(memory_format=cl))
            if args[0].dim() == 4:  # (the relation blocks' 1x1 convs also take (B, L, C) tokens)
                maps.append(args[0].is_contiguous(memory_format=cl))

    handle = nn.modules.module.register_module_forward_pre_hook(record)
    try:
        train(get_config("synthetic-context", [*sets, "channels_last=true"]), tmp_path / "cl")
    finally:
        handle.remove()
    assert len(maps) > 40 and all(maps), f"{maps.count(False)} of {len(maps)} inputs"
    assert all(weights), f"{weights.count(False)} of {len(weights)} weights"
    train(get_config("synthetic-context", [*sets, "channels_last=false"]), tmp_path / "nchw")
    # The same fp32 maths, the convolutions summing in another order. Training-mode
    # BatchNorm over batches of 2 amplifies those roundings step by step (measured: losses
    # 1e-7 and 5e-6 apart relatively at iterations 1 and 2, weights 3e-5 after one step and
    # 1.6e-3 after two); a layout mistake would change the very first loss.
    losses = [
        json.loads((tmp_path / d / "metrics.json").read_text())["losses"] for d in ("cl", "nchw")
    ]
    for (_, a), (_, b) in zip(*losses, strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    assert _max_diff(_final(tmp_path / "cl"), _final(tmp_path / "nchw")) < 1e-2


# -- SyncBatchNorm -----------------------------------------------------------------------------
def test_sync_batchnorm_converts_every_batchnorm_and_keeps_the_state():
    model = small_isanet(aux_head=True, aux_channels=16)
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    state = model.state_dict()
    cuda = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cuda", 0))
    converted, reason = sync_batchnorm(copy.deepcopy(model), cuda)
    assert reason is None and count > 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == count
    assert list(converted.state_dict()) == list(state)
    for key, value in converted.state_dict().items():
        assert torch.equal(value, state[key]), key
    # CPU processes keep BatchNorm and say why; one process needs nothing.
    cpu = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    assert sync_batchnorm(model, cpu) == (model, SYNC_BN_NEEDS_CUDA)
    one = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
    assert sync_batchnorm(model, one) == (model, None)


def test_sync_batchnorm_forward_needs_cuda_so_cpu_processes_keep_batchnorm(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        layer = nn.SyncBatchNorm(4).train()
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            layer(torch.randn(2, 4, 3, 3))
        assert layer.eval()(torch.randn(2, 4, 3, 3)).shape == (2, 4, 3, 3)  # running stats
    finally:
        dist.destroy_process_group()


# -- the GPU check -----------------------------------------------------------------------------
def test_the_gpu_check_is_a_script_of_the_repository_not_of_the_package():
    from isa_explorer.bench import cli

    assert "gpu" not in cli.BENCHMARKS
    package = Path(cli.__file__).parents[1]
    moved = ("bench/gpu*.py", "bench/graph_breaks.py")
    assert not [p for pattern in moved for p in package.glob(pattern)]
    assert (GPU_CHECK / "run.py").is_file() and (GPU_CHECK / "deps.py").is_file()


def test_fake_cityscapes_at_full_size_reads_as_cityscapes(tmp_path):
    root = write_fake_cityscapes(tmp_path / "cs", {"val": 1}, FULL_SIZE)
    image, mask = build_dataset("cityscapes", root, "val")[0]
    assert tuple(image.shape) == (3, *FULL_SIZE) and image.dtype == torch.uint8
    assert set(mask.unique().tolist()) == {0, 13}  # road and car train ids
    assert 0.15 < float((mask == 13).float().mean()) < 0.25  # half the rows, 50/128 of the columns


#: Packages the GPU machine lacks (besides segmentation-models-pytorch, carried there) that
#: the package uses elsewhere: the smoke run must not import them.
ABSENT_ON_THE_GPU_MACHINE = ("matplotlib", "gradio", "captum", "onnxruntime", "onnxscript")
#: ``python benchmarks/gpu/run.py ...``, then the top-level modules it imported, as JSON.
_RUN = """
import json, os, runpy, sys
modules = sys.argv.pop()
sys.argv = sys.argv[1:]  # [SCRIPT, ARGS...], as ``python SCRIPT ARGS...`` sees them
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as ``python SCRIPT`` puts its folder first
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    with open(modules, "w") as f:
        json.dump(sorted({m.split(".")[0] for m in sys.modules}), f)
"""


@pytest.mark.slow  # a subprocess running every section: ~55 s on 2 cores
def test_gpu_check_smoke_runs_end_to_end_without_what_the_gpu_machine_lacks(tmp_path):
    out = tmp_path / "gpu_check.json"
    modules = tmp_path / "modules.json"
    script = str(GPU_CHECK / "run.py")
    cmd = [sys.executable, "-c", _RUN, script, "--smoke", "--out", str(out), str(modules)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    imported = set(json.loads(modules.read_text()))
    assert not imported & set(ABSENT_ON_THE_GPU_MACHINE), imported & set(ABSENT_ON_THE_GPU_MACHINE)
    report = json.loads(out.read_text())
    assert report["status"] == "done" and report["smoke"] is True
    # Its time is recorded, not asserted: on a shared 2-core machine it varies 3x with the load.
    assert report["elapsed_s"] > 0
    assert list(report["sections"]) == [
        "train", "inference", "heads", "token_budget", "graph_breaks", "sync_bn"
    ]  # fmt: skip
    cases = {c["name"]: c for s in report["sections"].values() for c in s["cases"]}
    skipped = {n for n, c in cases.items() if c["status"] == "skipped"}
    assert skipped == set(report["plan"]["compile_skip"]), skipped
    assert all(c["status"] == "ok" for n, c in cases.items() if n not in skipped)
    for name in ("fused", "explicit", "fused checkpoint"):
        train_case = cases[f"train {name} eager"]
        assert train_case["sec_per_iter"] > 0 and train_case["amp"] == "bfloat16"
    assert cases["train fused checkpoint eager"]["checkpoint_attention"] is True
    assert cases["inference bf16 eager"]["images_per_s"] > 0
    assert cases["inference fp32 compiled"]["max_abs_diff_vs_eager"] < 1e-3
    assert cases["decoder fused train"]["graph_breaks"] == 0
    assert cases["sync_bn"]["forward"].startswith("needs CUDA: SyncBatchNorm expected input")
    heads = report["sections"]["heads"]["cases"]
    # 2 sizes x (3 attention modules x 2 passes + 3 decoders forward + 4 with backward)
    assert len(heads) == 2 * 13
    # Every target is stated, none judged in a smoke run.
    judged = [r for r in report["summary"] if r["target"]]
    assert judged and {r["met"] for r in judged} <= {"n/a (smoke)", "not measured"}
    assert {r["section"] for r in judged} >= {"train", "inference", "heads", "graph_breaks"}
    md = out.with_suffix(".md").read_text()
    assert "| section | case | measurement | value | target | met |" in md
    assert "n/a (smoke)" in md and "## Head benchmarks" in md


def test_gpu_check_records_failures_and_cases_past_the_time_limit(tmp_path, monkeypatch):
    out = tmp_path / "cut.json"
    plan = smoke_plan(compile=False)
    # The check's clock advances 0.25 s per reading, so with the smoke cases' 0.5 s estimates
    # and a 1 s limit the first case runs and the later ones are skipped however fast the
    # machine is (a real clock made this depend on the machine's speed).
    ticks = iter(range(10**6))
    monkeypatch.setattr(gpu_run, "time", SimpleNamespace(perf_counter=lambda: next(ticks) / 4))
    report = run_check(plan, out, ["token_budget"], time_limit=1.0)
    records = report["sections"]["token_budget"]["cases"]
    assert records[0]["status"] == "ok"
    assert records[-1]["status"] == "skipped" and "time limit" in records[-1]["reason"]
    assert json.loads(out.read_text())["sections"]["token_budget"]["cases"] == records
    # A case that raises is recorded with its error; the run goes on.
    bad = Case("heads", "bad path", partial(measure_decoder, "no-such-path", (8, 16)))
    record = _run_case(bad, plan, 0.0, None)
    assert record["status"] == "failed" and "unknown path 'no-such-path'" in record["error"]
