"""ISANet as a segmentation-models-pytorch model: any smp encoder + the ISA decoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationModel
from segmentation_models_pytorch.base.hub_mixin import supports_config_loading
from segmentation_models_pytorch.encoders import get_encoder

from isa_explorer import heads
from isa_explorer.heads.protocol import HeadConfig, Record
from isa_explorer.models.fusion import refuse_training_if_fused
from isa_explorer.models.layers import AttnImpl, eval_mode

#: mmsegmentation's normalisation (RGB, 0-255 pixels) of the published ISANet models.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class ISANet(SegmentationModel):
    """ISANet (Huang et al., arXiv 1907.12273) on any smp encoder.

    ``ISANet(encoder_name="tu-resnet50c", classes=19, aux_head=True)`` is mmsegmentation's
    ISANet R-50-D8 (``tu-resnet101c`` the R-101-D8). ``head`` names any registered head
    (:mod:`isa_explorer.heads`): ``"dense"`` is ISA's dense ablation, ``"fcn"`` a head without
    attention, for comparisons.

    Args:
        encoder_name: smp encoder name (``resnet18``, ``tu-resnet50c``, ...).
        encoder_depth: Encoder stages used (3-5); the head sits on the last one.
        encoder_weights: Pretrained encoder weights (``"imagenet"``) or ``None``.
        encoder_output_stride: Output stride of the last stage (8 as published, or 16).
        decoder_channels: Head channels (512).
        decoder_isa_channels: Query/key channels (256).
        decoder_down_factor: ISA local block size (8, 8).
        decoder_order: ``"long-short"`` or ``"short-long"``.
        decoder_dropout: Dropout before the classifier.
        decoder_attn_impl: ``"fused"`` (SDPA), ``"explicit"`` (materialised affinities) or
            ``"auto"`` (explicit for CPU training steps on maps up to 128x256, else fused).
        head: A registered head's name (``isa_explorer.heads.names()``).
        head_options: Options of the head's own (documented by the head).
        aux_head: Add mmseg's FCN auxiliary head on the second-to-last stage.
        aux_channels: Channels of the auxiliary head (256).
        in_channels: Image channels.
        classes: Number of classes.
        class_names: Names of the classes (saved with the model).
        palette: One RGB colour per class (saved with the model).
        mean: Per-channel mean of the 0-255 RGB input normalisation.
        std: Per-channel std of the input normalisation.
        align_corners: ``align_corners`` of the final bilinear upsampling of the logits (mmseg's
            Cityscapes 769x769 models were trained with ``True``).
        pad_input: Zero-pad the input at the bottom/right to a multiple of the output stride
            (and crop the logits back): only for encoders that need it (windowed vision
            transformers). ``False`` runs convolutional encoders at the image's own size, as
            mmsegmentation does; padding changes the numbers where ``H`` or ``W`` is not a
            multiple of the stride.
        image_mode: What the model takes: ``"rgb"``, 8-bit RGB (0-255), or ``"raw"``, an image
            file's own bands and values at full precision (:func:`isa_explorer.images.read_bands`:
            16-bit slices, multi-band tiles), normalised by ``mean``/``std`` (the dataset's own).
        kwargs: Passed to the encoder (timm ``tu-`` encoders only).

    Shapes:
        ``forward``: ``(B, in_channels, H, W) -> (B, classes, H, W)`` logits, any ``H, W``.
    """

    requires_divisible_input_shape = False

    @supports_config_loading
    def __init__(
        self,
        encoder_name: str = "tu-resnet50c",
        encoder_depth: int = 5,
        encoder_weights: str | None = "imagenet",
        encoder_output_stride: int = 8,
        decoder_channels: int = 512,
        decoder_isa_channels: int = 256,
        decoder_down_factor: Sequence[int] = (8, 8),
        decoder_order: str = "long-short",
        decoder_dropout: float = 0.1,
        decoder_attn_impl: AttnImpl = "fused",
        head: str = "isa",
        head_options: Mapping[str, Any] | None = None,
        aux_head: bool = False,
        aux_channels: int = 256,
        in_channels: int = 3,
        classes: int = 19,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        align_corners: bool = False,
        pad_input: bool = False,
        image_mode: str = "rgb",
        **kwargs: Any,
    ):
        super().__init__()
        if image_mode not in ("rgb", "raw"):
            raise ValueError(f"image_mode must be 'rgb' or 'raw', got {image_mode!r}")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(
                f"mean and std need one value per input channel ({in_channels}), got "
                f"{len(mean)} and {len(std)}"
            )
        if class_names is not None and len(class_names) != classes:
            raise ValueError(f"{len(class_names)} class names given for {classes} classes")
        if palette is not None and len(palette) != classes:
            raise ValueError(f"{len(palette)} palette colours given for {classes} classes")
        self.encoder = get_encoder(
            encoder_name,
            in_channels=in_channels,
            depth=encoder_depth,
            weights=encoder_weights,
            output_stride=encoder_output_stride,
            **kwargs,
        )
        # The encoder's weights are saved with the model: a reloaded model must not download them.
        self._hub_mixin_config["encoder_weights"] = None
        enc_ch = self.encoder.out_channels
        config = HeadConfig(
            decoder_channels,
            decoder_isa_channels,
            decoder_dropout,
            decoder_attn_impl,
            tuple(decoder_down_factor),
            decoder_order,
            dict(head_options or {}),
        )
        self.decoder = heads.get(head).build(enc_ch[-1], classes, config)
        from isa_explorer.heads.fcn import FCNHead  # mmseg's auxiliary head

        self.aux_head = FCNHead(enc_ch[-2], classes, aux_channels, 1) if aux_head else None
        self.segmentation_head = None
        self.classification_head = None
        self.head = head
        self.classes = classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(classes)]
        self.palette = [list(map(int, c)) for c in palette] if palette else None
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.align_corners = align_corners
        self.pad_input = bool(pad_input)
        self.image_mode = image_mode
        self.name = f"isanet-{head}-{encoder_name}"

    def initialize(self) -> None:
        """Decoder weights keep PyTorch's default initialisation (as mmseg's heads)."""

    @property
    def output_stride(self) -> int:
        return self.encoder.output_stride

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """0-255 RGB ``(B, 3, H, W)`` -> normalised model input."""
        return (image.to(self.mean.dtype) - self.mean) / self.std

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits for training at the input's size: the head's outputs
        (:meth:`~isa_explorer.heads.protocol.Head.forward_train`, ``"out"`` and any others)
        and ``"aux"`` (with an auxiliary head)."""
        features = self.encoder(self._pad(x))
        out = {k: self._resize(v, x) for k, v in self.decoder.forward_train(features[-1]).items()}
        if self.aux_head is not None:
            out["aux"] = self._resize(self.aux_head(features[-2]), x)
        return out

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Record]:
        """``(B, C, H, W)`` normalised images -> ``(B, classes, H, W)`` logits.

        The network runs at the input's own size (padded only with ``pad_input=True``).
        With ``return_attention=True`` (heads with attention maps): ``(logits, record)``, the
        head's :class:`~isa_explorer.heads.protocol.Record` at feature resolution.
        """
        features = self.encoder(self._pad(x))[-1]
        if not return_attention:
            return self._resize(self.decoder(features), x)
        if not type(self.decoder).maps:
            raise ValueError(f"the {self.head!r} head has no attention to return")
        logits, attn = self.decoder(features, return_attention=True)
        return self._resize(logits, x), attn

    @torch.inference_mode()
    def predict(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Record]:
        """:meth:`forward` in eval mode without autograd: the same logits, for any input size.

        A model in training mode is switched to eval for the call and back after it (smp's
        ``SegmentationModel.predict`` leaves the model in eval mode).
        """
        with eval_mode(self):
            return self(x, return_attention=return_attention)

    def train(self, mode: bool = True) -> ISANet:
        """``nn.Module.train``; refused for a model fused for inference (checked first)."""
        refuse_training_if_fused(self, mode)
        return super().train(mode)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """smp's ``save_pretrained``; refused for a model fused for inference."""
        refuse_training_if_fused(self)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded at the bottom/right to the output stride when ``pad_input`` is set."""
        s = self.output_stride if self.pad_input else 1
        return F.pad(x, (0, -x.shape[-1] % s, 0, -x.shape[-2] % s)) if s > 1 else x

    def _resize(self, logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Logits upsampled to the (with ``pad_input``, padded) input, cropped to its size."""
        h, w = like.shape[-2:]
        s = self.output_stride if self.pad_input else 1
        size = (h + -h % s, w + -w % s)
        out = F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)
        return out[..., :h, :w]
