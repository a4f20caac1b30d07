"""Shared test helpers: small models and the mmseg fixtures."""

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def small_isanet(**kwargs):
    """A ResNet-18 ISANet small enough for CPU tests (random weights, no download)."""
    from isa_explorer import ISANet

    params = dict(
        encoder_name="resnet18",
        encoder_weights=None,
        classes=5,
        decoder_channels=32,
        decoder_isa_channels=16,
    )
    params.update(kwargs)
    return ISANet(**params)
