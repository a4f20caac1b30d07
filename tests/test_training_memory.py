"""Training memory of the ISA head: what backward keeps, and activation checkpointing.

Both savings must be free of numerical change: the same logits, gradients and BatchNorm
buffers, bit for bit, as the plain modules.
"""

import copy

import pytest
import torch
from torch import nn

from isa_explorer.models import saved
from isa_explorer.models.isa.decoder import ISADecoder
from isa_explorer.models.layers import ConvBNReLU, MaskReLU


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward after ``module(x)`` (:func:`saved.kept_for_backward`)."""
    return sum(saved.kept_for_backward(module, x).values())


def _step(module: nn.Module, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(seed)  # the same dropout draw
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return y.detach(), grads


@pytest.mark.parametrize("kernel", [1, 3])
def test_mask_relu_gives_relu_gradients_bit_for_bit(kernel):
    torch.manual_seed(0)
    plain = ConvBNReLU(6, 5, kernel).train()
    masked = ConvBNReLU(6, 5, kernel, mask_relu=True).train()
    masked.load_state_dict(plain.state_dict())
    assert isinstance(masked.act, MaskReLU) and isinstance(masked.act, nn.ReLU)
    x = torch.randn(3, 6, 7, 9)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, ga = _step(plain, xa)
    yb, gb = _step(masked, xb)
    assert torch.equal(ya, yb) and (ya == 0).any() and (ya > 0).any()
    assert torch.equal(xa.grad, xb.grad)
    for name in ga:
        assert torch.equal(ga[name], gb[name]), name
    assert torch.equal(plain.bn.running_var, masked.bn.running_var)
    # Backward keeps a 1-byte mask where plain ReLU keeps its 4-byte output.
    out_bytes = ya.numel() * 4
    saved_plain, saved_masked = _saved_bytes(plain, x), _saved_bytes(masked, x)
    assert saved_plain - saved_masked == out_bytes - ya.numel()
    # Without autograd it is plain relu_: no mask is made.
    with torch.no_grad():
        assert torch.equal(masked(x), plain(x))


def _twins(**kw) -> tuple[ISADecoder, ISADecoder]:
    torch.manual_seed(0)
    plain = ISADecoder(**kw).train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint_relations = True
    return plain, ckpt


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_checkpointed_relations_give_the_same_step(impl):
    kw = dict(in_channels=24, classes=3, channels=32, isa_channels=16, attn_impl=impl)
    plain, ckpt = _twins(**kw)
    x = torch.randn(2, 24, 19, 21)
    ya, ga = _step(plain, x)
    yb, gb = _step(ckpt, x)
    assert torch.equal(ya, yb)
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=0, atol=0, msg=name)
    # The recomputation in backward leaves BatchNorm's buffers as one forward leaves them.
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert int(ckpt.global_relation.key_project[0].bn.num_batches_tracked) == 1
    # Eval and no-grad forwards ignore the switch.
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), ckpt.eval()(x))


C, CK = 32, 16  # head channels, query/key channels of the small head below
CELL = 32 * 32 * 4  # bytes of one channel of the 32x32 map: the budgets count channels
#: Kept per block: its input tokens (C); the four query/key convolutions' outputs for their
#: BatchNorms (4 Ck; the ReLU outputs after them are rebuilt); the values (C); the merged
#: attention output (C; the attention's own copy is rebuilt from it); the output
#: convolution's output (C) and its ReLU mask (C / 4); the softmax log-sum-exp (2 heads).
PER_BLOCK = C + 4 * CK + C + C + C + C / 4 + 2
#: Kept around the blocks: in_conv's BatchNorm input and ReLU mask, the concatenation
#: (2 C), out_conv's BatchNorm input and mask, dropout's output (the classifier's input).
AROUND = (C + C / 4) + 2 * C + (C + C / 4) + C


def test_training_step_keeps_what_backward_needs_and_no_more():
    """A copy kept by mistake (a token layout copied once per projection, a ReLU output kept
    beside its BatchNorm input) breaks the budget."""
    torch.manual_seed(0)
    head = ISADecoder(24, 3, C, CK, attn_impl="fused").train()
    kept = _saved_bytes(head, torch.randn(1, 24, 32, 32)) / CELL
    assert kept == pytest.approx(AROUND + 2 * PER_BLOCK, abs=1.5)  # + dropout's noise


def test_checkpointing_keeps_only_the_block_inputs():
    plain, ckpt = _twins(in_channels=24, classes=3, channels=C, isa_channels=CK)
    x = torch.randn(1, 24, 32, 32)
    assert _saved_bytes(ckpt, x) / CELL == pytest.approx(AROUND + 2 * C, abs=1.5)
    assert _saved_bytes(plain, x) / CELL == pytest.approx(AROUND + 2 * PER_BLOCK, abs=1.5)


def test_fit_switch_checkpoints_the_relations_with_the_same_run(tmp_path):
    from safetensors.torch import load_file

    from isa_explorer.configs import get_config
    from isa_explorer.training import train

    tiny = [
        'model={"encoder_name": "resnet18", "encoder_weights": null, '
        '"encoder_output_stride": 16, "classes": 7, "decoder_channels": 32, '
        '"decoder_isa_channels": 16}',
        'synthetic={"train_length": 4, "val_length": 1, "size": [96, 192]}',
        "batch_size=2",
        "iters=2",
    ]
    runs = {}
    for flag in ("false", "true"):
        cfg = get_config("synthetic-context", [*tiny, f"checkpoint_attention={flag}"])
        train(cfg, tmp_path / flag, progress=False)
        runs[flag] = load_file(tmp_path / flag / "final" / "model.safetensors")
    assert runs["true"].keys() == runs["false"].keys()
    for key, value in runs["false"].items():
        torch.testing.assert_close(runs["true"][key], value, rtol=0, atol=0, msg=key)
    # Not for heads without relation blocks.
    cfg = get_config("synthetic-context", [*tiny, "checkpoint_attention=true", "model.head=fcn"])
    with pytest.raises(ValueError, match="checkpoint_attention is for the 'isa' head"):
        train(cfg, tmp_path / "fcn", progress=False)


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_rebuilt_saved_tensors_give_the_plain_gradients_bit_for_bit(impl, monkeypatch):
    kw = dict(in_channels=24, classes=3, channels=C, isa_channels=CK, attn_impl=impl)
    lean, plain = _twins(**kw)
    plain.checkpoint_relations = False
    x = torch.randn(2, 24, 19, 21)  # padded to 24x24: the padding's gradients too
    ya, ga = _step(lean, x)
    monkeypatch.setattr(saved, "active", lambda module: False)  # autograd keeps everything
    yb, gb = _step(plain, x)
    assert torch.equal(ya, yb)
    for name in ga:
        assert torch.equal(ga[name], gb[name]), name


def test_recompute_saved_refuses_a_tensor_modified_in_place():
    w = torch.randn(4, 4, requires_grad=True)
    with saved.RecomputeSaved() as hooks:
        r = torch.relu(w @ w)
        out = (r * r).sum()  # saves r
        r.add_(1)  # r changes after it was saved
    with pytest.raises(RuntimeError, match="modified in place after it was saved"):
        out.backward()
    # A registered tensor is rebuilt, so its change no longer matters; the gradient is that
    # of the unmodified r.
    with saved.RecomputeSaved() as hooks:
        y = w @ w
        r = torch.relu(y)
        out = (r * r).sum()
        assert hooks.register(r, lambda: torch.relu(y))
    out.backward()
    expected = torch.autograd.grad((torch.relu(w @ w) ** 2).sum(), w)[0]
    torch.testing.assert_close(w.grad, expected, rtol=0, atol=0)


def test_auto_picks_explicit_for_short_cpu_training_steps_and_fused_elsewhere():
    from isa_explorer.models.layers import choose_impl
    from isa_explorer.models.prepare import prepare_for_inference

    v = torch.randn(4, 64, 64, requires_grad=True)  # 64 positions, 64 value channels
    q = torch.randn(4, 64, 16, requires_grad=True)
    assert choose_impl(q, v) == "explicit"  # training, affinities (64 x 64) <= values
    assert choose_impl(q, v[:, :, :32]) == "fused"  # a sequence longer than the values
    with torch.no_grad():
        assert choose_impl(q, v) == "fused"  # inference
    assert choose_impl(q.detach(), v.detach()) == "fused"  # nothing to train
    # The head with "auto" computes what the chosen path computes: in training (explicit for
    # both steps here: with 64 channels their sequences of 16 and 64 positions are short) and
    # prepared for inference (streamed, as the fused path).
    kw = dict(in_channels=24, classes=3, channels=64, isa_channels=CK)
    torch.manual_seed(0)
    auto = ISADecoder(**kw, attn_impl="auto").train()
    explicit = ISADecoder(**kw, attn_impl="explicit").train()
    explicit.load_state_dict(auto.state_dict())
    x = torch.randn(1, 24, 32, 32)
    ya, ga = _step(auto, x)
    yb, gb = _step(explicit, x)
    assert torch.equal(ya, yb) and all(torch.equal(ga[n], gb[n]) for n in ga)
    fused = ISADecoder(**kw, attn_impl="fused").eval()
    fused.load_state_dict(auto.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            prepare_for_inference(auto.eval())(x), fused(x), rtol=1e-5, atol=1e-5
        )
    # ... through the streamed context, as the fused path.
    from isa_explorer.models import prepare

    calls = []
    real = prepare.streamed_context
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prepare, "streamed_context", lambda *a, **k: calls.append(1) or real(*a, **k))
        with torch.no_grad():
            prepare_for_inference(auto.eval())(x)
    assert calls
