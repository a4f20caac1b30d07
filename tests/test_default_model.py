"""The shipped default model: it solves the synthetic context task, and its attention shows how.

Scored on held-out scenes from a seed that neither training nor validation uses
(:data:`~isa_explorer.experiments.context.HELD_OUT_SEED`).
"""

from __future__ import annotations

import json

import pytest

from isa_explorer.data.synthetic import SYNTHETIC_INFO
from isa_explorer.experiments.context import HELD_OUT_SEED, cue_attention_ratio, held_out_metrics
from isa_explorer.pretrained import DEFAULT_MODEL_DIR, load_default_model, model_card

#: Queries of the context class the model decides by finding the cue must put at least this many
#: times the cue's area share on the cue (uniform attention gives 1; the untrained model 1.00).
CUE_RATIO_THRESHOLD = 5.0


@pytest.fixture(scope="module")
def model():
    return load_default_model()


@pytest.fixture(scope="module")
def size() -> tuple[int, int]:
    return tuple(json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())["size"])


def test_the_default_model_ships_small_with_its_card_and_labels(model):
    weights = DEFAULT_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size < 20 * 2**20
    assert model.class_names == list(SYNTHETIC_INFO.class_names)
    assert [tuple(c) for c in model.palette] == list(SYNTHETIC_INFO.palette)
    assert model.head == "isa" and model.output_stride == 8
    card = model_card()
    assert "train/fit.py --config synthetic-context" in card and "mIoU" in card


def test_held_out_miou_overall_and_on_the_context_classes(model, size):
    metrics = held_out_metrics(model, size=size, n_images=64, seed=HELD_OUT_SEED)
    assert metrics["mIoU"] >= 0.90, metrics
    assert metrics["context_mIoU"] >= 0.85, metrics


def test_context_objects_attend_to_the_far_cue(model, size):
    """The combined map of a context object reaches across the image to the cue.

    The model tells the two context classes apart by looking for one cue colour: queries of
    that class put most of their attention on the cue; queries of the other class find no such
    cue (their ratio is below 1). At least one class must show it, and clearly.
    """
    result = cue_attention_ratio(model, size=size, n_scenes=16, seed=HELD_OUT_SEED)
    by_class = result["by_class"]
    assert len(by_class) == 2 and all(v["count"] >= 4 for v in by_class.values()), result
    best = max(v["median"] for v in by_class.values())
    assert best >= CUE_RATIO_THRESHOLD, by_class
