"""Full-size mmseg checkpoints of the five peer heads (NL, CC, DA, GC, EMA): every key of the
released R-50-D8 model (decode head and FCN auxiliary head), converted with ``isa-explorer
convert`` and loaded with ``load_model``, equal to the model's own float64 forward."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmseg_checkpoints import save_mmseg_checkpoint, state_from_listing
from parity import compare_to_reference

from isa_explorer import heads, load_model
from isa_explorer.convert import ConversionError, convert_checkpoint, infer_spec

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parents[1]
#: Key listing of mmseg's ``{name}_r50-d8`` model -> the head it converts to, and the head
#: options its weights set (the published configs').
LISTINGS = {
    "nonlocal": ("nl", {"decoder_channels": 512}),
    "ccnet": ("cc", {"decoder_channels": 512}),
    "danet": ("da", {"decoder_channels": 512}),
    "gcnet": ("gc", {"decoder_channels": 512}),
    "emanet": ("ema", {"decoder_channels": 256}),
}


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _r101(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The R-101-D8 layout: layer3 has 23 blocks, shaped as its block 5 (meta tensors)."""
    state = {k: torch.empty(v.shape, device="meta") for k, v in state.items()}
    for i in range(6, 23):
        for k in [k for k in state if k.startswith("backbone.layer3.5.")]:
            state[k.replace("layer3.5.", f"layer3.{i}.")] = state[k]
    return state


@pytest.mark.slow
@pytest.mark.parametrize("listing", sorted(LISTINGS))
def test_full_size_checkpoint_converts_loads_and_equals_its_fp64_forward(listing, tmp_path):
    head, head_kwargs = LISTINGS[listing]
    state = state_from_listing(FIXTURES / f"{listing}_r50-d8_keys.txt", seed=1)
    spec = infer_spec(state)
    assert spec.head == head and spec.depth == 50 and spec.classes == 19
    assert spec.aux_channels == 256
    assert {k: spec.head_kwargs[k] for k in head_kwargs} == head_kwargs
    assert infer_spec(_r101(state)).depth == 101 and infer_spec(_r101(state)).head == head
    ckpt = save_mmseg_checkpoint(state, tmp_path / f"{listing}_r50-d8.pth")
    out = tmp_path / "converted"
    run = subprocess.run(
        [sys.executable, "-m", "isa_explorer", "convert", str(ckpt), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert f"({head} head)" in run.stdout and "unmapped 0; unexpected 0" in run.stdout
    loaded = load_model(out).eval()
    assert loaded.head == head
    # The model made in this process from the same checkpoint, run in float64, against the
    # converted and reloaded model's float32 logits (tests/parity.py).
    model, report = convert_checkpoint(state, strict=True)
    assert report.mapped == len(state)
    ours = model.state_dict()
    for key, value in state.items():  # the decode head's weights under mmseg's own names
        if key.startswith("decode_head."):
            assert torch.equal(ours[key.replace("decode_head.", "decoder.", 1)], value), key
    gen = torch.Generator().manual_seed(0)
    for size in ((64, 96), (57, 83)):  # a multiple of 8 and not
        x = torch.randn(1, 3, *size, generator=gen)
        with torch.no_grad():
            reference = loaded(x)
        assert reference.shape == (1, 19, *size) and reference.isfinite().all()
        parity = compare_to_reference(_logits, model.eval(), (x,), reference)
        assert parity.ok, f"{listing} {size}: {parity}"
        assert parity.tolerance < 1e-4 * parity.scale, f"{listing} {size}: {parity}"


@pytest.mark.parametrize("listing", sorted(LISTINGS))
def test_an_incomplete_checkpoint_names_the_missing_tensor(listing):
    state = state_from_listing(FIXTURES / f"{listing}_r50-d8_keys.txt")
    state = {k: torch.empty(v.shape, device="meta") for k, v in state.items()}
    key = next(k for k in reversed(state) if k.startswith("decode_head."))
    del state[key]
    head_type = heads.get(LISTINGS[listing][0]).mmseg.head_type
    want = rf"lacks 1 tensors.*decoder\.{key[12:]}.*not a released {head_type} model"
    with pytest.raises(ConversionError, match=want):
        convert_checkpoint(state)
