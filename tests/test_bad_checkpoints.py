"""Bad checkpoint files: one line saying what is wrong, never a traceback, never unsafe advice.

Each file is what users really end up with: an interrupted download (empty, truncated zip,
truncated legacy pickle), an HTML error page saved as ``.pth``, a text file, random bytes, a
directory, and a pickle holding Python objects that safe loading refuses.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from isa_explorer.convert import main
from isa_explorer.safe_load import CheckpointFileError, read_torch_file
from isa_explorer.training.checkpoint import load_checkpoint

SMALL = Path(__file__).parent / "fixtures" / "isanet_r50_small.pt"


def _zip_bytes(tmp: Path) -> bytes:
    torch.save({"state_dict": torch.load(SMALL, weights_only=True)["state_dict"]}, tmp)
    return tmp.read_bytes()


def _legacy_bytes(tmp: Path) -> bytes:
    torch.save({"a": torch.zeros(1000)}, tmp, _use_new_zipfile_serialization=False)
    return tmp.read_bytes()


def _foreign_zip(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not weights")


# name -> (make the bad file in a folder, words the message must contain)
CASES = {
    "empty": (lambda d: (d / "x.pth").write_bytes(b""), "is empty (0 bytes)"),
    "truncated-zip": (
        lambda d: (d / "x.pth").write_bytes(_zip_bytes(d / "full.pth")[:100_000]),
        "zip archive (100000 bytes) is truncated or damaged",
    ),
    "truncated-legacy": (
        lambda d: (d / "x.pth").write_bytes(_legacy_bytes(d / "full.pth")[:2000]),
        "damaged or truncated PyTorch checkpoint (legacy pickle format",
    ),
    "short-text": (lambda d: (d / "x.pth").write_text("hello\n"), "is a text file"),
    "html-page": (
        lambda d: (d / "x.pth").write_text("<html><body>404 Not Found</body></html>"),
        "it starts with '<html><body>404 Not Found</body></html>'",
    ),
    "random-bytes": (
        lambda d: (d / "x.pth").write_bytes(b"\x9f\x00" + os.urandom(4094)),
        "is not a PyTorch checkpoint (it starts with bytes 9f 00",
    ),
    "directory": (lambda d: (d / "x.pth").mkdir(), "is a directory, not a checkpoint file"),
    "pickle-protocol-5": (
        lambda d: torch.save({"a": torch.zeros(3)}, d / "x.pth", pickle_protocol=5),
        "safe loading cannot read (Unsupported operand",
    ),
    "foreign-zip": (lambda d: _foreign_zip(d / "x.pth"), "is a zip archive but not a PyTorch"),
    "python-objects": (
        lambda d: torch.save({"meta": {"args": argparse.Namespace(lr=0.01)}}, d / "x.pth"),
        "holds Python objects besides tensors (it needs argparse.Namespace)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_converter_says_in_one_line_what_is_wrong(case, tmp_path, capsys):
    make, words = CASES[case]
    make(tmp_path)
    out = tmp_path / "out"
    assert main([str(tmp_path / "x.pth"), str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and words in err, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err + captured.out
    assert "weights_only=False" not in err and "trust" not in err.lower()
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("case", ["empty", "truncated-zip", "html-page", "python-objects"])
def test_every_reader_of_torch_files_gives_the_same_message(case, tmp_path):
    make, words = CASES[case]
    make(tmp_path)
    with pytest.raises(CheckpointFileError) as direct:
        read_torch_file(tmp_path / "x.pth")
    assert words.split(" (")[0] in str(direct.value)
    with pytest.raises(ValueError, match="train/fit.py checkpoint|is empty|Python objects"):
        load_checkpoint(tmp_path / "x.pth")  # resuming a run


def test_a_good_file_still_loads(tmp_path):
    state = read_torch_file(SMALL)
    assert set(state) >= {"state_dict", "image_rgb_0_255"}


def test_non_string_keys_and_odd_meta_are_ignored_not_a_crash(tmp_path):
    from isa_explorer.convert import convert_checkpoint

    small = torch.load(SMALL, weights_only=True)["state_dict"]
    odd = tmp_path / "odd.pth"
    torch.save({"state_dict": {**small, 1: torch.zeros(1)}, "meta": {"CLASSES": 5,
               "dataset_meta": [1, 2], "PALETTE": [["r", "g", "b"]] * 7}}, odd)  # fmt: skip
    model, report = convert_checkpoint(odd)
    assert report.mapped == len(small) and not report.named


def test_a_weights_file_of_another_model_is_refused(tmp_path):
    import shutil

    from safetensors.torch import save_file

    from isa_explorer.pretrained import DEFAULT_MODEL_DIR, DamagedModelError, load_model

    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "m")
    save_file({"a": torch.zeros(1)}, tmp_path / "m" / "model.safetensors")
    with pytest.raises(DamagedModelError, match="does not fit its config.json.*missing"):
        load_model(tmp_path / "m")
