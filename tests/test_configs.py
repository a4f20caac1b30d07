"""The published ISANet recipes, config overrides and the JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from isa_explorer.configs import CONFIGS, TrainConfig, apply_overrides, get_config
from isa_explorer.data import get_info
from isa_explorer.training import build_model

#: mmseg's model zoo: (dataset, backbone, crop, iterations) of the 16 released ISANet runs.
ZOO = [
    ("cityscapes", depth, crop, iters)
    for depth in ("r50", "r101")
    for crop in ("512x1024", "769x769")
    for iters in (40, 80)
] + [
    (dataset, depth, "512x512", iters)
    for dataset, schedule in (("ade20k", (80, 160)), ("voc12aug", (20, 40)))
    for depth in ("r50", "r101")
    for iters in schedule
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _name(dataset: str, depth: str, crop: str, iters: int) -> str:
    batch = 2 if dataset == "cityscapes" else 4
    return f"isanet_{depth}-d8_4xb{batch}-{iters}k_{dataset}-{crop}"


def test_every_published_run_has_a_config() -> None:
    names = {_name(*row) for row in ZOO}
    assert len(names) == 16
    assert set(CONFIGS) == names | {"synthetic-context", "folder"}


@pytest.mark.parametrize("row", ZOO, ids=lambda r: _name(*r))
def test_published_recipe_values(row: tuple) -> None:
    dataset, depth, crop, iters = row
    cfg = get_config(_name(*row))
    h, w = (int(v) for v in crop.split("x"))
    assert cfg.dataset == {"voc12aug": "voc"}.get(dataset, dataset)
    assert cfg.crop_size == (h, w) and cfg.iters == iters * 1000
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.01, 0.9, 5e-4)
    assert (cfg.poly_power, cfg.min_lr, cfg.aux_weight, cfg.clip_grad) == (0.9, 1e-4, 0.4, None)
    assert cfg.batch_size == (2 if dataset == "cityscapes" else 4)
    assert cfg.scale == ((1024, 2048) if dataset == "cityscapes" else (512, 2048))
    assert cfg.train_split == ("train_aug" if dataset == "voc12aug" else "train")
    slide = crop == "769x769"
    assert cfg.eval_mode == ("slide" if slide else "whole")
    assert (cfg.eval_crop, cfg.eval_stride) == ((769, 769), (513, 513))
    m = cfg.model
    assert m["encoder_name"] == {"r50": "tu-resnet50c", "r101": "tu-resnet101c"}[depth]
    assert m["encoder_output_stride"] == 8 and m["aux_head"] is True
    assert (m["decoder_channels"], m["decoder_isa_channels"], m["aux_channels"]) == (512, 256, 256)
    assert m["align_corners"] is slide
    assert m["classes"] == get_info(cfg.dataset).num_classes


def test_published_configs_build_their_models() -> None:
    # Configs that differ only in schedule share a model: build each distinct one once.
    built: dict[str, tuple] = {}
    for name, cfg in CONFIGS.items():
        if name in ("synthetic-context", "folder"):  # folder: the classes come with the data
            continue
        key = json.dumps([cfg.dataset, cfg.model], sort_keys=True)
        if key not in built:
            info = get_info(cfg.dataset)
            model = build_model({**cfg.model, "encoder_weights": None}, info)
            with torch.no_grad():
                out = model.eval().forward_train(torch.zeros(1, 3, 32, 32))
            built[key] = (
                model.classes,
                model.output_stride,
                model.aux_head is not None,
                model.class_names == list(info.class_names),
                model.align_corners,
                {k: tuple(v.shape) for k, v in out.items()},
            )
            del model
        classes, stride, aux, names_ok, align, shapes = built[key]
        assert classes == cfg.model["classes"] and stride == 8 and aux and names_ok, name
        assert align is cfg.model["align_corners"], name
        assert shapes == {"out": (1, classes, 32, 32), "aux": (1, classes, 32, 32)}, name
    assert len(built) == 8


def test_synthetic_context_recipe() -> None:
    cfg = get_config("synthetic-context")
    assert (
        cfg.dataset == "synthetic-context"
        and cfg.iters == 500
        and cfg.batch_size == 8
        and cfg.lr == 0.05
    )
    assert cfg.model["encoder_name"] == "tu-resnet10t" and cfg.model["encoder_weights"] is None
    assert cfg.model["classes"] == 7 and cfg.model["aux_head"] is False
    assert cfg.synthetic["size"] == (128, 256)
    assert cfg.synthetic["train_seed"] != cfg.synthetic["val_seed"]
    assert cfg.synthetic["val_length"] == 64 and cfg.eval_interval == 100
    assert cfg.amp is False


def test_overrides_parse_json_and_nested_keys() -> None:
    cfg = get_config(
        "synthetic-context",
        [
            "iters=20",
            "lr=0.02",
            "clip_grad=10",
            "amp=true",
            "name=my run",
            "crop_size=[64, 128]",
            "model.decoder_channels=32",
            "model.encoder_weights=none",
            "synthetic.size=[96,192]",
        ],
    )
    assert (cfg.iters, cfg.lr, cfg.clip_grad, cfg.amp, cfg.name) == (20, 0.02, 10, True, "my run")
    assert cfg.crop_size == (64, 128)
    assert cfg.model["decoder_channels"] == 32 and cfg.model["encoder_weights"] is None
    assert cfg.model["encoder_name"] == "tu-resnet10t"  # the rest of the dict is kept
    assert cfg.synthetic["size"] == (96, 192)
    assert CONFIGS["synthetic-context"].iters == 500  # the registry is not modified


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("iters", "key=value"),
        ("iterations=5", "unknown config key 'iterations'"),
        ("lr.x=1", "'lr' is not a dict"),
        ("crop_size=[1,2,3]", r"crop_size must be an \(H, W\) pair"),
        ("eval_mode=sliding", "eval_mode must be 'whole' or 'slide'"),
        ("iters=0", "iters must be at least 1"),
    ],
)
def test_bad_overrides_are_named(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(CONFIGS["synthetic-context"], [override])


def test_unknown_config_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="isanet_r50-d8_4xb2-40k_cityscapes-512x1024"):
        get_config("isanet_r18")


def test_json_round_trip(tmp_path: Path) -> None:
    cfg = get_config("isanet_r101-d8_4xb2-80k_cityscapes-769x769", ["model.encoder_weights=none"])
    path = tmp_path / "config.json"
    cfg.save(path)
    assert TrainConfig.load(path) == cfg
    assert get_config(str(path)) == cfg
    assert get_config(str(path), ["iters=10"]).iters == 10
    data = json.loads(path.read_text())
    data["learning_rate"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown config keys \\['learning_rate'\\]"):
        TrainConfig.load(path)
    with pytest.raises(FileNotFoundError, match="no config file"):
        TrainConfig.load(tmp_path / "absent.json")


def test_misspelt_sub_config_keys_fail_with_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown model key 'decoder_chanels' \(did you mean "
                       r"'decoder_channels'\?\); valid: encoder_name, "):  # fmt: skip
        get_config("synthetic-context", ["model.decoder_chanels=64"])
    with pytest.raises(ValueError, match=r"unknown synthetic keys \['sise'\]; valid: train_length"):
        get_config("synthetic-context", ["synthetic.sise=[96,192]"])
    with pytest.raises(ValueError, match=r"unknown evaluation keys \['mdoe'\]; valid: mode, crop"):
        get_config("synthetic-context", ["evaluation.mdoe=slide"])
    cfg = get_config("synthetic-context", ["synthetic.size=[96,192]", "model.decoder_channels=64"])
    assert cfg.synthetic.size == (96, 192) and cfg.model["decoder_channels"] == 64
    cfg = get_config("synthetic-context", ["evaluation.mode=slide", "eval_crop=[64,64]"])
    assert cfg.evaluation.mode == cfg.eval_mode == "slide" and cfg.eval_crop == (64, 64)


def test_a_config_saved_with_a_plain_synthetic_dict_still_loads(tmp_path):
    old = get_config("synthetic-context").to_dict()
    assert old["synthetic"] == {
        "train_length": 4000, "val_length": 64, "train_seed": 0, "val_seed": 10_000,
        "size": [128, 256],
    }  # fmt: skip
    old["synthetic"] = {"train_length": 10, "size": [96, 192]}  # partial, as older runs wrote
    evaluation = old.pop("evaluation")  # older runs wrote the evaluation settings flat
    old.update(eval_mode="slide", eval_crop=evaluation["crop"], eval_stride=[400, 400])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    cfg = get_config(str(path))
    assert cfg.synthetic.train_length == 10 and cfg.synthetic.val_seed == 10_000
    assert cfg.evaluation.mode == "slide" and cfg.evaluation.stride == (400, 400)
    assert "eval_mode" not in cfg.to_dict() and cfg.to_dict()["evaluation"]["mode"] == "slide"
