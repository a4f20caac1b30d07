"""Models of ISA Explorer; importing this registers ``isanet`` with segmentation-models-pytorch."""

import segmentation_models_pytorch as smp

from isa_explorer.models.fusion import fuse_for_inference, is_fused
from isa_explorer.models.heads import DenseAttentionDecoder, FCNHead
from isa_explorer.models.isa.decoder import GroupGrid, ISADecoder
from isa_explorer.models.isa.model import ISANet

# smp.create_model("isanet", ...) looks up this mapping; smp.from_pretrained(dir) looks up the
# class name on the smp module.
smp.MODEL_ARCHITECTURES_MAPPING["isanet"] = ISANet
smp.ISANet = ISANet

__all__ = [
    "DenseAttentionDecoder",
    "FCNHead",
    "GroupGrid",
    "ISADecoder",
    "ISANet",
    "fuse_for_inference",
    "is_fused",
]
