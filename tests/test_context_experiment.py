"""The controlled context experiment: one frozen encoder, every head alone on it, resumable;
and the export of its runs as default models sharing that encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import TINY

from isa_explorer.configs import get_config
from isa_explorer.experiments.context import plan, run_experiment
from isa_explorer.experiments.default_model import ENCODER_FILE, export_default_models
from isa_explorer.experiments.report import format_results
from isa_explorer.pretrained import DamagedModelError, load_model
from isa_explorer.training import train

TINY_EXP = [*TINY, "iters=2", "eval_interval=2", "ckpt_interval=1"]
HEADS, SEEDS = ("fcn", "isa"), (0, 1)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("context")
    res = run_experiment(runs, HEADS, SEEDS, ("isa",), TINY_EXP, n_eval=2, progress=False)
    torch.set_num_threads(threads)
    return runs, res


def _encoder(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(path).items() if k.startswith("encoder.")}


def test_every_run_is_listed_with_its_head_and_seed(experiment):
    _, res = experiment
    listed = [(r["kind"], r["head"], r["seed"]) for r in res["runs"]]
    assert listed == [("encoder", "fcn", 0)] + [
        ("head-only", h, s) for s in SEEDS for h in HEADS
    ] + [("end-to-end", "isa", 0)]  # fmt: skip
    assert all(r["encoder_unchanged"] for r in res["runs"] if r["kind"] == "head-only")
    for head in HEADS:
        summary = res["heads"][head]
        mine = {r["seed"]: r for r in res["runs"] if r["head"] == head and r["kind"] == "head-only"}
        assert summary["seeds"] == list(SEEDS)
        assert summary["best_seed"] == max(mine, key=lambda s: mine[s]["val_mIoU"])
        values = [r["context_mIoU"] for r in mine.values()]
        assert summary["context_mIoU"]["mean"] == pytest.approx(sum(values) / len(values))
        assert summary["train_step"]["status"] == "ok", summary["train_step"]
        assert summary["train_step"]["trained_params"] < res["runs"][1]["params"]
    assert res["heads"]["isa (end-to-end)"]["kind"] == "end-to-end"
    assert "cue_attention" in next(r for r in res["runs"] if r["head"] == "isa")
    assert "cue_attention" not in next(r for r in res["runs"] if r["head"] == "fcn")


def test_head_only_runs_differ_only_in_head_and_seed_and_keep_the_encoder(experiment):
    runs_dir, res = experiment
    configs = {}
    for r in res["runs"][1:-1]:
        cfg = json.loads((Path(r["run_dir"]) / "config.json").read_text())
        configs[r["head"], r["seed"]] = cfg
        assert cfg["freeze_encoder"] is True
    base = configs[HEADS[0], SEEDS[0]]
    for cfg in configs.values():
        changed = {k for k in base if base[k] != cfg[k]}
        assert changed <= {"model", "seed"}, changed
        assert {k for k in base["model"] if base["model"][k] != cfg["model"][k]} <= {"head"}
    shared = _encoder(runs_dir / "encoder" / "final" / "model.safetensors")
    for r in res["runs"][1:-1]:
        final = _encoder(Path(r["run_dir"]) / "final" / "model.safetensors")
        assert all(torch.equal(final[k], v) for k, v in shared.items()), r["run_dir"]


def test_the_encoder_only_stays_fixed_when_frozen(tmp_path):
    """The counterpart of the test above: the same run without ``freeze_encoder`` moves the
    loaded encoder's weights and BatchNorm statistics, so that test can fail."""
    source = tmp_path / "source"
    train(get_config("synthetic-context", [*TINY, "iters=1"]), source, progress=False)
    weights = source / "final" / "model.safetensors"
    moved = {}
    for freeze in (True, False):
        sets = [*TINY, "iters=2", f"model.encoder_weights={weights}", f"freeze_encoder={freeze}"]
        train(get_config("synthetic-context", sets), tmp_path / str(freeze), progress=False)
        after = _encoder(tmp_path / str(freeze) / "final" / "model.safetensors")
        moved[freeze] = [k for k, v in _encoder(weights).items() if not torch.equal(after[k], v)]
    assert moved[True] == []
    assert any("running_mean" in k for k in moved[False]) and any("conv" in k for k in moved[False])


def test_a_rerun_trains_nothing_new_and_resumes_a_run_that_lost_its_result(experiment):
    runs_dir, res = experiment
    lost = runs_dir / "heads" / "isa" / "seed1"
    before = load_file(lost / "final" / "model.safetensors")
    stamps = {p: p.stat().st_mtime_ns for p in runs_dir.rglob("final/model.safetensors")}
    shutil.rmtree(lost / "final")  # its scores in held_out.json no longer match any weights
    again = run_experiment(
        runs_dir, HEADS, SEEDS, ("isa",), TINY_EXP, n_eval=2, progress=False, time_steps=False
    )
    after = load_file(lost / "final" / "model.safetensors")
    assert all(torch.equal(after[k], v) for k, v in before.items())  # from its last checkpoint
    for path, stamp in stamps.items():
        if lost not in path.parents:
            assert path.stat().st_mtime_ns == stamp, f"{path} was trained again"
    assert [r["mIoU"] for r in again["runs"]] == [r["mIoU"] for r in res["runs"]]


def test_a_run_dir_of_another_config_is_refused(experiment):
    """A changed key is refused; a key that an earlier version did not write counts as its
    default: the encoder run (``freeze_encoder`` false) is reused without it, a head-only run
    (true) is not."""
    runs_dir, _ = experiment
    configs = [runs_dir / d / "config.json" for d in ("heads/fcn/seed0", "encoder")]
    texts = [c.read_text() for c in configs]
    rerun = dict(heads=HEADS, seeds=SEEDS, reference=("isa",), overrides=TINY_EXP, n_eval=2,
                 progress=False, time_steps=False)  # fmt: skip
    try:
        configs[0].write_text(json.dumps({**json.loads(texts[0]), "lr": 0.5}))
        with pytest.raises(ValueError, match="holds a run of another config.*lr"):
            run_experiment(runs_dir, **rerun)
        configs[0].write_text(texts[0])
        for config, text in zip(configs, texts, strict=True):
            old = {k: v for k, v in json.loads(text).items() if k != "freeze_encoder"}
            config.write_text(json.dumps(old))
        with pytest.raises(
            ValueError, match="heads/fcn/seed0 holds.*freeze_encoder: False -> True"
        ):
            run_experiment(runs_dir, **rerun)
        configs[0].write_text(texts[0])
        assert len(run_experiment(runs_dir, **rerun)["runs"]) == 6
    finally:
        for config, text in zip(configs, texts, strict=True):
            config.write_text(text)


def test_the_plan_trains_the_encoder_first_with_the_fcn_head_and_widths_match():
    runs = plan("r", ("isa", "ema"), (0, 1), ("dense",))
    assert [(r.kind, r.head, r.seed) for r in runs][:2] == [
        ("encoder", "fcn", 0),
        ("head-only", "isa", 0),
    ]
    widths = set()
    for run in runs[1:-1]:
        cfg = get_config("synthetic-context", run.overrides)
        assert cfg.freeze_encoder and cfg.model["encoder_weights"].endswith("model.safetensors")
        widths.add(cfg.model["decoder_channels"])
        if run.head == "ema":
            widths.add(cfg.model["head_options"]["ema_channels"])
    assert widths == {128}


def test_the_report_lists_every_run_and_what_it_finds(experiment):
    _, res = experiment
    text = format_results({**res, "command": "isa-explorer experiment context --test"})
    assert "isa-explorer experiment context --test" in text
    for head in HEADS:
        for seed in SEEDS:
            assert f"| head-only | {head} | {seed} |" in text
    assert "## Reference: end-to-end runs" in text and "| isa (end-to-end) |" in text
    assert "## What it finds" in text and "By mean context mIoU over seeds" in text


def test_exported_models_share_one_encoder_and_hold_the_runs_weights(experiment, tmp_path):
    runs_dir, res = experiment
    results = tmp_path / "results.json"
    results.write_text(json.dumps(res))
    out = tmp_path / "models"
    infos = export_default_models(results, out, n_eval=2)
    assert sorted(infos) == sorted(HEADS)
    assert sorted(p.name for p in out.iterdir()) == sorted([ENCODER_FILE, *HEADS])
    for head in HEADS:
        assert not (out / head / "model.safetensors").exists()  # only the head's tensors
        run_dir = Path(next(r["run_dir"] for r in res["runs"] if r["head"] == head
                            and r["kind"] == "head-only" and r["seed"] == res["heads"][head]["best_seed"]))  # fmt: skip
        trained = load_model(run_dir / "final").state_dict()
        loaded = load_model(out / head).state_dict()
        for k, v in trained.items():
            want = v.half().float() if v.is_floating_point() else v
            assert torch.equal(loaded[k], want), k
        card = (out / head / "MODEL_CARD.md").read_text()
        info = infos[head]
        assert f"mIoU **{info['held_out']['mIoU']:.3f}**" in card
        assert f"seed {info['run']['seed']}" in card

    moved = tmp_path / "moved"
    shutil.copytree(out / "isa", moved)  # without the shared encoder beside it
    with pytest.raises(DamagedModelError, match="encoder.safetensors is missing"):
        load_model(moved)
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "_encoder_weights": "/etc/passwd"}))
    with pytest.raises(DamagedModelError, match="names no shared encoder file"):
        load_model(moved)
