"""Attention probes: long, short and combined maps, and "every position reaches every other"."""

import pytest
import torch
from conftest import small_isanet

from isa_explorer.attention import capture_attention, query_maps
from isa_explorer.heads.isa import affinity_matrices


@pytest.fixture(scope="module", params=["long-short", "short-long"])
def probed(request):
    torch.manual_seed(0)
    model = small_isanet(decoder_order=request.param).eval()
    image = torch.randint(0, 256, (3, 150, 230), dtype=torch.uint8)
    return request.param, capture_attention(model, image)


def test_combined_map_is_the_product_of_the_two_sparse_affinities(probed):
    order, cache = probed
    g = cache.record.grid
    hp, wp = g.padded
    A = affinity_matrices(cache.record)  # dense (Np, Np), small map only
    first, second = order.split("-")
    C = A[second] @ A[first]
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        x = int(torch.randint(0, 230, (1,), generator=gen))
        y = int(torch.randint(0, 150, (1,), generator=gen))
        maps = query_maps(cache, x, y)
        fx, fy = maps.query_feature
        p = (fy + g.pad_top) * wp + fx + g.pad_left
        for name, ref in (("combined", C[p]), (first, A[first][p]), (second, A[second][p])):
            torch.testing.assert_close(
                maps.maps[name].double(), g.crop(ref.view(hp, wp)), atol=1e-6, rtol=1e-5
            )


def test_supports_of_the_long_and_short_maps(probed):
    _, cache = probed
    g = cache.record.grid
    maps = query_maps(cache, 100, 77)
    fx, fy = maps.query_feature
    py, px = fy + g.pad_top, fx + g.pad_left
    rows = torch.arange(g.h)[:, None] + g.pad_top
    cols = torch.arange(g.w)[None, :] + g.pad_left
    same_offset = (rows % g.lh == py % g.lh) & (cols % g.lw == px % g.lw)
    same_block = (rows // g.lh == py // g.lh) & (cols // g.lw == px // g.lw)
    assert torch.equal(maps["long"] > 0, same_offset)
    assert torch.equal(maps["short"] > 0, same_block)
    assert maps.on_image("combined").shape == (150, 230)


@pytest.mark.parametrize("size", [(64, 64), (75, 301), (200, 120), (17, 250)])
def test_every_position_reaches_every_other(size):
    torch.manual_seed(sum(size))
    model = small_isanet().eval()
    cache = capture_attention(model, torch.randint(0, 256, (3, *size), dtype=torch.uint8))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = int(torch.randint(0, size[1], (1,), generator=gen))
        y = int(torch.randint(0, size[0], (1,), generator=gen))
        c = query_maps(cache, x, y)["combined"]
        assert c.shape == cache.feature_size
        assert (c > 0).all(), f"query ({x}, {y}) does not reach every position"
        assert float(c.sum()) <= 1.0 + 1e-5


def test_dense_head_probe_and_errors():
    torch.manual_seed(0)
    cache = capture_attention(small_isanet(head="dense").eval(), torch.rand(3, 64, 96) * 255)
    m = query_maps(cache, 10, 20).maps["dense"]
    assert m.shape == (8, 12) and abs(float(m.sum()) - 1) < 1e-5
    with pytest.raises(ValueError, match="outside"):
        query_maps(cache, 96, 0)
    with pytest.raises(ValueError, match="no attention"):
        capture_attention(small_isanet(head="fcn").eval(), torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="one RGB image"):
        capture_attention(small_isanet().eval(), torch.rand(2, 3, 64, 64))


def test_capture_leaves_the_model_in_the_mode_it_was_in():
    """A model in training mode is probed in eval mode and handed back in training mode."""
    from isa_explorer.heads.isa import ISADecoder

    torch.manual_seed(0)
    model = small_isanet()
    model.encoder.eval()  # parts in different modes stay so
    modes = {name: m.training for name, m in model.named_modules()}
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    cache = capture_attention(model, image)
    assert {name: m.training for name, m in model.named_modules()} == modes
    expected = capture_attention(model.eval(), image)  # the eval-mode model's probe
    torch.testing.assert_close(cache.logits, expected.logits, atol=0, rtol=0)

    decoder = ISADecoder(16, 3, channels=8, isa_channels=8)
    assert decoder.training
    x = torch.randn(1, 16, 12, 20)
    cache = capture_attention(decoder, x)
    assert decoder.training and all(m.training for m in decoder.modules())
    expected = capture_attention(decoder.eval(), x)
    torch.testing.assert_close(cache.logits, expected.logits, atol=0, rtol=0)
