"""What the training tests share: the tiny synthetic run and one intra-op thread."""

from __future__ import annotations

import pytest
import torch

#: A tiny synthetic-context run: ResNet-18 ISANet (output stride 16) on 96x192 scenes, batch 2.
TINY = [
    'model={"encoder_name": "resnet18", "encoder_weights": null, "encoder_output_stride": 16, '
    '"classes": 7, "decoder_channels": 32, "decoder_isa_channels": 16}',
    'synthetic={"train_length": 6, "val_length": 2, "train_seed": 0, "val_seed": 100, '
    '"size": [96, 192]}',
    "batch_size=2",
    "log_interval=1",
]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread (here; subprocesses get ``OMP_NUM_THREADS=1``): fast on a shared
    CPU, and the same float sums in every run of a test, so resumed runs compare bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
