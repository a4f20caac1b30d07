"""One answer at any image size: predict, forward, the probes and mmseg's whole inference.

mmseg runs whole-image inference at the image's own size; so do ``ISANet.forward`` and
``ISANet.predict`` (the app, ``capture_attention``, ``train/evaluate.py`` and
``train/predict.py`` all go through them). Sizes that are not multiples of the output stride
are where padding the input would change the numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_isanet
from parity import compare_to_reference

from isa_explorer.attention import capture_attention, pixel_cells, query_maps
from isa_explorer.convert import convert_checkpoint
from isa_explorer.models.fusion import fuse_for_inference

SMALL = Path(__file__).parent / "fixtures" / "isanet_r50_small.pt"
ODD_SIZES = ((257, 385), (97, 131), (75, 90), (33, 121))


@pytest.fixture(scope="module")
def mmseg_small() -> tuple[torch.nn.Module, dict]:
    """mmseg's 1/8-width ISANet R-50-D8 converted, and the fixture it came from."""
    model, _ = convert_checkpoint(SMALL)
    return model.eval(), torch.load(SMALL, weights_only=True)


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, h, w), generator=gen, dtype=torch.uint8)


def test_predict_is_forward_at_the_images_own_size():
    torch.manual_seed(0)
    m = small_isanet().eval()
    for h, w in ODD_SIZES:
        x = torch.randn(2, 3, h, w)
        out = m.predict(x)
        assert out.shape == (2, 5, h, w) and torch.isfinite(out).all()
        with torch.no_grad():
            torch.testing.assert_close(out, m(x), atol=0, rtol=0)


def test_predict_matches_mmseg_whole_inference_and_padding_would_not(mmseg_small):
    model, fixture = mmseg_small
    image = fixture["image_rgb_0_255"]  # (1, 3, 75, 90): neither side a multiple of 8
    # mmseg's whole inference: its decode logits upsampled (bilinear) to the image.
    expected = F.interpolate(fixture["decode_logits"], size=(75, 90), mode="bilinear")

    def predicted(m, img):
        return m.predict(m.normalize(img))

    parity = compare_to_reference(predicted, model, (image,), expected)
    assert parity.ok, str(parity)
    cache = capture_attention(model, image[0])
    torch.testing.assert_close(cache.logits, predicted(model, image)[0], atol=0, rtol=0)
    # The old behaviour (pad bottom/right to the stride, crop) is far off on this image.
    model.pad_input = True
    try:
        padded = predicted(model, image)
    finally:
        model.pad_input = False
    assert (padded - expected).abs().max() > 1e3 * parity.tolerance


@pytest.mark.parametrize("size", [(257, 385), (97, 131)])
def test_probes_forward_and_fused_model_agree(mmseg_small, size):
    model, _ = mmseg_small
    image = _image(*size, seed=size[0])
    with torch.no_grad():
        forward = model(model.normalize(image))[0]
    cache = capture_attention(model, image[0])
    torch.testing.assert_close(cache.logits, forward, atol=0, rtol=0)
    # The fused model (BatchNorm folded, streamed ISA) the app runs: float32 reordering only.
    fast = capture_attention(fuse_for_inference(copy.deepcopy(model)), image[0]).logits
    scale = forward.abs().max()
    assert (fast - forward).abs().max() <= 1e-4 * scale
    assert (fast.argmax(0) == forward.argmax(0)).float().mean() > 0.999
    h, w = -(-size[0] // 8), -(-size[1] // 8)  # ceil: the feature map of the unpadded image
    assert cache.feature_size == (h, w)
    maps = query_maps(cache, size[1] - 1, size[0] - 1)  # the bottom-right pixel
    assert maps.query_feature == (w - 1, h - 1)
    assert maps.on_image("combined").shape == size


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("pixels,cells", [(257, 33), (97, 13), (131, 17), (64, 8), (75, 10)])
def test_a_pixels_cell_is_the_one_that_weighs_most_in_the_upsampling(pixels, cells, align_corners):
    """pixel_cells picks, for every pixel, a cell of largest bilinear weight in the logits."""
    eye = torch.eye(cells, dtype=torch.float64)[None, :, :, None]  # (1, cells, cells, 1)
    up = F.interpolate(eye, size=(pixels, 1), mode="bilinear", align_corners=align_corners)
    weights = up[0, :, :, 0]  # (cells, pixels): weight of each cell in each pixel
    picked = pixel_cells(pixels, cells, align_corners)
    assert picked.shape == (pixels,) and np.all(np.diff(picked) >= 0)
    got = weights[torch.from_numpy(picked), torch.arange(pixels)]
    assert torch.all(got >= weights.max(0).values - 1e-12)
    assert picked[0] == 0 and picked[-1] == cells - 1
    if pixels == cells * 8 and not align_corners:  # multiples of the stride: y // 8
        np.testing.assert_array_equal(picked, np.arange(pixels) // 8)


def test_cell_edges_and_pooling_follow_the_unpadded_geometry(mmseg_small):
    model, _ = mmseg_small
    cache = capture_attention(model, _image(97, 131)[0])
    rows, cols = cache.cell_edges()
    assert rows[0] == 0 and rows[-1] == 97 and cols[0] == 0 and cols[-1] == 131
    assert len(rows) == 14 and len(cols) == 18 and np.all(np.diff(rows) > 0)
    for x, y in ((0, 0), (130, 96), (64, 50)):
        fx, fy = cache.to_feature(x, y)
        assert cols[fx] <= x < cols[fx + 1] and rows[fy] <= y < rows[fy + 1]
    ones = torch.zeros(97, 131)
    ones[rows[3] : rows[4], cols[5] : cols[6]] = 1.0  # exactly the pixels of cell (5, 3)
    pooled = cache.cell_mean(ones)
    assert pooled[3, 5] == 1 and pooled.sum() == 1


def test_pad_input_pads_bottom_right_for_encoders_that_need_it():
    torch.manual_seed(0)
    m = small_isanet(pad_input=True).eval()
    x = torch.randn(1, 3, 75, 90)
    with torch.no_grad():
        m.pad_input = False
        reference = m(F.pad(x, (0, 6, 0, 5)))[..., :75, :90]
        m.pad_input = True
        torch.testing.assert_close(m.predict(x), reference, atol=0, rtol=0)
        assert m.forward_train(x)["out"].shape == (1, 5, 75, 90)
    cache = capture_attention(m, torch.zeros(3, 75, 90, dtype=torch.uint8))
    assert cache.feature_size == (10, 12)  # the padded 80x96 image
    np.testing.assert_array_equal(cache.pixel_cells[0], np.arange(75) // 8)
