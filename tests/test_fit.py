"""train/fit.py and train(): learning, exact resume after SIGKILL, DDP, saved configs, nan stop."""

from __future__ import annotations

import json
import math
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from training_helpers import TINY, one_thread  # noqa: F401 (an autouse fixture)

from isa_explorer.configs import get_config
from isa_explorer.data import get_info
from isa_explorer.distributed import SYNC_BN_NEEDS_CUDA
from isa_explorer.training import NonFiniteLossError, build_model, load_checkpoint, train

# The generated Cityscapes folder of the GPU check (benchmarks/gpu/fake_cityscapes.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
from fake_cityscapes import write_fake_cityscapes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIT = ROOT / "train" / "fit.py"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _fit_cmd(*args: str) -> list[str]:
    sets = [x for s in TINY for x in ("--set", s)]
    return [sys.executable, str(FIT), "--no-progress", *sets, *args]


def _weights(run_dir: Path, sub: str = "final") -> dict[str, torch.Tensor]:
    return load_file(run_dir / sub / "model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_training_lowers_the_loss_and_writes_the_run_dir(tmp_path: Path) -> None:
    # Two scenes and batch 2: the same images every iteration (flipped or not) -> overfit.
    cfg = get_config(
        "synthetic-context",
        [*TINY, "synthetic.train_length=2", "iters=8", "lr=0.05", "eval_interval=4"]
        + ["channels_last=true"],
    )
    result = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    losses = [loss for _, loss in json.loads((run / "metrics.json").read_text())["losses"]]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.8 * losses[0], losses
    assert set(result) == {
        "iters",
        "best_mIoU",
        "final_metrics",
        "sec_per_iter",
        "peak_memory_bytes",
        "run_dir",
    }
    assert result["iters"] == 8 and result["sec_per_iter"] > 0
    assert result["peak_memory_bytes"] > 50 * 2**20  # at least torch's own footprint
    assert 0 <= result["final_metrics"]["mIoU"] <= result["best_mIoU"] <= 1
    for name in ("config.json", "log.txt", "metrics.json", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    for sub in ("best", "final"):
        assert (run / sub / "model.safetensors").is_file() and (run / sub / "config.json").is_file()
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert "mIoU" in (run / "log.txt").read_text()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 8
    assert {"torch", "cuda", "numpy", "python"} <= set(state["rng"][0])
    assert state["sampler"] == [{"epoch": 8, "batch": 0}]  # 1 batch per epoch
    # The saved model reloads with the dataset's class names.
    from isa_explorer import ISANet

    model = ISANet.from_pretrained(run / "final")
    assert model.class_names[3] == "object-red-context"
    # Re-running into the same directory without --resume is refused.
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, run, progress=False)


def test_sigkill_then_resume_equals_uninterrupted_run_of_the_saved_config(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    # 6 scenes / batch 2 = 3 batches per epoch: checkpoints land mid-epoch too.
    extra = ["--set", "iters=8", "--set", "ckpt_interval=2", "--set", "eval_interval=3"]
    proc = subprocess.Popen(
        _fit_cmd("--config", "synthetic-context", "--run-dir", str(killed), *extra),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert ckpt.exists(), err.decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "final").exists()
    killed_at = load_checkpoint(ckpt)["iteration"]
    assert 2 <= killed_at < 8

    done = subprocess.run(
        [sys.executable, str(FIT), "--no-progress", "--resume", "--run-dir", str(killed)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {ckpt} at iteration {killed_at}" in (killed / "log.txt").read_text()

    # The config.json the killed run saved reproduces it from scratch, in this process.
    cfg = get_config(str(killed / "config.json"))
    assert cfg.iters == 8 and cfg.model["decoder_channels"] == 32
    train(cfg, tmp_path / "straight", progress=False)
    assert _max_diff(_weights(killed), _weights(tmp_path / "straight")) <= 1e-6
    resumed = json.loads((killed / "metrics.json").read_text())
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert [h["iter"] for h in resumed["history"]] == [3, 6, 8]
    assert resumed["history"][-1]["mIoU"] == pytest.approx(straight["history"][-1]["mIoU"])


#: The head of the DDP run, and its settings: ISANet, and EMANet (whose bases, a buffer updated
#: by momentum in training, the processes must agree on).
DDP_HEADS = {"isa": [], "ema": ["model.head=ema", 'model.head_options={"ema_channels": 16}']}


@pytest.mark.parametrize(
    "head",
    ["isa", pytest.param("ema", marks=pytest.mark.slow)],  # slow: one more torchrun
)
def test_two_process_gloo_ddp_keeps_the_replicas_identical(tmp_path: Path, head: str) -> None:
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    sets = ["iters=3", "eval_interval=3", *DDP_HEADS[head]]
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        *_fit_cmd("--config", "synthetic-context", "--run-dir", str(run), "--debug-rank-weights")[
            1:
        ],
        *(x for item in sets for x in ("--set", item)),
    ]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # Plain BatchNorm on CPU processes, said so; the running statistics are averaged.
    assert SYNC_BN_NEEDS_CUDA in (run / "log.txt").read_text()
    ranks = [torch.load(run / "debug" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    bn_means = [k for k in ranks[0] if k.endswith("running_mean")]
    assert bn_means and not torch.equal(
        ranks[0][bn_means[0]], torch.zeros_like(ranks[0][bn_means[0]])
    )
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # Both ranks evaluated their half of the val set; the metrics count all of it.
    assert metrics["final_metrics"]["num_images"] == 2
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert len(state["rng"]) == 2 and len(state["sampler"]) == 2
    # Each rank sees 3 of the 6 scenes: 1 batch of 2 per epoch.
    assert state["sampler"] == [{"epoch": 3, "batch": 0}] * 2
    assert _max_diff(ranks[0], _weights(run)) == 0.0
    if head == "ema":  # the bases moved by momentum, in step on both processes (checked above)
        cfg = get_config(str(run / "config.json"))
        torch.manual_seed(cfg.seed)  # the initial model, as train() builds it
        initial = build_model(cfg.model, get_info(cfg.dataset)).state_dict()
        frozen = "decoder.ema_mid_conv.conv.weight"  # never trained: the same as built
        assert torch.equal(ranks[0][frozen], initial[frozen])
        bases = "decoder.ema_module.bases"
        assert not torch.equal(ranks[0][bases], initial[bases])


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    cfg = get_config(
        "synthetic-context", [*TINY, "iters=20", "lr=1e30", "ckpt_interval=1", "eval_interval=50"]
    )
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"nan/inf at iteration \d+.*lr=1e\+30") as err:
        train(cfg, run, progress=False)
    assert "last good checkpoint" in str(err.value)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert str(run / "checkpoints" / "last.pt") == err.value.checkpoint
    assert 1 <= state["iteration"] < err.value.iteration
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert "nan/inf" in (run / "log.txt").read_text()
    assert not (run / "final").exists()


def test_fit_cli_bad_input_is_a_clear_error(tmp_path: Path, capsys) -> None:
    main = runpy.run_path(str(FIT))["main"]
    assert main(["--config", "no-such-config"]) == 2
    err = capsys.readouterr().err
    assert "unknown config 'no-such-config'" in err and "synthetic-context" in err
    assert main(["--config", "synthetic-context", "--set", "no_such_key=1"]) == 2
    assert "unknown config key 'no_such_key'" in capsys.readouterr().err
    assert main(["--config", "synthetic-context", "--encoder-weights", "missing.pt"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--resume"]) == 2
    assert "--resume --run-dir" in capsys.readouterr().err


def test_encoder_weights_from_a_local_file(tmp_path: Path) -> None:
    kwargs = dict(encoder_name="resnet18", encoder_weights=None, classes=7, decoder_channels=32)
    kwargs["decoder_isa_channels"] = 16
    torch.manual_seed(1)
    source = build_model(kwargs)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, path)
    torch.manual_seed(2)
    model = build_model({**kwargs, "encoder_weights": str(path)})
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    # A whole-model file (encoder.* keys) works too, via torch.load(weights_only=True).
    whole = tmp_path / "isanet.pt"
    torch.save(source.state_dict(), whole)
    model = build_model({**kwargs, "encoder_weights": str(whole)})
    assert torch.equal(model.encoder.state_dict()["conv1.weight"], source.encoder.conv1.weight)
    # A file for another architecture is refused with the mismatching keys named.
    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3), "other.bias": torch.zeros(3)}, wrong)
    with pytest.raises(RuntimeError, match="does not fit encoder.*missing keys"):
        build_model({**kwargs, "encoder_weights": str(wrong)})
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model({**kwargs, "encoder_weights": str(tmp_path / "absent.safetensors")})


def test_loss_matches_mmseg_averaging() -> None:
    from isa_explorer.training import segmentation_loss

    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0] = 255  # a fully unlabelled image counts zero but still divides
    weights = {"out": 1.0, "aux": 0.4}
    total, parts = segmentation_loss({"out": logits, "aux": logits}, target, weights, 255)
    ce = torch.nn.functional.cross_entropy(logits[1:], target[1:], reduction="sum") / 32
    assert math.isclose(float(parts["main"]), float(ce), rel_tol=1e-6)
    assert math.isclose(float(total), 1.4 * float(ce), rel_tol=1e-6)


def test_imagenet_download_failure_suggests_none_or_a_file(monkeypatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    # No network and an empty cache: the download fails as on a machine without internet.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    kwargs = dict(encoder_name="tu-resnet10t", classes=7, decoder_channels=32)
    with pytest.raises(RuntimeError, match="could not load the 'imagenet' weights.*none.*path"):
        build_model({**kwargs, "encoder_weights": "imagenet", "decoder_isa_channels": 16})


def test_published_recipe_trains_on_a_cityscapes_layout(tmp_path: Path) -> None:
    # The 769x769 recipe (aux head, align_corners, slide eval) shrunk to a tiny model and crop.
    root = write_fake_cityscapes(tmp_path / "cityscapes", {"train": 4, "val": 1}, (64, 128))
    cfg = get_config(
        "isanet_r50-d8_4xb2-40k_cityscapes-769x769",
        [
            f"data_root={root}",
            "model.encoder_name=resnet18",
            "model.encoder_weights=none",
            "model.decoder_channels=32",
            "model.decoder_isa_channels=16",
            "model.aux_channels=16",
            "scale=[64, 128]",
            "crop_size=[48, 48]",
            "eval_crop=[48, 48]",
            "eval_stride=[32, 32]",
            "iters=2",
            "workers=0",
        ],
    )
    assert cfg.eval_mode == "slide" and cfg.model["aux_head"] and cfg.amp and cfg.channels_last
    result = train(cfg, tmp_path / "run", progress=False)
    metrics = result["final_metrics"]
    assert metrics["num_images"] == 1 and len(metrics["IoU"]) == 19
    assert metrics["class_names"][13] == "car"
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "aux" in log  # the aux loss is logged
    assert "amp: torch.bfloat16 autocast on cpu" in log  # the recipe's amp runs on the CPU too
