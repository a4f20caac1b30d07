# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Released checkpoints, training and evaluating like mmsegmentation
#
# **What this notebook teaches.** The steps after the data (notebook 5 shows the dataset
# layouts):
#
# - converting a released mmsegmentation ISANet checkpoint (`isa-explorer convert`),
#   shown on a small ISANet that mmsegmentation itself produced, with its logits as the check,
#   and loading the released models by name (`load_model("cityscapes-r50")`, the zoo);
# - the command lines that train on one or several GPUs (`train/fit.py`, `torchrun`), run here
#   for three iterations on the CPU;
# - evaluating like mmseg: whole image, sliding window, multi-scale + flip.
#
# Everything runs on the CPU in about a minute.

# %%
import copy
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from isa_explorer.convert import convert_checkpoint
from isa_explorer.data import build_dataset, get_info
from isa_explorer.evaluation import MS_SCALES, aug_inference, evaluate, format_table, inference
from isa_explorer.models import ISANet
from isa_explorer.pretrained import load_model

_ = torch.manual_seed(0)
workdir = tempfile.TemporaryDirectory(prefix="isa_checkpoints_")
ROOT = Path(workdir.name)

# %% [markdown]
# ## 1. Converting a released mmsegmentation checkpoint
#
# mmsegmentation published 16 ISANet models (R-50/R-101-D8 on Cityscapes, ADE20K and VOC) and
# 68 more of five other context heads (NL, CC, DA, GC, EMA); the list and URLs are in
# `docs/mmseg_checkpoints.md`. The converter reads a `.pth` safely
# (`torch.load(weights_only=True)`), infers depth, widths and classes from the weight shapes,
# renames the keys onto the smp/timm model and saves a model folder:
#
# ```bash
# isa-explorer convert \
#     isanet_r50-d8_512x1024_80k_cityscapes_20210901_074202-89384497.pth \
#     converted/isanet_r50_cityscapes --strict
# ```
#
# Those files are 200-400 MB, so here we convert a small ISANet that mmsegmentation 1.2.2 built
# itself (ResNetV1c-50 at 1/8 width, 7 classes, random weights), saved together with an image and
# the logits *mmseg* computed for it (`tests/fixtures/isanet_r50_small.pt`). First the command
# line, exactly as above:

# %%
fixture = Path("..") / "tests" / "fixtures" / "isanet_r50_small.pt"
out_dir = ROOT / "converted" / "isanet_r50_small"
cli = [sys.executable, "-m", "isa_explorer", "convert", str(fixture), str(out_dir), "--strict"]
print("$", " ".join(["isa-explorer", *cli[3:]]))  # the same as python -m isa_explorer ...
done = subprocess.run(cli, capture_output=True, text=True, check=True)
print(done.stdout)
print(sorted(p.name for p in out_dir.iterdir()))

# %% [markdown]
# The saved folder loads with `ISANet.from_pretrained`. The converted model must give mmseg's own
# logits for mmseg's image (normalised with the same mean/std), up to float32 rounding. How much
# rounding is "up to"? Two float32 programs sum in different orders, so they never agree
# exactly, and the gap grows with the logits' size. `parity` below runs *our* model in float64
# on the same weights (the exact function), measures what float32 costs our own model here, and
# accepts mmseg's logits within a few times that (or a few float32 ulps of the largest logit). A wrong key, a missing BatchNorm or
# padding on the wrong side misses by orders of magnitude more. The same conversion is available
# in Python as `convert_checkpoint(path)`, which also returns a report.

# %%
reference = torch.load(fixture, weights_only=True)
converted = ISANet.from_pretrained(str(out_dir)).eval()
image = reference["image_rgb_0_255"]  # (1, 3, 75, 90)


def decode_logits(model, image):
    features = model.encoder(model.normalize(image))
    return model.decoder(features[-1])  # (1, 7, 10, 12): 1/8 resolution


def parity(model):
    """mmseg's logits against ours in float64, beside what float32 costs our own model."""
    with torch.no_grad():
        exact = decode_logits(copy.deepcopy(model).double(), image.double())
        fp32_error = float((decode_logits(model, image) - exact).abs().max())
    gap = float((reference["decode_logits"] - exact).abs().max())
    floor = 16 * torch.finfo(torch.float32).eps * float(exact.abs().max())
    ok = gap <= 4 * max(fp32_error, floor)
    print(f"mmseg vs exact: {gap:.2e}; our float32 vs exact: {fp32_error:.2e}; ok: {ok}")
    return ok


assert parity(converted)

model, report = convert_checkpoint(fixture)
print(report)

# %% [markdown]
# ### By name: the zoo
#
# The released models also load by name, in one step: `load_model("cityscapes-r50")` (or
# `python app.py --checkpoint cityscapes-r50`) downloads the file once, checks its SHA-256,
# converts it as above and caches the model folder under `$ISA_EXPLORER_HOME`; every later use
# is offline. The names, with their published mIoU:

# %%
import hashlib
import json
import os

from isa_explorer import zoo

for entry in zoo.entries().values():
    alias = next((a for a in entry.aliases if "_" not in a), "")
    print(f"{entry.name:45s} {alias:16s} {entry.dataset_title:12.12s} mIoU {entry.miou:.2f}")

# %% [markdown]
# Without network access we can still run that whole path: `ISA_EXPLORER_ZOO_FILE` adds entries
# (for mirrors and private zoos), here one whose URL is the mmseg-made fixture on disk, and
# `ISA_EXPLORER_HOME` points the cache at a scratch folder. The first `load_model` downloads,
# verifies, converts and caches; the second only reads the cache.

# %%
digest = hashlib.sha256(fixture.read_bytes()).hexdigest()
private = ROOT / "my_zoo.json"
entry = {"name": "my-isanet-small", "url": fixture.resolve().as_uri(), "sha256": digest[:8]}
private.write_text(json.dumps([entry]))
os.environ["ISA_EXPLORER_ZOO_FILE"], os.environ["ISA_EXPLORER_HOME"] = str(private), str(ROOT)
by_name = load_model("my-isanet-small")
print("cached in", zoo.model_dir("my-isanet-small").relative_to(ROOT))
assert parity(by_name)
del os.environ["ISA_EXPLORER_ZOO_FILE"], os.environ["ISA_EXPLORER_HOME"]

# %% [markdown]
# ## 2. Training on one or several GPUs
#
# `train/fit.py` runs a recipe of `isa_explorer.configs` (every published schedule of ISANet,
# NonLocalNet, CCNet, DANet, GCNet and EMANet under mmseg's name, `folder` for your own data and
# the CPU recipe `synthetic-context`); `--set key=value` overrides any field.
# On real data:
#
# ```bash
# python train/fit.py --list                                   # the recipes
# # one GPU (the published recipes use 4 GPUs x batch 2/4; keep the total batch if you can)
# python train/fit.py --config isanet_r50-d8_4xb2-40k_cityscapes-512x1024 \
#     --data-root data/cityscapes --run-dir runs/cs-r50 --set batch_size=8
# # four GPUs of one machine (DDP, SyncBatchNorm): the published setting
# torchrun --nproc_per_node 4 train/fit.py --config isanet_r50-d8_4xb2-40k_cityscapes-512x1024 \
#     --data-root data/cityscapes --run-dir runs/cs-r50
# # two machines x 4 GPUs (run on both, with the first machine's address)
# torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
#     train/fit.py --config isanet_r101-d8_4xb4-160k_ade20k-512x512 --data-root data/ade
# # continue an interrupted run from its last checkpoint
# python train/fit.py --resume --run-dir runs/cs-r50
# ```
#
# Here: three iterations on the CPU of the `synthetic-context` recipe (the embedded dataset, so
# nothing needs downloading; notebook 5 runs the Cityscapes training pipeline on a fake copy, and the
# command is the same with `--config` and `--data-root` of a real dataset), with a tiny model and
# 96 x 192 scenes.

# %%
run_dir = ROOT / "runs" / "synthetic-tiny"
fit = [
    sys.executable, str(Path("..") / "train" / "fit.py"),
    "--config", "synthetic-context", "--run-dir", str(run_dir), "--no-progress",
]  # fmt: skip
tiny = [
    "iters=3", "batch_size=2", "synthetic.size=[96,192]", "synthetic.val_length=2",
    "model.encoder_name=tu-resnet10t", "model.decoder_channels=32",
    "model.decoder_isa_channels=16", "eval_interval=3", "ckpt_interval=3", "log_interval=1",
]  # fmt: skip
for item in tiny:
    fit += ["--set", item]
print("$", " ".join(["python", *fit[1:]]))
done = subprocess.run(fit, capture_output=True, text=True)
print(done.stdout[-1500:], done.stderr[-1500:], sep="\n")
assert done.returncode == 0, "training failed"
print(sorted(p.name for p in run_dir.iterdir()))

# %% [markdown]
# The run folder holds the effective `config.json` (reproduce the run with
# `--config runs/.../config.json`), `checkpoints/last.pt` (resume), the `best/` and `final/`
# model folders, `log.txt`, `metrics.json` and TensorBoard events
# (`tensorboard --logdir runs`).
#
# ## 3. Evaluating like mmsegmentation
#
# `isa_explorer.evaluation.evaluate` counts one confusion matrix over the whole split and reports
# mIoU, mAcc and aAcc, with three ways to predict:
#
# - `mode="whole"`: one forward pass per image;
# - `mode="slide"`: windows of `crop_size` every `stride` pixels, logits averaged where they
#   overlap (mmseg's test of the 769 x 769 Cityscapes models);
# - `scales=MS_SCALES, flip=True`: softmax averaged over six scales and their mirror images
#   (mmseg's "ms+flip" column).
#
# Three iterations taught the model next to nothing (it may well predict one class everywhere),
# so the metrics below only show the three modes at work; on a converted released checkpoint
# they follow the procedure behind mmseg's tables. Where the modes differ is in the class scores,
# printed after.

# %%
trained = load_model(run_dir)  # a run folder: its best/ model
info = get_info("synthetic-context")
val = build_dataset("synthetic-context", None, "val", length=2, seed=10_000, size=(96, 192))
val_loader = DataLoader(val, batch_size=1)
settings = {
    "whole": dict(mode="whole"),
    "slide 48x96 / 32x64": dict(mode="slide", crop_size=(48, 96), stride=(32, 64)),
    "ms+flip (0.5, 1, 1.5)": dict(scales=(0.5, 1.0, 1.5), flip=True),
}
for name, kwargs in settings.items():
    metrics = evaluate(trained, val_loader, num_classes=info.num_classes, progress=False, **kwargs)
    print(f"{name:24s} mIoU {100 * metrics['mIoU']:5.2f}  aAcc {100 * metrics['aAcc']:5.2f}")
print(format_table(metrics, info.class_names))

image, _ = val[0]
x = trained.normalize(image[None].float())  # (1, 3, 96, 192)
whole = inference(trained, x).softmax(1)
slide = inference(trained, x, mode="slide", crop_size=(48, 96), stride=(32, 64)).softmax(1)
ms_flip = aug_inference(trained, x, scales=MS_SCALES, flip=True)  # probabilities already
print("mmseg's ms scales:", MS_SCALES)
for name, p in (("slide", slide), ("ms+flip", ms_flip)):
    print(
        f"largest |p_{name} - p_whole| over the pixels and classes: {float((p - whole).abs().max()):.4f}"
    )
workdir.cleanup()  # remove the temporary folders

# %% [markdown]
# ## Exercises
#
# 1. Convert the fixture with `--down-factor 4 4`. The weights load (the block size has no
#    weights), but are the logits still mmseg's? Why?
# 2. Run `train/fit.py --resume --run-dir` on the finished run with `--set iters=6`: what does it
#    say, and why does a resumed run refuse to change `iters`?
# 3. Evaluate with `mode="slide"` and a window as large as the image. Is it equal to `whole`?
# 4. Train the tiny model for 30 iterations instead of 3 and compare the three evaluation modes
#    again: which one helps most on these scenes?
