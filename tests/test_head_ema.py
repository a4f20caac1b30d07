"""EMANet's head: parity with mmsegmentation 1.2.2's EMAHead, its EM stages, its maps, and the
momentum update of its bases in training (one process, and two gloo processes)."""

from __future__ import annotations

import datetime
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from parity import compare_to_reference

from isa_explorer import heads
from isa_explorer.heads import ema
from isa_explorer.heads.ema import EMAHead, em_stage
from isa_explorer.heads.protocol import HeadConfig

FIXTURES = Path(__file__).parent / "fixtures"
SIZES = ["1x64x20x27", "2x64x16x16"]
WAIT = datetime.timedelta(seconds=120)


@pytest.fixture(scope="module", params=SIZES)
def fixture(request) -> dict:
    return torch.load(FIXTURES / f"emahead_small_{request.param}.pt", weights_only=True)


def _head(d: dict) -> EMAHead:
    c = d["config"]
    head = EMAHead(
        c["in_channels"], c["num_classes"], c["channels"], c["ema_channels"], c["num_bases"],
        c["num_stages"], c["momentum"], c["dropout_ratio"],
    )  # fmt: skip
    head.load_state_dict(d["state_dict"], strict=True)
    return head.eval()


def _logits(head: EMAHead, x: torch.Tensor) -> torch.Tensor:
    return head(x).detach()


def test_matches_mmseg_in_float32(fixture):
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            parity = compare_to_reference(
                _logits, _head(fixture), (fixture["input"],), fixture["output"]
            )
        assert parity.ok, f"{grad=}: {parity}"
        assert parity.tolerance < 1e-4 * parity.scale, parity


def test_matches_mmseg_in_float64(fixture):
    head = _head(fixture).double()
    with torch.no_grad():
        out = head(fixture["input"].double())
    assert (out - fixture["output_float64"]).abs().max() < 1e-9


@pytest.mark.parametrize("defect", ["softmax over positions", "bases normalised over bases"])
def test_a_defect_in_the_em_step_breaks_parity(fixture, defect, monkeypatch):
    # The head's own em_stage runs, with one of its torch.nn.functional calls mutated. (L2
    # instead of L1 for z over positions would not show: it rescales each base's column of
    # zbar, and the bases' L2 normalisation removes any per-base factor.)
    mutated = types.SimpleNamespace(**vars(F))
    if defect == "softmax over positions":
        mutated.softmax = lambda t, dim: F.softmax(t, dim=1)
    else:
        mutated.normalize = lambda t, dim, p: F.normalize(t, dim=2 if p == 2 else dim, p=p)
    monkeypatch.setattr(ema, "F", mutated)
    parity = compare_to_reference(_logits, _head(fixture), (fixture["input"],), fixture["output"])
    assert not parity.ok, parity
    assert parity.max_abs_diff > 1e-2 * parity.scale, parity


def test_every_em_stage_and_the_module_match_mmseg(fixture):
    head, io = _head(fixture), fixture["module_io"]["ema_module"][0]
    assert torch.equal(head.ema_module.bases, fixture["ema_bases_init"])
    seen = []
    head.ema_module.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        head(fixture["input"])
        torch.testing.assert_close(seen[0], io["input"], atol=1e-5, rtol=0)  # ema_mid_conv's out
        flat, bases = io["input"].flatten(2), head.ema_module.bases.expand(len(seen[0]), -1, -1)
        for s in range(3):
            z, bases = em_stage(flat, bases)
            torch.testing.assert_close(z, fixture["softmax"][s]["value"], atol=1e-5, rtol=0)
            ref = fixture["normalize"][2 * s + 1]["value"]
            torch.testing.assert_close(bases, ref, atol=1e-5, rtol=0)
        out = head.ema_module(io["input"])
    torch.testing.assert_close(out, io["output"], atol=1e-5, rtol=0)
    assert torch.equal(head.ema_module.bases, fixture["ema_bases_init"])  # eval: unchanged


def test_maps_and_responsibilities_match_mmseg(fixture):
    with torch.no_grad():
        _, record = _head(fixture)(fixture["input"], return_attention=True)
    z_ref = fixture["softmax"][2]["value"][0].double()  # (N, K), the last stage
    zbar_ref = fixture["normalize"][4]["value"][0].double()  # z L1-normalised over positions
    h, w = record.size
    torch.testing.assert_close(record.z, fixture["ema_z_last"], atol=1e-5, rtol=0)
    torch.testing.assert_close(record.bases, fixture["ema_bases_last"], atol=1e-5, rtol=0)
    for fy in range(h):
        for fx in range(w):
            maps = EMAHead.query_maps(record, fx, fy)
            assert list(maps) == [m.name for m in EMAHead.maps]
            zq = EMAHead.query_values(record, fx, fy)["responsibilities"]
            torch.testing.assert_close(zq, z_ref[fy * w + fx], atol=1e-5, rtol=0)
            effective = (zbar_ref @ z_ref[fy * w + fx]).view(h, w)
            torch.testing.assert_close(maps["effective"], effective, atol=1e-5, rtol=0)
            order = zq.argsort(descending=True)  # the strongest bases first
            for rank in range(3):
                base = zbar_ref[:, order[rank]].view(h, w)
                torch.testing.assert_close(maps[f"base{rank + 1}"], base, atol=1e-5, rtol=0)
            for m in maps.values():
                assert m.dtype == torch.float64 and m.shape == (h, w)
                assert abs(float(m.sum()) - 1) < 1e-9
    reach = EMAHead.reach(record, 0, 0)
    assert set(reach) == {m.reach for m in EMAHead.maps} and reach["em"].all()


def _em_by_hand(feats: torch.Tensor, bases: torch.Tensor, stages: int) -> torch.Tensor:
    """The last stage's bases (B, C, K) of mmseg's loop, written out here."""
    x = feats.flatten(2)  # (B, C, N)
    mu = bases.repeat(len(x), 1, 1)
    for _ in range(stages):
        z = torch.softmax(torch.bmm(x.transpose(1, 2), mu), dim=2)  # (B, N, K)
        zbar = z / z.sum(dim=1, keepdim=True)
        mu = F.normalize(torch.bmm(x, zbar), dim=1)
    return mu


def _train_step(head: EMAHead, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One training forward and backward: ``(bases before, ema_module input)``."""
    seen = []
    hook = head.ema_module.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    before = head.ema_module.bases.clone()
    head.train()
    head(x).square().mean().backward()
    hook.remove()
    return before, seen[0]


def test_training_updates_the_bases_by_momentum(fixture):
    head = _head(fixture)
    buffer = head.ema_module.bases
    assert head.training_state() == [buffer]
    before, feats = _train_step(head, fixture["input"])
    mu = _em_by_hand(feats, before, 3).mean(dim=0, keepdim=True)  # (1, C, K)
    expected = 0.9 * before + 0.1 * F.normalize(mu, dim=1)
    assert head.ema_module.bases is buffer  # updated in place: the trainer holds it
    torch.testing.assert_close(buffer, expected, atol=1e-6, rtol=0)
    assert not torch.equal(buffer, before)
    # The frozen mid conv: no gradient; the rest learns.
    assert not any(p.requires_grad for p in head.ema_mid_conv.parameters())
    assert all(p.grad is None for p in head.ema_mid_conv.parameters())
    assert head.ema_in_conv.conv.weight.grad is not None
    # Eval mode (with autograd or without) leaves the bases alone.
    after = buffer.clone()
    head.eval()(fixture["input"]).sum().backward()
    assert torch.equal(buffer, after)


def test_training_averages_the_bases_over_processes_as_mmseg(fixture, monkeypatch):
    # A world of two whose other process contributes `other` (its batch mean of the bases):
    # the head's forward divides by the world size and sums, as mmseg's reduce_mean.
    other = F.normalize(torch.randn(fixture["ema_bases_init"].shape), dim=1)
    calls = []
    fake = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True, get_world_size=lambda: 2,
        all_reduce=lambda t, op: calls.append(op) or t.add_(other / 2), ReduceOp=dist.ReduceOp,
    )  # fmt: skip
    monkeypatch.setattr(ema, "dist", fake)
    head = _head(fixture)
    before, feats = _train_step(head, fixture["input"])
    mu = (_em_by_hand(feats, before, 3).mean(dim=0, keepdim=True) + other) / 2
    expected = 0.9 * before + 0.1 * F.normalize(mu, dim=1)
    assert calls == [dist.ReduceOp.SUM]
    torch.testing.assert_close(head.ema_module.bases, expected, atol=1e-6, rtol=0)


def _gloo_worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=WAIT
    )
    try:
        torch.manual_seed(0)  # the same weights and bases in both processes
        head = EMAHead(8, 3, 8, 8, 4)
        x = torch.randn(2, 8, 5, 6, generator=torch.Generator().manual_seed(rank))
        before, feats = _train_step(head, x)
        torch.save((before, feats, head.ema_module.bases), f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # a spawned process imports torch and isa_explorer (10-40 s on 2 cores)
def test_training_averages_the_bases_across_two_gloo_processes(tmp_path: Path):
    out, store = str(tmp_path / "bases"), str(tmp_path / "store")
    other = mp.get_context("spawn").Process(target=_gloo_worker, args=(1, 2, store, out))
    other.start()
    try:
        _gloo_worker(0, 2, store, out)
    finally:
        other.join(WAIT.total_seconds())
    assert other.exitcode == 0
    (before, f0, b0), (_, f1, b1) = (torch.load(f"{out}{r}.pt") for r in range(2))
    mu = sum(_em_by_hand(f, before, 3).mean(0, keepdim=True) for f in (f0, f1)) / 2
    expected = 0.9 * before + 0.1 * F.normalize(mu, dim=1)
    torch.testing.assert_close(b0, expected, atol=1e-6, rtol=0)
    assert torch.equal(b0, b1)  # the processes agree after the step


def test_registry_build_and_mmseg_names():
    assert heads.get("ema") is EMAHead and EMAHead.mmseg.head_type == "EMAHead"
    options = {"ema_channels": 12, "num_bases": 5, "num_stages": 2, "momentum": 0.2}
    head = EMAHead.build(16, 3, HeadConfig(channels=8, dropout=0.2, options=options))
    assert head.ema_module.bases.shape == (1, 12, 5) and head.ema_module.num_stages == 2
    assert head.ema_module.momentum == 0.2 and head.dropout.p == 0.2
    with pytest.raises(ValueError, match="unknown option"):
        EMAHead.build(16, 3, HeadConfig(options={"bases": 8}))
    module = EMAHead.attention_module(HeadConfig(channels=8, options={"num_bases": 4}))
    assert module(torch.randn(2, 8, 3, 5)).shape == (2, 8, 3, 5)
    # The published R-50-D8 names and shapes: read back from the key listing.
    lines = (FIXTURES / "emanet_r50-d8_keys.txt").read_text().splitlines()
    rows = [line.split("\t") for line in lines if line.startswith("decode_head.")]
    shapes = {k: tuple(int(n) for n in s.strip("()").split(",") if n.strip()) for k, s in rows}
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    cfg = EMAHead.mmseg_config(state)
    assert cfg == {"decoder_channels": 256, "head_options": {"ema_channels": 512, "num_bases": 64}}
    config = HeadConfig(channels=cfg["decoder_channels"], options=cfg["head_options"])
    with torch.device("meta"):
        head = EMAHead.build(2048, 19, config)
    ours = {f"decode_head.{k}": tuple(v.shape) for k, v in head.state_dict().items()}
    assert ours == shapes
    assert {k.split(".")[1] for k in shapes} == set(EMAHead.mmseg.modules)
