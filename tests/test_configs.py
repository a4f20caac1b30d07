"""The published recipes (against the reference tables of mmseg's model zoo), the own-data
recipe, config overrides and the JSON round trip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from published_reference import HEAD_ARGS, ROWS, Published

from isa_explorer import heads
from isa_explorer.configs import (
    CONFIGS,
    HEAD_RECIPES,
    PUBLISHED,
    TrainConfig,
    apply_overrides,
    folder_config,
    get_config,
)
from isa_explorer.data import get_info
from isa_explorer.training import build_model

# The generated Cityscapes folder of the GPU check (benchmarks/gpu/fake_cityscapes.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
from fake_cityscapes import write_fake_cityscapes  # noqa: E402

ENCODERS = {"R-50-D8": "tu-resnet50c", "R-101-D8": "tu-resnet101c"}
#: mmseg head arguments that are not settings of a config: the input, and what the project's
#: head implements as fixed behaviour (NL's embedded Gaussian with scaling, GC's attention
#: pooling with channel addition).
FIXED = {"in_channels", "use_scale", "mode", "pooling_type", "fusion_types"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_published_run_has_a_config_under_its_name() -> None:
    names = [row.config for row in ROWS]
    assert len(names) == len(set(names)) == 84
    assert set(CONFIGS) == set(names) | {"synthetic-context", "folder"}
    assert {head: len(n) for head, n in PUBLISHED.items()} == {
        "isa": 16, "nl": 16, "cc": 16, "da": 16, "gc": 16, "ema": 4
    }  # fmt: skip
    assert sorted(n for group in PUBLISHED.values() for n in group) == sorted(names)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.config)
def test_published_recipe_values(row: Published) -> None:
    cfg = get_config(row.config)
    assert (cfg.dataset, cfg.crop_size, cfg.iters) == (row.dataset, row.crop, row.iters)
    assert row.gpus == 4 and cfg.batch_size == row.batch
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.01, 0.9, 5e-4)
    assert (cfg.poly_power, cfg.min_lr, cfg.aux_weight, cfg.clip_grad) == (0.9, 1e-4, 0.4, None)
    assert cfg.train_split == ("train_aug" if row.dataset == "voc" else "train")
    # Test mode, window, resize scale and align_corners as the reference's test settings.
    mode, scale, align = row.test_mode, row.test_scale, row.align_corners
    assert row.test.startswith(mode) and cfg.evaluation.mode == mode
    if mode == "slide":
        assert row.test == "slide crop (769, 769) stride (513, 513)"
        assert (cfg.evaluation.crop, cfg.evaluation.stride) == ((769, 769), (513, 513))
    assert sorted(cfg.scale) == sorted(scale)  # the training rescale's base and the test resize
    m = cfg.model
    assert (m["head"], m["encoder_name"]) == (row.head, ENCODERS[row.backbone])
    assert m["encoder_weights"] == "imagenet" and m["encoder_output_stride"] == 8
    assert (m["aux_head"], m["aux_channels"], m["align_corners"]) == (True, 256, align)
    assert m["classes"] == get_info(cfg.dataset).num_classes


def test_the_769x769_recipes_rescale_and_test_at_2049x1025() -> None:
    """mmseg's cityscapes_769x769.py: (2049, 1025), not the (2048, 1024) of the others."""
    scales = {(c.dataset, c.crop_size): tuple(sorted(c.scale)) for c in CONFIGS.values() if c.scale}
    assert scales == {
        ("cityscapes", (769, 769)): (1025, 2049),
        ("cityscapes", (512, 1024)): (1024, 2048),
        ("ade20k", (512, 512)): (512, 2048),
        ("voc", (512, 512)): (512, 2048),
    }


@pytest.mark.parametrize("head", list(HEAD_RECIPES))
def test_each_head_has_its_published_settings(head: str) -> None:
    """Every argument of the reference's head line is a setting of the head's recipes, with the
    published value: ``channels`` and ``dropout_ratio`` as ``decoder_*``, the others as the
    head's options (ISANet's as ``decoder_*``), and no setting the reference does not have."""
    args = {k: v for k, v in HEAD_ARGS[head].items() if k not in FIXED}
    for name in PUBLISHED[head]:
        model = CONFIGS[name].model
        options = model.get("head_options", {})
        assert model["head"] == head
        assert (model["decoder_channels"], model["decoder_dropout"]) == (
            args["channels"], args["dropout_ratio"])  # fmt: skip
        for key, value in args.items():
            if key not in ("channels", "dropout_ratio"):
                ours = options[key] if key in options else model[f"decoder_{key}"]
                assert ours == (list(value) if isinstance(value, tuple) else value), key
        assert set(options) <= set(args), options
    # The values spelt out (the reference could be misread as well).
    expected = {
        "isa": {"decoder_isa_channels": 256, "decoder_down_factor": [8, 8]},
        "nl": {"head_options": {"reduction": 2}},
        "cc": {"head_options": {"recurrence": 2}},
        "da": {"head_options": {"pam_channels": 64}},
        "gc": {"head_options": {"ratio": 0.25}},
        "ema": {"decoder_channels": 256, "head_options": {
            "ema_channels": 512, "num_bases": 64, "num_stages": 3, "momentum": 0.1}},
    }  # fmt: skip
    assert HEAD_RECIPES[head][1] == expected[head]


def test_published_configs_build_their_models() -> None:
    # Configs that differ only in schedule or dataset share a model: build each one once.
    built: dict[str, dict] = {}
    for name in (n for group in PUBLISHED.values() for n in group):
        cfg = CONFIGS[name]
        key = json.dumps({k: v for k, v in cfg.model.items() if k != "classes"}, sort_keys=True)
        if key not in built:
            model = build_model({**cfg.model, "encoder_weights": None, "classes": 3})
            with torch.no_grad():
                out = model.eval().forward_train(torch.zeros(1, 3, 32, 32))
            built[key] = dict(
                stride=model.output_stride, aux=model.aux_head is not None, head=model.head,
                align=model.align_corners, shapes={k: tuple(v.shape) for k, v in out.items()},
            )  # fmt: skip
            del model
        b, head, align = built[key], cfg.model["head"], cfg.model["align_corners"]
        assert (b["stride"], b["aux"], b["head"], b["align"]) == (8, True, head, align), name
        outputs = {*heads.get(head).loss_weights, "aux"}  # DANet: out, pam, cam
        assert b["shapes"] == {k: (1, 3, 32, 32) for k in outputs}, name
    assert len(built) == 5 * 4 + 4  # head x depth x align_corners (EMANet: 80k Cityscapes)


def test_the_769x769_scale_reaches_the_training_and_validation_pipelines(tmp_path) -> None:
    from isa_explorer.training.data import _datasets

    root = write_fake_cityscapes(tmp_path / "cs", {"train": 1, "val": 1}, (1024, 2048))
    for crop, size in (("769x769", (1025, 2049)), ("512x1024", (1024, 2048))):
        cfg = get_config(f"danet_r50-d8_4xb2-40k_cityscapes-{crop}", [f"data_root={root}"])
        train, val, train_tf, _ = _datasets(cfg)
        assert sorted(train_tf.transforms[0].scale) == sorted(size)  # the random rescale's base
        image, mask = val[0]  # the test resize: the image only
        assert tuple(image.shape[-2:]) == size and tuple(mask.shape) == (1024, 2048)
        assert tuple(train_tf(*train[0])[0].shape[-2:]) == cfg.crop_size


def test_the_folder_recipe_starts_from_imagenet_weights_for_any_head() -> None:
    cfg = get_config("folder")
    assert cfg == folder_config() and cfg.name == "folder" and cfg.dataset == "folder"
    assert cfg.model == folder_config("isa").model  # no head: ISANet's recipe
    assert (
        cfg.model["encoder_weights"] == "imagenet" and cfg.model["encoder_name"] == "tu-resnet50c"
    )
    assert "classes" not in cfg.model and cfg.scale is None and cfg.iters == 20_000
    ade = CONFIGS["isanet_r50-d8_4xb4-80k_ade20k-512x512"]
    for head in heads.names():
        own = folder_config(head)
        assert own.name == f"folder-{head}"
        assert own.model["head"] == head and own.model["encoder_weights"] == "imagenet"
        assert (own.crop_size, own.batch_size, own.lr, own.evaluation) == (
            ade.crop_size, ade.batch_size, ade.lr, ade.evaluation)  # fmt: skip
        if head in PUBLISHED:  # the head's published model, classes from the data
            published = CONFIGS[PUBLISHED[head][0]].model
            assert own.model == {k: v for k, v in published.items() if k != "classes"}
        else:  # no ISANet settings for another head
            assert not {"decoder_isa_channels", "decoder_down_factor"} & set(own.model)
        build_model({**own.model, "encoder_name": "resnet18", "encoder_weights": None,
                     "classes": 3, "encoder_output_stride": 32})  # fmt: skip
    with pytest.raises(ValueError, match="unknown head 'xyz'.*isa, dense"):
        folder_config("xyz")


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


@pytest.mark.parametrize(("text", "value"), [("False", False), ("TRUE", True), ("false", False)])
def test_flags_read_python_and_json_spellings(text: str, value: bool) -> None:
    cfg = get_config("synthetic-context", [f"freeze_encoder={text}", f"channels_last={text}"])
    assert cfg.freeze_encoder is value and cfg.channels_last is value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("iters", "key=value"),
        ("iterations=5", "unknown config key 'iterations'"),
        ("lr.x=1", "'lr' is not a dict"),
        ("crop_size=[1,2,3]", r"crop_size must be an \(H, W\) pair"),
        ("eval_mode=sliding", "eval_mode must be 'whole' or 'slide'"),
        ("iters=0", "iters must be at least 1"),
        ("freeze_encoder=yes", "freeze_encoder must be true or false, got 'yes'"),
        ("amp=1", "amp must be true or false, got 1"),
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
