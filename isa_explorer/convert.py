"""Convert mmsegmentation's released checkpoints (ISANet, FCN and the context heads NL, CC, DA,
GC, EMA on ResNetV1c) into ISA Explorer models.

The weights map one to one onto ``ISANet(encoder_name="tu-resnet50c" / "tu-resnet101c",
aux_head=True)``; :mod:`isa_explorer.mmseg_spec` renames the keys and reads the architecture from
the weights (any registered head with mmseg names converts). Command line:
``isa-explorer convert isanet_r50-d8_....pth converted/isanet_r50_cityscapes``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from isa_explorer import heads
from isa_explorer.data.info import ADE20K_INFO, CITYSCAPES_INFO, VOC_INFO
from isa_explorer.mmseg_spec import (
    RESNET_LAYERS,
    ConversionError,
    ISANetSpec,
    infer_spec,
    rename_key,
)
from isa_explorer.models.isanet import ISANet
from isa_explorer.safe_load import CheckpointFileError, read_torch_file

__all__ = [
    "DATASETS",
    "RESNET_LAYERS",
    "ConversionError",
    "ConversionReport",
    "ISANetSpec",
    "convert_checkpoint",
    "infer_spec",
    "load_mmseg_checkpoint",
    "main",
    "rename_key",
]

#: Dataset name -> info (class names, palette); a checkpoint's class count picks one.
DATASETS = {"cityscapes": CITYSCAPES_INFO, "ade20k": ADE20K_INFO, "voc": VOC_INFO}
_DEFAULT_HEAD = inspect.signature(ISANet).parameters["head"].default  # not named in the report
_LABELS = {"decoder_channels": "head {} ch", "decoder_isa_channels": "isa {} ch"}  # head options


@dataclass
class ConversionReport:
    """Outcome of a conversion.

    Attributes:
        spec: The inferred model.
        dataset: Dataset whose class names and palette the model carries, ``None`` if none
            matched (then names come from the checkpoint's meta, if it has them, else ``"0"``...).
        mapped: Number of checkpoint tensors loaded into the model.
        unmapped: Checkpoint keys outside ``backbone.``/``decode_head.``/``auxiliary_head.``
            (left out).
        unexpected: Checkpoint keys that were renamed but name no tensor of the model (left out).
        named: Whether the model carries class names (from ``dataset`` or the checkpoint).
    """

    spec: ISANetSpec
    dataset: str | None
    mapped: int
    unmapped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    named: bool = False

    def __str__(self) -> str:
        s = self.spec
        aux = f"aux head {s.aux_channels} ch" if s.aux_channels else "no aux head"
        labels = self.dataset or ("names from the checkpoint" if self.named else "generic names")
        options = {k: v for k, v in s.head_kwargs.items() if k != "head_options"}
        options.update(s.head_kwargs.get("head_options", {}))  # a head's own, by name
        parts = [_LABELS.get(k, f"{k} {{}}").format(v) for k, v in options.items()]
        head = "" if s.head == _DEFAULT_HEAD else f" ({s.head} head)"
        lines = [
            f"ISANet R-{s.depth}-D8{head}: "
            + ", ".join([f"{s.classes} classes ({labels})", *parts, aux]),
            f"mapped {self.mapped} tensors; unmapped {len(self.unmapped)}; "
            f"unexpected {len(self.unexpected)}",
        ]
        lines += [f"  unmapped: {k}" for k in self.unmapped]
        lines += [f"  unexpected: {k}" for k in self.unexpected]
        return "\n".join(lines)


def load_mmseg_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an mmseg checkpoint safely (``torch.load(..., weights_only=True)``).

    Accepts ``{"state_dict": ..., "meta": ...}`` (what mmseg saves) or a bare state dict.

    Returns:
        ``(state_dict, meta)``; ``meta`` is ``{}`` when the file has none.

    Raises:
        ConversionError: Missing file, or one that is not a weights-only PyTorch checkpoint
            (empty, truncated, text, random bytes, a directory, or holding Python objects that
            safe loading refuses); the message is one sentence saying which.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConversionError(
            f"checkpoint {path} not found: download a released mmseg .pth first "
            "(`isa-explorer zoo list` names them; `load_model(NAME)` downloads and converts)"
        )
    try:
        ckpt = read_torch_file(path, "checkpoint")
    except CheckpointFileError as e:
        raise ConversionError(str(e)) from None
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, Mapping):
        raise ConversionError(
            f"{path} holds a {type(state).__name__} under 'state_dict', not the model's tensors"
        )
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    state = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, dict(meta)


def _labels(
    classes: int, dataset: str | None, meta: Mapping[str, Any]
) -> tuple[str | None, list[str] | None, list[list[int]] | None]:
    """``(dataset, class_names, palette)`` for a model of ``classes`` classes."""
    if dataset is not None:
        if dataset not in DATASETS:
            raise ConversionError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
        n = DATASETS[dataset].num_classes
        if n != classes:
            raise ConversionError(
                f"--dataset {dataset} has {n} classes but the checkpoint has {classes}"
            )
    else:
        dataset = next((d for d, i in DATASETS.items() if i.num_classes == classes), None)
    if dataset is not None:
        info = DATASETS[dataset]
        return dataset, list(info.class_names), [list(c) for c in info.palette]
    # mmseg 0.x keeps CLASSES/PALETTE in meta, mmseg 1.x meta["dataset_meta"].
    dmeta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    names = meta.get("CLASSES") or dmeta.get("classes")
    palette = meta.get("PALETTE") or dmeta.get("palette")
    names = list(map(str, names)) if _sized(names, classes) else None
    try:
        ok = _sized(palette, classes) and all(_sized(c, 3) for c in palette)
        palette = [[int(v) for v in c] for c in palette] if ok else None
    except (TypeError, ValueError):  # colours that are not numbers
        palette = None
    return None, names, palette


def _sized(value: Any, n: int) -> bool:
    """Whether ``value`` is a list or tuple of ``n`` items (checkpoint meta is unchecked data)."""
    return isinstance(value, list | tuple) and len(value) == n


def convert_checkpoint(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    dataset: str | None = None,
    down_factor: Sequence[int] = (8, 8),
    strict: bool = False,
    align_corners: bool | None = None,
) -> tuple[ISANet, ConversionReport]:
    """Build an :class:`ISANet` holding an mmseg ISANet (or FCN) checkpoint's weights.

    Args:
        checkpoint: Path of an mmseg ``.pth``, or its (``backbone.``/``decode_head.``...)
            state dict.
        dataset: ``"cityscapes"``, ``"ade20k"`` or ``"voc"`` for class names and palette;
            ``None`` picks by class count (19, 150, 21).
        down_factor: ISA local block size (``(8, 8)`` in every released model).
        strict: Also fail on checkpoint keys left out (``unmapped``/``unexpected``).
        align_corners: ``align_corners`` of the logits' upsampling; ``None`` takes ``True`` for
            a file whose name says ``769x769`` (mmseg trained those Cityscapes models with it).

    Returns:
        ``(model, report)``; the model is in eval mode.

    Raises:
        ConversionError: No head converts it, or weights missing / of the wrong shape.
    """
    is_file = isinstance(checkpoint, (str, Path))
    state, meta = load_mmseg_checkpoint(checkpoint) if is_file else (dict(checkpoint), {})
    if align_corners is None:
        align_corners = is_file and "769x769" in Path(checkpoint).name
    spec = infer_spec(state)
    dataset, names, palette = _labels(spec.classes, dataset, meta)
    model = ISANet(
        **spec.model_kwargs(),
        decoder_down_factor=tuple(down_factor),
        class_names=names,
        palette=palette,
        align_corners=align_corners,
    )
    target = model.state_dict()
    renamed, unmapped, unexpected = {}, [], []
    renames = heads.get(spec.head).mmseg.renames
    for key, value in state.items():
        new = rename_key(key, renames)
        if new is None:
            unmapped.append(key)
        elif new not in target:
            unexpected.append(key)
        else:
            renamed[new] = value
    report = ConversionReport(spec, dataset, len(renamed), unmapped, unexpected, bool(names))
    if strict and (unmapped or unexpected):
        raise ConversionError(f"checkpoint keys left out (strict):\n{report}")
    missing = sorted(set(target) - set(renamed))
    if missing:
        raise ConversionError(
            f"the checkpoint lacks {len(missing)} tensors of the model, e.g. "
            f"{', '.join(missing[:5])}; it is incomplete or not a released "
            f"{heads.get(spec.head).mmseg.head_type} model."
        )
    wrong = [k for k, v in renamed.items() if v.shape != target[k].shape]
    if wrong:
        k = wrong[0]
        raise ConversionError(
            f"{len(wrong)} tensors have unexpected shapes, e.g. {k}: checkpoint "
            f"{tuple(renamed[k].shape)}, model {tuple(target[k].shape)}"
        )
    model.load_state_dict(renamed, strict=True)
    return model.eval(), report


def main(argv: Sequence[str] | None = None, prog: str = "isa-explorer convert") -> int:
    """``isa-explorer convert IN.pth OUT_DIR``: convert and ``save_pretrained``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert an mmsegmentation ISANet (or FCN) checkpoint into an ISA Explorer "
        "model directory (safetensors + config; load with ISANet.from_pretrained(OUT_DIR)).",
    )
    parser.add_argument("checkpoint", type=Path, help="mmseg ISANet .pth file")
    parser.add_argument("out_dir", type=Path, help="output directory")
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="class names and palette")
    parser.add_argument(
        "--down-factor", type=int, nargs=2, default=(8, 8), metavar=("H", "W"), help="ISA block"
    )
    parser.add_argument("--strict", action="store_true", help="fail on left-out keys")
    parser.add_argument(
        "--align-corners",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="align_corners of the logits' upsampling (default: on for *769x769* files)",
    )
    args = parser.parse_args(argv)
    try:
        model, report = convert_checkpoint(
            args.checkpoint, args.dataset, args.down_factor, args.strict, args.align_corners
        )
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        model.save_pretrained(args.out_dir, dataset=report.dataset)
    except OSError as e:
        print(
            f"error: cannot write the model to {args.out_dir}: {e.strerror or e}", file=sys.stderr
        )
        return 1
    print(report)
    print(f"saved to {args.out_dir} (ISANet.from_pretrained({str(args.out_dir)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
