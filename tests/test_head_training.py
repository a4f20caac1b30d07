"""Training learns a head's loss terms and training state from the head alone.

``TwoOutputHead`` is registered here only: it trains on two outputs (as mmseg's DAHead trains
on three) with ``loss_weights = {"out": 1.0, "extra": 0.5}``, and keeps a buffer updated by
momentum in training (as mmseg's EMAHead keeps its bases), which the trainer averages across
processes after every optimizer step.
"""

from __future__ import annotations

import datetime
import math
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from training_helpers import TINY, one_thread  # noqa: F401 (an autouse fixture)

# Only what the spawned processes need at import (they import this file): the training
# tests import the trainer themselves.
from isa_explorer import heads
from isa_explorer.distributed import DistInfo, average_training_state
from isa_explorer.heads.protocol import Head, HeadConfig

#: How long a process of the two-process test waits for the other.
WAIT = datetime.timedelta(seconds=120)


class TwoOutputHead(Head):
    name = "two-output-test"
    loss_weights = {"out": 1.0, "extra": 0.5}
    state_calls = 0  # calls of training_state, by any instance

    def __init__(self, in_channels: int, classes: int):
        super().__init__()
        self.conv_seg = nn.Conv2d(in_channels, classes, 1)
        self.extra = nn.Conv2d(in_channels, classes, 1)
        self.register_buffer("bases", torch.zeros(4))

    @classmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> TwoOutputHead:
        return cls(in_channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(x)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # a momentum update, as EMAHead's bases
            self.bases.mul_(0.9).add_(0.1 * x.mean())
        return {"out": self.conv_seg(x), "extra": self.extra(x)}

    def training_state(self) -> list[torch.Tensor]:
        TwoOutputHead.state_calls += 1
        return [self.bases]


@pytest.fixture
def two_output_head():
    heads.register(TwoOutputHead)
    TwoOutputHead.state_calls = 0
    try:
        yield TwoOutputHead
    finally:
        heads.unregister(TwoOutputHead.name)


def _ce(logits: torch.Tensor, target: torch.Tensor) -> float:
    """mmseg's averaging: summed over labelled pixels, divided by all pixels."""
    return (
        float(F.cross_entropy(logits, target, ignore_index=255, reduction="sum")) / target.numel()
    )


def test_loss_terms_and_weights_come_from_the_head(two_output_head) -> None:
    from isa_explorer import ISANet
    from isa_explorer.training import loss_weights, segmentation_loss

    torch.manual_seed(0)
    model = ISANet(
        encoder_name="resnet18", encoder_weights=None, classes=3, head=two_output_head.name,
        aux_head=True,
    )  # fmt: skip
    x, target = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    target[0, :16] = 255
    with torch.no_grad():
        outputs = model.forward_train(x)
    assert set(outputs) == {"out", "extra", "aux"}
    weights = loss_weights(model, 0.4)
    assert weights == {"out": 1.0, "extra": 0.5, "aux": 0.4}
    total, parts = segmentation_loss(outputs, target, weights, 255)
    assert set(parts) == {"main", "extra", "aux"}  # the logged names
    for name, key in (("main", "out"), ("extra", "extra"), ("aux", "aux")):
        assert math.isclose(float(parts[name]), _ce(outputs[key], target), rel_tol=1e-5)
    expected = _ce(outputs["out"], target) + 0.5 * _ce(outputs["extra"], target)
    expected += 0.4 * _ce(outputs["aux"], target)
    assert math.isclose(float(total), expected, rel_tol=1e-5)
    # An output without a weight is a mistake of the head's, named as such.
    with pytest.raises(KeyError, match="'extra'.*loss_weights"):
        segmentation_loss(outputs, target, {"out": 1.0, "aux": 0.4}, 255)


def test_training_runs_a_multi_output_head_and_visits_its_state(two_output_head, tmp_path) -> None:
    from isa_explorer.configs import get_config
    from isa_explorer.training import train

    cfg = get_config("synthetic-context", [*TINY, f"model.head={two_output_head.name}", "iters=2"])
    train(cfg, tmp_path / "run", progress=False)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "(main " in log and " extra " in log  # the head's part is logged by its name
    assert two_output_head.state_calls == 2  # once after each optimizer step


def _average_worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=WAIT
    )
    heads.register(TwoOutputHead)
    try:
        model = nn.Module()
        model.decoder = TwoOutputHead(2, 3)
        model.decoder.bases.copy_(torch.arange(4.0) * (rank + 1))  # rank 0: 0..3, rank 1: 0..6
        average_training_state(model, DistInfo(rank, world, rank, torch.device("cpu")))
        torch.save(model.decoder.bases, f"{out}{rank}.pt")
    finally:
        heads.unregister(TwoOutputHead.name)
        dist.destroy_process_group()


def test_training_state_is_averaged_across_two_gloo_processes(tmp_path: Path) -> None:
    out, store = str(tmp_path / "bases"), str(tmp_path / "store")
    # Rank 1 in a spawned process, rank 0 here: one process to start instead of two.
    other = mp.get_context("spawn").Process(target=_average_worker, args=(1, 2, store, out))
    other.start()
    try:
        _average_worker(0, 2, store, out)
    finally:
        other.join(WAIT.total_seconds())
    assert other.exitcode == 0
    for rank in range(2):
        assert torch.equal(torch.load(f"{out}{rank}.pt"), torch.arange(4.0) * 1.5)
    # A world of one leaves the state as it is.
    model = nn.Module()
    model.decoder = TwoOutputHead(2, 3)
    model.decoder.bases.fill_(2.0)
    average_training_state(model, DistInfo(0, 1, 0, torch.device("cpu")))
    assert torch.equal(model.decoder.bases, torch.full((4,), 2.0))


def _logged_losses(log: str) -> list[tuple[float, dict[str, float]]]:
    """``(total, {part: value})`` of every ``iter I/N loss X (part V ...)`` line of a run's log."""
    found = re.findall(r"iter \d+/\d+ loss (\S+) \(([^)]*)\)", log)
    return [(float(total), dict(_pairs(parts.split()))) for total, parts in found]


def _pairs(words: list[str]) -> list[tuple[str, float]]:
    return [(words[i], float(words[i + 1])) for i in range(0, len(words), 2)]


@pytest.mark.slow
@pytest.mark.parametrize("head", ["nl", "cc", "da", "gc", "ema"])
def test_each_context_head_trains_saves_and_loads(head, tmp_path, monkeypatch) -> None:
    """Two steps of a tiny run per mmseg context head: its loss terms are logged by name (DA's
    pam and cam) and summed with the head's weights, EMA's bases move by momentum, and the
    saved model loads and predicts."""
    from isa_explorer.configs import get_config
    from isa_explorer.pretrained import load_model
    from isa_explorer.training import loop, train

    initial: dict[str, torch.Tensor] = {}  # the state of the model train() builds, as built
    build = loop.build_model

    def build_and_keep(*args):
        model = build(*args)
        initial.update({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(loop, "build_model", build_and_keep)
    options = '{"ema_channels": 32, "num_bases": 8}' if head == "ema" else "{}"
    overrides = [*TINY, f"model.head={head}", f"model.head_options={options}", "iters=2"]
    train(get_config("synthetic-context", overrides), tmp_path / "run", progress=False)
    weights = heads.get(head).loss_weights
    logged = _logged_losses((tmp_path / "run" / "log.txt").read_text())
    assert len(logged) == 2
    for total, parts in logged:  # "out" is logged as "main"; 4 decimals each
        assert set(parts) == {"main" if k == "out" else k for k in weights}
        expected = sum(w * parts["main" if k == "out" else k] for k, w in weights.items())
        assert math.isclose(total, expected, abs_tol=1e-3), (total, parts)
    if head == "da":  # mmseg's DAHead: pam_cam, pam and cam, each a cross-entropy of weight 1
        assert weights == {"out": 1.0, "pam": 1.0, "cam": 1.0}
    model = load_model(tmp_path / "run" / "final")
    assert model.head == head
    if head == "ema":
        before, after = initial["decoder.ema_module.bases"], model.decoder.ema_module.bases
        assert before.shape == after.shape == (1, 32, 8)
        assert not torch.equal(before, after)  # updated by momentum in training
    with torch.no_grad():
        assert model.predict(torch.randn(1, 3, 64, 80)).isfinite().all()
