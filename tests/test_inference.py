"""Models prepared for inference give the plain modules' own results.

BatchNorm statistics are randomised throughout: with the initial ones (mean 0, variance 1)
a wrongly folded scale or shift would go unnoticed.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import small_isanet

from isa_explorer.models import is_prepared, prepare_for_inference
from isa_explorer.models.heads import DenseAttentionDecoder
from isa_explorer.models.inference import ConcatConvReLU, ConvReLU, PreparedRelation, fold
from isa_explorer.models.isa import streaming
from isa_explorer.models.isa.decoder import GroupGrid, ISADecoder, isa_context
from isa_explorer.models.layers import ConvBNReLU, RelationBlock


def randomise_bn(module: torch.nn.Module) -> torch.nn.Module:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return module.eval()


def module_ops(m: ConvBNReLU, x: torch.Tensor) -> torch.Tensor:
    """The conv-BN-ReLU layer by layer, as in training code."""
    return m.act(m.bn(m.conv(x)))


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 2), (1, 1)])
@pytest.mark.parametrize("band_rows", [1, 3, None])
def test_banded_conv_bn_relu_equals_the_module(kernel, dilation, band_rows):
    torch.manual_seed(0)
    m = randomise_bn(ConvBNReLU(6, 5, kernel, dilation))
    x = torch.randn(2, 6, 11, 9)
    row_bytes = 2 * 6 * 9 * 4
    band_bytes = None if band_rows is None else band_rows * row_bytes
    with torch.no_grad():
        expected = module_ops(m, x)
        torch.testing.assert_close(ConvReLU(fold(m), band_bytes)(x), expected)
        torch.testing.assert_close(m(x), expected)  # the plain module: the same ops


def test_preparing_folds_batchnorm_once_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = randomise_bn(small_isanet(aux_head=True))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_for_inference(model)
    assert is_prepared(prepared) and not is_prepared(model)
    head_bns = [m for m in prepared.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert head_bns == []  # folded into the convolutions, none left to run per forward
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in prepared.decoder.modules())
    for k, v in model.state_dict().items():  # the original keeps its weights and statistics
        assert torch.equal(v, state[k]), k
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="prepared for inference.*cannot be trained"):
        prepared.train()
    with pytest.raises(RuntimeError, match="prepared for inference"):
        prepared.save_pretrained("unused")
    with pytest.raises(TypeError, match="cannot prepare a Linear"):
        prepare_for_inference(torch.nn.Linear(2, 2))
    assert prepare_for_inference(prepared.decoder, inplace=True) is prepared.decoder  # as is


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "cropped"])
def test_concat_conv_equals_out_conv_over_the_concatenation(layout):
    torch.manual_seed(0)
    m = randomise_bn(ConvBNReLU(16, 7, 1))
    ctx, res = torch.randn(2, 8, 6, 5), torch.randn(2, 8, 6, 5)
    if layout == "channels_last":
        ctx = ctx.contiguous(memory_format=torch.channels_last)
    elif layout == "cropped":  # a crop of a padded channels-last map, as the ISA head returns
        big = torch.randn(2, 9, 8, 8).permute(0, 3, 1, 2)  # (2, 8, 9, 8), channels-last
        ctx = big[:, :, 1:7, 2:7]
    with torch.no_grad():
        expected = module_ops(m, torch.cat([ctx, res], dim=1))
        torch.testing.assert_close(ConcatConvReLU(fold(m))(ctx, res), expected)


def test_relation_block_infer_equals_its_forward():
    torch.manual_seed(0)
    block = randomise_bn(RelationBlock(32, 16))
    t = torch.randn(5, 40, 32)  # 5 sequences of 40 tokens
    prepared = PreparedRelation(block)
    with torch.no_grad():
        expected = block(t, "explicit")
        torch.testing.assert_close(block(t, "fused"), expected, atol=1e-5, rtol=1e-5)
        for impl in ("fused", "explicit"):
            got, q, k = prepared(t, impl, return_qk=True)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            _, q0, k0 = block(t, impl, return_qk=True)
            torch.testing.assert_close(q, q0, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(k, k0, atol=1e-5, rtol=1e-5)
        got, q, k = prepared.chunk(t, return_qk=True)  # one product for q1, k1 and v
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(q, q0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("order", ["long-short", "short-long"])
@pytest.mark.parametrize("size", [(19, 21), (16, 12), (7, 30)])
@pytest.mark.parametrize("token_budget", [1, 50, None])
def test_streamed_isa_context_equals_the_explicit_path(order, size, token_budget):
    torch.manual_seed(0)
    kw = dict(in_channels=12, classes=3, channels=32, isa_channels=16, down_factor=(4, 3))
    explicit = randomise_bn(ISADecoder(**kw, order=order, attn_impl="explicit"))
    fused = ISADecoder(**kw, order=order, attn_impl="fused").eval()
    fused.load_state_dict(explicit.state_dict())
    prepared = prepare_for_inference(fused, token_budget)
    x = torch.randn(2, 12, *size)
    with torch.no_grad():
        ctx_e, residual, attn_e = explicit.context(x, return_attention=True)
        grid = GroupGrid.of(*size, (4, 3))
        ctx_s, attn_s = streaming.streamed_context(
            prepared.steps, residual, grid, token_budget, return_attention=True
        )
        torch.testing.assert_close(ctx_s, ctx_e, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(prepared(x), explicit(x), atol=1e-5, rtol=1e-5)
        # The streamed queries and keys, written chunk by chunk, are the whole-map ones.
        assert set(attn_s) == set(attn_e) == {"grid", "long_q", "long_k", "short_q", "short_k"}
        for name in ("long_q", "long_k", "short_q", "short_k"):
            torch.testing.assert_close(attn_s[name], attn_e[name], atol=1e-5, rtol=1e-5)
        # The whole-map function on the prepared blocks is the explicit path too.
        ctx_w, _ = isa_context(prepared.steps, residual, grid, "explicit")
        torch.testing.assert_close(ctx_w, ctx_e, atol=1e-5, rtol=1e-5)


def test_streamed_context_runs_chunk_by_chunk(monkeypatch):
    """A budget of one token gives one chunk per row of sequences: d1 = lh (long), gh (short)."""
    sizes = []
    real = PreparedRelation.chunk

    def recording(self, t, *args, **kwargs):
        sizes.append(tuple(t.shape))
        return real(self, t, *args, **kwargs)

    monkeypatch.setattr(PreparedRelation, "chunk", recording)
    monkeypatch.setattr(streaming, "TOKEN_BUDGET", 1)
    decoder = prepare_for_inference(ISADecoder(8, 2, 16, 8, down_factor=(4, 4)))
    with torch.no_grad():
        decoder(torch.randn(1, 8, 12, 20))  # gh, gw = 3, 5
    # long step: a chunk per row offset li: lw = 4 sequences of gh * gw = 15 positions;
    # short step: a chunk per row of blocks: gw = 5 sequences of lh * lw = 16 positions.
    assert sizes == [(4, 15, 16)] * 4 + [(5, 16, 16)] * 3
    sizes.clear()
    monkeypatch.setattr(streaming, "TOKEN_BUDGET", 10**6)
    with torch.no_grad():
        decoder(torch.randn(1, 8, 12, 20))
    assert sizes == [(16, 15, 16), (15, 16, 16)]  # one chunk per step


def test_dense_and_isa_inference_keep_working_with_autograd():
    """The plain heads run one code path with and without gradients (captum, training)."""
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
            torch.testing.assert_close(
                prepare_for_inference(head)(x), y.detach(), atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("head", ["isa", "dense", "fcn"])
def test_inference_under_autocast_and_in_bfloat16(head):
    """bf16 autocast runs the plain modules; a bf16 model prepared for inference runs in bf16."""
    torch.manual_seed(0)
    model = randomise_bn(small_isanet(head=head))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
        torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)
        got = prepare_for_inference(model.to(torch.bfloat16))(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)


def test_forward_hooks_on_submodules_still_fire_without_autograd():
    """Feature extraction with a hook on a layer works under no_grad."""
    torch.manual_seed(0)
    decoder = randomise_bn(ISADecoder(8, 3, 16, 8, down_factor=(2, 2)))
    x = torch.randn(1, 8, 6, 10)
    with torch.no_grad():
        expected = decoder(x)
        seen = []
        for layer in (decoder.out_conv.bn, decoder.in_conv.conv, decoder.local_relation):
            handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
            torch.testing.assert_close(decoder(x), expected, atol=1e-5, rtol=1e-5)
            handle.remove()
            assert len(seen) == 1, layer
            seen.clear()


@pytest.mark.parametrize("head", ["isa", "dense"])
def test_prepared_model_returns_the_same_attention(head):
    torch.manual_seed(0)
    model = randomise_bn(small_isanet(head=head))
    prepared = prepare_for_inference(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        logits, attn = model(x, return_attention=True)
        logits_p, attn_p = prepared(x, return_attention=True)
    torch.testing.assert_close(logits_p, logits, atol=1e-5, rtol=1e-5)
    assert set(attn_p) == set(attn)
    for name in attn:
        if name != "grid":
            torch.testing.assert_close(attn_p[name], attn[name], atol=1e-5, rtol=1e-5)
