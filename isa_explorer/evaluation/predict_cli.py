"""Segment images with an ISANet: colour mask, overlay and raw label PNGs per image.

Examples:
    python train/predict.py photo.jpg --out predictions            # the default model
    python train/predict.py images/ --out out --checkpoint runs/synthetic
    python train/predict.py "frames/*.png" --out out --checkpoint converted/isanet_r50-d8_... \\
        --mode slide --device cuda

For every input ``NAME.ext`` it writes ``NAME_colour.png`` (classes in the model's palette),
``NAME_overlay.png`` (the mask blended over the image) and ``NAME_labels.png`` (class ids as
grey values, 16-bit beyond 255 classes) into ``--out``. Images are read by the app's reader,
with its limits and messages (:mod:`isa_explorer.images`): sides of at least 32 pixels, at
most 80 MP; what was converted on the way (EXIF rotation, grey, alpha, the first frame of an
animation) is said per file. Unreadable or too small files are reported and skipped; the others
are still processed. Unlike the app, which resizes images to a longest side of 2048 px for
interactive speed, predict segments each image at its own size (or ``--scale``).
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from isa_explorer.evaluation.cli import add_inference_arguments, resolve_test_mode
from isa_explorer.evaluation.inference import MS_SCALES
from isa_explorer.evaluation.predict import predict_image, save_labels, save_png
from isa_explorer.images import (
    IMAGE_EXTENSIONS,
    CorruptFileError,
    bands_to_rgb8,
    check_sides,
    read_bands,
    read_image,
)
from isa_explorer.palette import colourise, overlay, palette_of
from isa_explorer.pretrained import SYNTHETIC_ONLY, knows_synthetic_classes_only, load_model


def parse_args(
    argv: list[str] | None = None, prog: str = "isa-explorer predict"
) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    add_inference_arguments(
        p, "keep-ratio resize bound before inference (e.g. 2048 512 for ADE20K)"
    )
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlay")
    p.add_argument("--recursive", action="store_true", help="also read sub-folders")
    return p.parse_args(argv)  # fmt: skip


def collect_inputs(inputs: list[str], recursive: bool = False) -> list[Path]:
    """Image files named by ``inputs`` (files, folders of images, glob patterns), in order.

    Raises:
        FileNotFoundError: An input is neither a file, a folder nor a pattern matching files.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            found = [path]
        elif path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(
                p
                for p in path.glob(pattern)
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise FileNotFoundError(
                    f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder {path}"
                )
        else:
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"{item} is not a file or folder and matches no files")
        files += found
    return list(dict.fromkeys(files))  # drop repeats, keep the order


def output_stems(files: list[Path]) -> list[str]:
    """Output name per input: its stem, with the extension added where two stems collide."""
    stems = [f.stem for f in files]
    names: list[str] = []
    for f, stem in zip(files, stems, strict=True):
        name = stem if stems.count(stem) == 1 else f"{stem}_{f.suffix.lstrip('.')}"
        while name in names:
            name += "_"
        names.append(name)
    return names


def main(argv: list[str] | None = None, prog: str = "isa-explorer predict") -> int:
    args = parse_args(argv, prog)
    try:
        files = collect_inputs(args.inputs, args.recursive)
        model = load_model(args.checkpoint, device=args.device, for_inference=True)
        resolve_test_mode(args)
    except (OSError, ValueError) as err:  # no such input or model, zoo download, bad files
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    palette = palette_of(model)
    raw = getattr(model, "image_mode", "rgb") == "raw"
    if knows_synthetic_classes_only(getattr(model, "class_names", ())):
        print(f"note: {SYNTHETIC_ONLY}", file=sys.stderr)
    options = dict(
        mode=args.mode,
        crop_size=tuple(args.crop),
        stride=tuple(args.stride),
        scales=MS_SCALES if args.ms else (1.0,),
        flip=args.flip,
        scale=tuple(args.scale) if args.scale else None,
    )
    skipped = []
    for path, name in zip(
        tqdm(files, desc="predict", unit="image"), output_stems(files), strict=True
    ):
        notes: list[str] = []
        try:
            if raw:  # the model takes the file's own bands; the overlay shows a stretched view
                image = torch.from_numpy(read_bands(path))
                shown = torch.from_numpy(bands_to_rgb8(image.numpy())).permute(2, 0, 1)
            else:
                image = shown = read_image(path, notes)
            check_sides((image.shape[-1], image.shape[-2]), repr(path.name))
            if notes:
                tqdm.write(f"{path}: {'; '.join(notes)}", file=sys.stderr)
            labels = predict_image(model, image, **options)
        except (CorruptFileError, FileNotFoundError, ValueError) as err:
            tqdm.write(f"skipped {path}: {err}", file=sys.stderr)
            skipped.append(path)
            continue
        colour = colourise(labels, palette)
        save_png(colour, args.out / f"{name}_colour.png")
        save_png(overlay(shown, colour, args.alpha), args.out / f"{name}_overlay.png")
        save_labels(labels, args.out / f"{name}_labels.png")
    done = len(files) - len(skipped)
    print(f"{done} image(s) segmented into {args.out}; {len(skipped)} skipped")
    for path in skipped:
        print(f"  skipped {path}", file=sys.stderr)
    return 0 if done > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
