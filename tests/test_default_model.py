"""The shipped default models: one encoder, a head of each kind on it, each card true.

Scored on held-out scenes from a seed that neither training nor validation uses
(:data:`~isa_explorer.experiments.scores.HELD_OUT_SEED`).
"""

from __future__ import annotations

import json

import pytest
import torch

from isa_explorer.data.synthetic import SYNTHETIC_INFO
from isa_explorer.experiments.context import COMPARED
from isa_explorer.experiments.scores import HELD_OUT_SEED, cue_attention_ratio, held_out_metrics
from isa_explorer.pretrained import (
    DEFAULT_MODEL_DIR,
    DEFAULT_MODELS_DIR,
    default_heads,
    load_default_model,
    model_card,
)

#: Queries of the context class the ISA model decides by finding the cue must put at least this
#: many times the cue's area share on the cue (uniform attention gives 1; the untrained model 1.00).
CUE_RATIO_THRESHOLD = 5.0
#: The cards' scores are of 128 scenes x 32768 pixels; recomputed on another torch release an
#: argmax may flip at a few tied pixels, which moves an IoU by ~1e-5. 1e-3 is a hundredfold that.
SCORE_TOLERANCE = 1e-3


def _training(head: str) -> dict:
    return json.loads((DEFAULT_MODELS_DIR / head / "training.json").read_text())


@pytest.fixture(scope="module")
def model():
    return load_default_model()


def test_every_compared_head_ships_on_one_encoder_within_30_mb():
    assert default_heads() == ["isa", *sorted(h for h in COMPARED if h != "isa")]
    files = [p for p in DEFAULT_MODELS_DIR.rglob("*") if p.is_file()]
    assert [p.name for p in files if p.name.endswith(".safetensors")].count(
        "encoder.safetensors"
    ) == 1
    assets = DEFAULT_MODELS_DIR.parent
    total = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert total < 30 * 2**20, f"package data {total / 2**20:.1f} MB"


def test_the_default_is_the_isa_model_with_its_card_and_labels(model):
    assert model.head == "isa" and model.output_stride == 8
    assert model.class_names == list(SYNTHETIC_INFO.class_names)
    assert [tuple(c) for c in model.palette] == list(SYNTHETIC_INFO.palette)
    assert model_card() == (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("head", COMPARED)
def test_each_head_loads_offline_and_its_card_states_its_held_out_scores(head):
    model = load_default_model(head=head)
    assert model.head == head and model.class_names == list(SYNTHETIC_INFO.class_names)
    info = _training(head)
    card = model_card(DEFAULT_MODELS_DIR / head)
    assert f"mIoU **{info['held_out']['mIoU']:.3f}**" in card
    assert f"context classes mIoU **{info['held_out']['context_mIoU']:.3f}**" in card
    metrics = held_out_metrics(model, size=tuple(info["size"]), n_images=info["held_out"]["images"])
    assert metrics["seed"] == info["held_out"]["seed"] == HELD_OUT_SEED
    for key in ("mIoU", "context_mIoU"):
        assert metrics[key] == pytest.approx(info["held_out"][key], abs=SCORE_TOLERANCE), key
    enc = load_default_model(head="isa").encoder.state_dict()
    assert all(torch.equal(v, enc[k]) for k, v in model.encoder.state_dict().items())


def test_an_unknown_head_is_a_clear_error():
    with pytest.raises(ValueError, match="no embedded default model for head 'dense'.*isa"):
        load_default_model(head="dense")


def test_the_isa_model_solves_the_context_classes_and_attends_to_the_far_cue(model):
    """The combined map of a context object reaches across the image to the cue.

    The model tells the two context classes apart by looking for one cue colour: queries of
    that class put most of their attention on the cue; queries of the other class find no such
    cue (their ratio is below 1). At least one class must show it, and clearly.
    """
    size = tuple(_training("isa")["size"])
    metrics = held_out_metrics(model, size=size, n_images=64, seed=HELD_OUT_SEED)
    assert metrics["context_mIoU"] >= 0.85, metrics
    result = cue_attention_ratio(model, size=size, n_scenes=16, seed=HELD_OUT_SEED)
    by_class = result["by_class"]
    assert len(by_class) == 2 and all(v["count"] >= 4 for v in by_class.values()), result
    assert max(v["median"] for v in by_class.values()) >= CUE_RATIO_THRESHOLD, by_class


def test_the_app_names_the_embedded_model_it_shows():
    from isa_explorer.explorer.served_model import ExplorerModel

    assert "the embedded default `isa` model" in ExplorerModel().summary
    assert "the embedded default `gc` model" in ExplorerModel(DEFAULT_MODELS_DIR / "gc").summary
