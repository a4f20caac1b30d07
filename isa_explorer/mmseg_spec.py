"""Reading an mmsegmentation state dict: key renaming and the architecture it implies.

mmseg's ISANet is ``ResNetV1c`` (deep stem, dilated to output stride 8) + ``ISAHead`` +
``FCNHead`` auxiliary head (FCN: an ``FCNHead`` decode head). :func:`rename_key` maps its keys
onto ``ISANet(encoder_name="tu-resnet{depth}c", head=..., aux_head=True)`` (``backbone.*`` ->
timm's ``encoder.model.*``, ``decode_head.*`` -> ``decoder.*``, ``auxiliary_head.*`` ->
``aux_head.*``); :func:`infer_spec` reads depth, widths, class count and the head from the
weight shapes: the registered head whose ``mmseg.modules`` the decode head has.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from isa_explorer import heads

#: Bottleneck blocks per stage of the timm ``resnet{depth}c`` encoders.
RESNET_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_TIMM_STEM_WIDTH = 32
_TIMM_CHANNELS = (64, 128, 256, 512)
# Submodule of an mmseg decode head that no registered head converts -> its name (first wins).
_HEAD_HINTS = (
    ("lateral_convs", "UPerHead (UPerNet)"),
    ("psp_modules", "PSPHead (PSPNet)"),
    ("sep_bottleneck", "DepthwiseSeparableASPPHead (DeepLabV3+)"),
    ("aspp_modules", "ASPPHead (DeepLabV3)"),
    ("nl_block", "NLHead (Non-local)"),
    ("dnl_block", "DNLHead"),
    ("gc_block", "GCHead (GCNet)"),
    ("cca", "CCHead (CCNet)"),
    ("ema_module", "EMAHead (EMANet)"),
    ("pam", "DAHead (DANet)"),
    ("object_context_block", "OCRHead (OCRNet)"),
    ("convs", "FCNHead (FCN)"),
)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the problem and the fix."""


@dataclass
class ISANetSpec:
    """What a checkpoint's weight shapes say about the model.

    Attributes:
        depth: ResNet depth (50, 101, 152).
        stem_width: Channels of the first two stem convolutions (32 in the released models).
        channels: Bottleneck widths of the four stages (64, 128, 256, 512).
        classes: Number of classes.
        head: Registered name of the decode head (``"isa"``, ``"fcn"``).
        head_kwargs: The head's ``ISANet`` keyword arguments (``Head.mmseg_config``; ISA:
            ``decoder_channels``, ``decoder_isa_channels``).
        aux_channels: Auxiliary head channels (256), ``None`` without an auxiliary head.
    """

    depth: int
    stem_width: int
    channels: tuple[int, ...]
    classes: int
    head: str
    head_kwargs: dict[str, Any]
    aux_channels: int | None

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`ISANet` for this checkpoint (no pretrained download)."""
        kwargs: dict[str, Any] = dict(
            encoder_name=f"tu-resnet{self.depth}c",
            encoder_weights=None,
            encoder_output_stride=8,
            classes=self.classes,
            head=self.head,
            **self.head_kwargs,
            aux_head=self.aux_channels is not None,
        )
        if self.aux_channels is not None:
            kwargs["aux_channels"] = self.aux_channels
        # Reduced-width ResNets: timm's ResNet takes these through smp's encoder kwargs.
        if self.stem_width != _TIMM_STEM_WIDTH:
            kwargs["stem_width"] = self.stem_width
        if self.channels != _TIMM_CHANNELS:
            kwargs["channels"] = self.channels
        return kwargs


def rename_key(key: str, renames: Sequence[tuple[str, str]] = ()) -> str | None:
    """mmseg key -> ISA Explorer key, ``None`` for keys outside the model; ``renames``: the
    decode head's ``(mmseg prefix, prefix)`` pairs under ``decode_head.`` (``mmseg.renames``)."""
    old, new = next((r for r in renames if key.startswith(f"decode_head.{r[0]}")), ("", ""))
    key = key.replace(f"decode_head.{old}", f"decode_head.{new}", 1)
    if m := re.fullmatch(r"backbone\.stem\.(\d+)\.(.+)", key):
        idx, rest = m.groups()
        return f"encoder.model.bn1.{rest}" if idx == "7" else f"encoder.model.conv1.{idx}.{rest}"
    for src, dst in (
        ("backbone.layer", "encoder.model.layer"),
        ("decode_head.", "decoder."),
        ("auxiliary_head.", "aux_head."),
    ):
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def _dim0(state: Mapping[str, torch.Tensor], key: str) -> int:
    if key not in state:
        raise ConversionError(f"the checkpoint has no {key}: it is incomplete")
    return state[key].shape[0]


def infer_spec(state: Mapping[str, torch.Tensor]) -> ISANetSpec:
    """Read depth, widths, class count and decode head of an mmseg checkpoint's weights.

    Raises:
        ConversionError: Not an mmseg ResNetV1c model with a head that converts.
    """
    if not any(k.startswith("decode_head.") for k in state):
        prefixes = sorted({k.split(".")[0] for k in state})[:8]
        raise ConversionError(
            "this is not an mmseg segmentor checkpoint: no decode_head.* keys (top-level "
            f"names: {', '.join(prefixes) or 'none'}). Convert a released mmseg .pth (`isa-explorer zoo list`)."
        )
    known = [heads.get(n) for n in heads.names() if heads.get(n).mmseg is not None]
    parts = sorted({k.split(".")[1] for k in state if k.startswith("decode_head.")})
    # A head's modules, and no module that names another head (mmseg's non-local head is an
    # FCN head with an nl_block); the head with the most modules if several fit.
    others = {part for part, _ in _HEAD_HINTS} - {m for h in known for m in h.mmseg.modules}
    fits = [h for h in known if set(h.mmseg.modules) <= set(parts) and not others & set(parts)]
    head = max(fits, key=lambda h: len(h.mmseg.modules), default=None)
    if head is None:
        guess = next((name for part, name in _HEAD_HINTS if part in parts), "an unknown head")
        converting = ", ".join(f"{h.mmseg.head_type} ({h.name!r} head)" for h in known)
        raise ConversionError(
            f"no head here converts this checkpoint (decode head looks like {guess}; its modules: "
            f"{', '.join(parts)}). Checkpoints of these mmseg decode heads convert: {converting}."
        )
    if "backbone.stem.0.weight" not in state or "backbone.layer1.0.conv3.weight" not in state:
        raise ConversionError(
            "the backbone is not mmseg's ResNetV1c with bottleneck blocks (no backbone.stem.* "
            "or layer1.0.conv3 keys), the backbone of every model in the zoo; other backbones "
            "have no timm counterpart here."
        )
    if state.get("backbone.layer1.0.downsample.1.weight", torch.empty(0)).dim() == 4:
        raise ConversionError(
            "the backbone is ResNetV1d (average-pool shortcuts), not the ResNetV1c of the "
            "zoo's released models; it cannot be converted."
        )
    blocks = tuple(
        len({k.split(".")[2] for k in state if k.startswith(f"backbone.layer{i}.")})
        for i in range(1, 5)
    )
    depth = next((d for d, layers in RESNET_LAYERS.items() if layers == blocks), None)
    if depth is None:
        raise ConversionError(
            f"backbone stages have {blocks} blocks; supported: "
            + ", ".join(f"R-{d} {layers}" for d, layers in RESNET_LAYERS.items())
        )
    classes = _dim0(state, "decode_head.conv_seg.weight")
    try:
        head_kwargs = head.mmseg_config(state)
    except KeyError as e:  # a key the head reads its options from
        raise ConversionError(f"the checkpoint has no {e.args[0]}: it is incomplete") from None
    aux_channels = None
    if "auxiliary_head.convs.0.conv.weight" in state:
        aux_channels = state["auxiliary_head.convs.0.conv.weight"].shape[0]
        if "auxiliary_head.convs.1.conv.weight" in state or any(
            k.startswith("auxiliary_head.conv_cat.") for k in state
        ):
            raise ConversionError(
                "the auxiliary head has more than one conv (or conv_cat); ISANet's auxiliary "
                "head is mmseg's FCNHead(num_convs=1, concat_input=False)"
            )
        aux_classes = _dim0(state, "auxiliary_head.conv_seg.weight")
        if aux_classes != classes:
            raise ConversionError(f"aux head has {aux_classes} classes, decode head {classes}")
    return ISANetSpec(
        depth=depth,
        stem_width=state["backbone.stem.0.weight"].shape[0],
        channels=tuple(_dim0(state, f"backbone.layer{i}.0.conv1.weight") for i in range(1, 5)),
        classes=classes,
        head=head.name,
        head_kwargs=head_kwargs,
        aux_channels=aux_channels,
    )
