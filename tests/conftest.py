"""Shared test helpers: small models and the mmseg fixtures."""

import zlib
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


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming ``width x height`` (8-bit RGB), then IEND: a
    file whose header announces an image too large to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
