"""Training ISANet: the published mmseg recipes on one or many GPUs, or the CPU.

``train(cfg, run_dir)`` runs a :class:`~isa_explorer.configs.TrainConfig`; ``train/fit.py`` is
its command line (``torchrun --nproc_per_node N train/fit.py ...`` for DDP).
"""

from isa_explorer.training.checkpoint import load_checkpoint, save_checkpoint, save_model_dir
from isa_explorer.training.loop import train
from isa_explorer.training.model import build_model, fetch_encoder_weights, load_encoder_weights
from isa_explorer.training.steps import NonFiniteLossError, loss_weights, segmentation_loss

__all__ = [
    "NonFiniteLossError",
    "build_model",
    "fetch_encoder_weights",
    "load_checkpoint",
    "load_encoder_weights",
    "loss_weights",
    "save_checkpoint",
    "save_model_dir",
    "segmentation_loss",
    "train",
]
