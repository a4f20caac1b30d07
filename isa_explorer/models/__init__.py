"""Models of ISA Explorer; importing this registers ``isanet`` with segmentation-models-pytorch.

The heads themselves, and the registry of them, live in :mod:`isa_explorer.heads`.
"""

import segmentation_models_pytorch as smp

from isa_explorer.models.fusion import fuse_for_inference, is_fused
from isa_explorer.models.isanet import ISANet

# smp.create_model("isanet", ...) looks up this mapping; smp.from_pretrained(dir) looks up the
# class name on the smp module.
smp.MODEL_ARCHITECTURES_MAPPING["isanet"] = ISANet
smp.ISANet = ISANet

__all__ = ["ISANet", "fuse_for_inference", "is_fused"]
