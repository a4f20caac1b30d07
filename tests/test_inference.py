"""Models fused for inference, banded convolutions and the streamed ISA path give the plain
modules' own results.

BatchNorm statistics are randomised throughout: with the initial ones (mean 0, variance 1)
a wrongly folded scale or shift would go unnoticed.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import small_isanet

from isa_explorer.heads import isa_stream
from isa_explorer.heads.dense import DenseAttentionDecoder
from isa_explorer.heads.isa import ISADecoder
from isa_explorer.models import fuse_for_inference, is_fused
from isa_explorer.models import layers as layers_module
from isa_explorer.models.layers import ConvBNReLU, TokenConv2d


def randomise_bn(module: torch.nn.Module) -> torch.nn.Module:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return module.eval()


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 2), (5, 1)])
@pytest.mark.parametrize("band_rows", [1, 3, 4])
def test_banded_convolution_equals_the_whole_one(kernel, dilation, band_rows, monkeypatch):
    """At inference on the CPU a large input runs in row bands: the same numbers."""
    torch.manual_seed(0)
    conv = TokenConv2d(6, 5, kernel, padding=dilation * (kernel // 2), dilation=dilation)
    x = torch.randn(2, 6, 11, 9)
    with torch.no_grad():
        expected = F.conv2d(x, conv.weight, conv.bias, 1, conv.padding, dilation)
        monkeypatch.setattr(layers_module, "BAND_BYTES", band_rows * 2 * 6 * 9 * 4)
        calls = []
        real = F.conv2d
        monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
        got = conv(x)
    assert len(calls) == -(-11 // band_rows) > 1  # one call per band
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    with torch.enable_grad():  # with autograd: the whole input at once
        calls.clear()
        torch.testing.assert_close(conv(x), expected, atol=1e-6, rtol=1e-5)
        assert len(calls) == 1


@pytest.mark.parametrize("kernel,dilation", [(1, 1), (3, 1), (3, 2)])
@pytest.mark.parametrize("band_rows", [1, 4])
def test_banded_convolution_of_a_concatenation_equals_cat_then_conv(
    kernel, dilation, band_rows, monkeypatch
):
    """``conv((x, y))`` is ``conv(cat[x, y])``: made a band at a time at CPU inference
    (1x1 included), whole under autograd."""
    torch.manual_seed(0)
    conv = TokenConv2d(7, 5, kernel, padding=dilation * (kernel // 2), dilation=dilation)
    x, y = torch.randn(2, 4, 11, 9), torch.randn(2, 3, 11, 9)
    cats = []
    real_cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda t, *a, **k: cats.append(1) or real_cat(t, *a, **k))
    with torch.no_grad():
        expected = F.conv2d(real_cat([x, y], 1), conv.weight, conv.bias, 1, conv.padding, dilation)
        monkeypatch.setattr(layers_module, "BAND_BYTES", band_rows * 2 * 7 * 9 * 4)
        got = conv((x, y))
    assert cats == []  # never concatenated whole
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    with torch.enable_grad():
        torch.testing.assert_close(conv((x, y)), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="one input"):
        conv((x.flatten(2).mT, y.flatten(2).mT))


@pytest.mark.parametrize("name", ["fcn", "nl", "cc", "gc", "ema"])
def test_heads_with_conv_cat_give_the_same_logits_banded(name, monkeypatch):
    """The heads whose ``conv_cat`` reads ``cat[x, .]``: the same logits at inference, in
    bands of one row, as with autograd (whole maps)."""
    from isa_explorer import heads
    from isa_explorer.heads.protocol import HeadConfig

    torch.manual_seed(0)
    head = randomise_bn(heads.get(name).build(24, 3, HeadConfig(channels=16)))
    x = torch.randn(1, 24, 12, 10)
    with torch.enable_grad():
        expected = head(x).detach()
    monkeypatch.setattr(layers_module, "BAND_BYTES", 1)  # one row per band
    calls = []
    real = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(a[0].shape[1]) or real(*a, **k))
    with torch.no_grad():
        got = head(x)
    assert calls.count(24 + 16) == 12  # conv_cat: one call per row of the map
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_fusing_folds_batchnorm_in_place_once():
    torch.manual_seed(0)
    model = randomise_bn(small_isanet(aux_head=True))
    plain = copy.deepcopy(model)
    keys = list(model.state_dict())
    assert not is_fused(model)
    assert fuse_for_inference(model) is model and is_fused(model)
    assert not any(m.training for m in model.modules())  # eval mode, new modules included
    head_bns = [m for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert head_bns == []  # folded into the convolutions, none left to run per forward
    layers = [m for m in model.modules() if isinstance(m, ConvBNReLU)]
    assert layers and all(isinstance(m.bn, torch.nn.Identity) for m in layers)
    assert list(plain.state_dict()) == keys  # an unfused model keeps mmseg's keys
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = plain(x)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        fuse_for_inference(model)  # idempotent: nothing changes the second time
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    for target in (model, model.decoder, model.aux_head, layers[0]):
        with pytest.raises(RuntimeError, match="fused for inference.*cannot be trained"):
            target.train()
        assert not any(m.training for m in model.modules())  # refused before any change
    with pytest.raises(RuntimeError, match="fused for inference"):
        model.save_pretrained("unused")
    model.eval()  # eval stays allowed


@pytest.mark.parametrize("order", ["long-short", "short-long"])
@pytest.mark.parametrize("size", [(19, 21), (16, 12), (7, 30)])
@pytest.mark.parametrize("token_budget", [1, 50, None])
def test_streamed_isa_context_equals_the_explicit_path(order, size, token_budget):
    torch.manual_seed(0)
    kw = dict(in_channels=12, classes=3, channels=32, isa_channels=16, down_factor=(4, 3))
    explicit = randomise_bn(ISADecoder(**kw, order=order, attn_impl="explicit"))
    fused = ISADecoder(**kw, order=order, attn_impl="fused").eval()
    fused.load_state_dict(explicit.state_dict())
    fused.token_budget = token_budget
    x = torch.randn(2, 12, *size)
    with torch.no_grad():
        logits_e, attn_e = explicit(x, return_attention=True)
        for model in (fused, fuse_for_inference(copy.deepcopy(fused))):
            logits_s, attn_s = model(x, return_attention=True)
            torch.testing.assert_close(logits_s, logits_e, atol=1e-5, rtol=1e-5)
            # The streamed queries and keys, written chunk by chunk, are the whole-map ones.
            assert set(attn_s.tensors()) == {"long_q", "long_k", "short_q", "short_k", "first_keys"}
            for name, value in attn_e.tensors().items():
                torch.testing.assert_close(attn_s.tensors()[name], value, atol=1e-5, rtol=1e-5)


def test_inference_streams_chunk_by_chunk_and_autograd_runs_the_whole_map(monkeypatch):
    """A small budget gives a chunk per sequence, a larger one whole rows of sequences."""
    decoder = ISADecoder(8, 2, 16, 8, down_factor=(4, 4)).eval()
    sizes = []
    for block in (decoder.global_relation, decoder.local_relation):
        block.register_forward_hook(lambda m, i, o: sizes.append(tuple(i[0].shape)))
    x = torch.randn(1, 8, 12, 20)  # gh, gw = 3, 5
    decoder.token_budget = 1
    with torch.no_grad():
        decoder(x)
    # long step: lh * lw = 16 sequences of gh * gw = 15 positions; short step: gh * gw = 15
    # sequences of lh * lw = 16 positions; one sequence a chunk.
    assert sizes == [(1, 15, 16)] * 16 + [(1, 16, 16)] * 15
    sizes.clear()
    decoder.token_budget = 40  # two sequences a chunk; a row of the long step holds four
    with torch.no_grad():
        decoder(x)
    assert sizes == [(2, 15, 16)] * 8 + [(2, 16, 16), (2, 16, 16), (1, 16, 16)] * 3
    sizes.clear()
    decoder.token_budget = 80  # whole rows: the long step's four sequences, the short step's five
    with torch.no_grad():
        decoder(x)
    assert sizes == [(4, 15, 16)] * 4 + [(5, 16, 16)] * 3
    sizes.clear()
    decoder.token_budget = None  # the CPU default holds the whole map here
    with torch.no_grad():
        decoder(x)
    assert sizes == [(16, 15, 16), (15, 16, 16)]  # one chunk per step
    sizes.clear()
    monkeypatch.setattr(isa_stream, "TOKEN_BUDGET", 1)
    decoder(x)  # with autograd (gradients, captum): the whole map, the default ignored
    decoder.train()
    with torch.no_grad():
        decoder(x)  # train mode: BatchNorm's batch statistics span every sequence
    assert sizes == [(16, 15, 16), (15, 16, 16)] * 2


def test_dense_and_isa_inference_keep_working_with_autograd():
    """The plain and fused heads run with and without gradients (captum, training)."""
    torch.manual_seed(0)
    for head in (
        randomise_bn(ISADecoder(8, 3, 16, 8, down_factor=(2, 2))),
        randomise_bn(DenseAttentionDecoder(8, 3, 16, 8)),
    ):
        x = torch.randn(1, 8, 6, 6, requires_grad=True)
        y = head(x)
        F.softmax(y, 1)[:, 0].sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        with torch.no_grad():
            torch.testing.assert_close(head(x), y.detach(), atol=1e-5, rtol=1e-5)
        fused = fuse_for_inference(copy.deepcopy(head))
        x.grad = None
        yf = fused(x)
        torch.testing.assert_close(yf, y, atol=1e-5, rtol=1e-5)
        grad = x.grad
        F.softmax(yf, 1)[:, 0].sum().backward()
        assert grad is None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("head", ["isa", "dense", "fcn"])
def test_inference_under_autocast_and_in_bfloat16(head):
    """bf16 autocast runs the plain modules; a bf16 model fused for inference runs in bf16."""
    torch.manual_seed(0)
    model = randomise_bn(small_isanet(head=head))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
        torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)
        fused = fuse_for_inference(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(fused(x).float(), expected, atol=0.1, rtol=0.05)
        got = fused.to(torch.bfloat16)(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("head", ["isa", "dense"])
def test_fused_model_returns_the_same_attention(head):
    torch.manual_seed(0)
    model = randomise_bn(small_isanet(head=head))
    fused = fuse_for_inference(copy.deepcopy(model))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        logits, attn = model(x, return_attention=True)
        logits_p, attn_p = fused(x, return_attention=True)
    torch.testing.assert_close(logits_p, logits, atol=1e-5, rtol=1e-5)
    assert set(attn_p.tensors()) == set(attn.tensors())
    for name, value in attn.tensors().items():
        torch.testing.assert_close(attn_p.tensors()[name], value, atol=1e-5, rtol=1e-5)
