"""Training memory of the ISA head: what backward keeps, and activation checkpointing.

Every saving must be free of numerical change: the same logits, gradients and BatchNorm
buffers, bit for bit, as the plain modules. In training the relation blocks run under
selective checkpointing by default (``ISADecoder.selective_checkpoint``); the plain reference
switches it off.
"""

import copy

import pytest
import torch
import torch.utils.checkpoint
from memory_probe import kept_for_backward
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy

from isa_explorer.heads import isa as isa_decoder
from isa_explorer.heads.isa import ISADecoder
from isa_explorer.models.checkpointing import KEPT_OPS, checkpointed, keep_products
from isa_explorer.models.layers import ConvBNReLU, MaskReLU, RelationBlock


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes kept for backward after ``module(x)`` (:func:`memory_probe.kept_for_backward`)."""
    return sum(kept_for_backward(module, x).values())


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


def _heads(mode: str, **kw) -> tuple[ISADecoder, ISADecoder]:
    """Two heads with the same weights: plain (no checkpointing), and ``mode`` ("selective",
    the default in training, or "full": ``set_full_checkpoint``)."""
    torch.manual_seed(0)
    plain = ISADecoder(**kw).train()
    plain.selective_checkpoint = False
    other = copy.deepcopy(plain)
    other.selective_checkpoint = mode == "selective"
    other.set_full_checkpoint(mode == "full")
    return plain, other


@pytest.mark.parametrize("mode", ["selective", "full"])
@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_checkpointed_relations_give_the_plain_step_bit_for_bit(mode, impl):
    plain, ckpt = _heads(mode, in_channels=24, classes=3, channels=32, isa_channels=16)
    plain.attn_impl = ckpt.attn_impl = impl
    for seed in (0, 1):  # two steps: the buffers go on from where the first left them
        x = torch.randn(2, 24, 19, 21)  # padded to 24x24: the padding's gradients too
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, ga = _step(plain, xa, seed)
        yb, gb = _step(ckpt, xb, seed)
        assert torch.equal(ya, yb)
        assert torch.equal(xa.grad, xb.grad)
        for name in ga:
            assert torch.equal(ga[name], gb[name]), name
        # The recomputation in backward leaves BatchNorm's buffers (running statistics and
        # batch counters) as one forward leaves them.
        buffers = ckpt.state_dict()
        for name, a in plain.state_dict().items():
            assert torch.equal(a, buffers[name]), name
        plain.zero_grad(), ckpt.zero_grad()
    assert int(ckpt.global_relation.key_project[0].bn.num_batches_tracked) == 2
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), ckpt.eval()(x))


C, CK = 32, 16  # head channels, query/key channels of the small head below
CELL = 32 * 32 * 4  # bytes of one channel of the 32x32 map: the budgets count channels
LONG, SHORT = 16, 64  # sequence lengths of the two steps at 32x32 (4x4 blocks of 8x8)
#: Kept per block under selective checkpointing (fused attention): the block's input tokens
#: (C); the outputs of its matrix products and attention kernel -- the four query/key
#: products that feed BatchNorm (4 Ck), the values (C), the attention output (C) and its
#: log-sum-exp (2 heads), the output projection's product (C). Recomputed in backward: the
#: ReLU outputs (4 Ck), the attention output's merged copy (C) and the output ReLU's mask
#: (C / 4). (The former saved-tensor hooks kept C + 4 Ck + C + C + C + C / 4 + 2.)
PER_BLOCK = C + 4 * CK + C + C + 2 + C
#: The explicit path keeps its softmax (L a position) instead of the attention output and
#: log-sum-exp, and recomputes both batched products.
PER_BLOCK_EXPLICIT = {L: C + 4 * CK + C + L + C for L in (LONG, SHORT)}
#: Kept per plain block: also the ReLU outputs (4 Ck), the merged copy (C), the mask (C / 4).
PLAIN_BLOCK = PER_BLOCK + 4 * CK + C + C / 4
#: Kept around the blocks: in_conv's BatchNorm input and ReLU mask, the concatenation
#: (2 C), out_conv's BatchNorm input and mask, dropout's output (the classifier's input).
AROUND = (C + C / 4) + 2 * C + (C + C / 4) + C


def _head_kept(impl: str = "fused", mode: str = "selective") -> float:
    plain, head = _heads(mode, in_channels=24, classes=3, channels=C, isa_channels=CK)
    head = plain if mode == "plain" else head
    head.attn_impl = impl
    return _saved_bytes(head, torch.randn(1, 24, 32, 32)) / CELL


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_training_step_keeps_what_backward_needs_and_no_more(impl):
    """A copy kept by mistake (a token layout copied once per projection, a ReLU output kept
    beside its BatchNorm input, a policy that keeps more than products) breaks the budget."""
    blocks = 2 * PER_BLOCK if impl == "fused" else sum(PER_BLOCK_EXPLICIT.values())
    assert _head_kept(impl) == pytest.approx(AROUND + blocks, abs=1.5)  # + dropout's noise
    assert PER_BLOCK <= C + 4 * CK + C + C + C + C / 4 + 2  # no more than the former hooks


def test_checkpointing_keeps_only_the_block_inputs_and_plain_keeps_all():
    assert _head_kept(mode="full") == pytest.approx(AROUND + 2 * C, abs=1.5)
    assert _head_kept(mode="plain") == pytest.approx(AROUND + 2 * PLAIN_BLOCK, abs=1.5)


def test_the_budget_sees_what_selective_checkpointing_keeps(monkeypatch):
    """The probe counts SAC's cache: a policy that keeps every output (the mutation of the
    budget test) keeps more, and one that keeps nothing keeps what full checkpointing does."""
    everything = lambda ctx, op, *args, **kwargs: CheckpointPolicy.MUST_SAVE  # noqa: E731
    nothing = lambda ctx, op, *args, **kwargs: CheckpointPolicy.PREFER_RECOMPUTE  # noqa: E731
    monkeypatch.setattr(isa_decoder, "keep_products", everything)
    # BatchNorm's outputs (4 Ck + C) and the merged copy (C), twice, and more.
    assert _head_kept() > AROUND + 2 * (PER_BLOCK + 4 * CK + 2 * C)
    monkeypatch.setattr(isa_decoder, "keep_products", nothing)
    assert _head_kept() == pytest.approx(AROUND + 2 * C, abs=1.5)


def test_a_kept_tensor_modified_in_place_is_refused():
    """Why ``bmm`` is not in ``KEPT_OPS``: the explicit path scales its affinity product in
    place, and SAC refuses a cached tensor modified after it was cached (instead of scaling it
    twice in the recomputation)."""
    bmm = torch.ops.aten.bmm.default
    assert bmm not in KEPT_OPS

    def with_bmm(ctx, op, *args, **kwargs) -> CheckpointPolicy:
        keep = op in KEPT_OPS or op is bmm
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    torch.manual_seed(0)
    block = RelationBlock(C, CK).train()
    t = torch.randn(4, 16, C, requires_grad=True)
    checkpointed(block, t, "explicit", policy=keep_products).sum().backward()  # fine
    out = checkpointed(block, t, "explicit", policy=with_bmm)
    with pytest.raises(RuntimeError, match="has been mutated"):
        out.sum().backward()


def _checkpoint_calls(monkeypatch) -> list[bool]:
    """Spy on ``torch.utils.checkpoint.checkpoint``: one entry a call, whether selective."""
    calls, real = [], torch.utils.checkpoint.checkpoint

    def spy(fn, *args, **kwargs):
        calls.append("context_fn" in kwargs)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    return calls


def test_selective_checkpointing_is_for_training_with_plain_batchnorm(monkeypatch):
    calls = _checkpoint_calls(monkeypatch)
    torch.manual_seed(0)
    head = ISADecoder(24, 3, C, CK).train()
    x = torch.randn(1, 24, 16, 16)
    head(x)
    assert calls == [True, True]  # both blocks, selectively
    head.set_full_checkpoint(True)
    head(x)
    assert calls[2:] == [False, False]  # fully
    head.set_full_checkpoint(False)
    calls.clear()
    with torch.no_grad():
        head(x)
    head(x, return_attention=True)  # the blocks return their queries and keys
    head.eval()(x)
    with monkeypatch.context() as m:
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        head.train()(x)
    assert calls == []
    # SyncBatchNorm would repeat its all-reduce in the recomputation: its blocks run plain,
    # and keep what plain blocks keep.
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(ISADecoder(24, 3, C, CK).train())
    assert _saved_bytes(sync, torch.randn(1, 24, 32, 32)) / CELL == pytest.approx(
        AROUND + 2 * PLAIN_BLOCK, abs=1.5
    )
    assert calls == []


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
    # Refused by heads without it (the protocol's message).
    cfg = get_config("synthetic-context", [*tiny, "checkpoint_attention=true", "model.head=fcn"])
    with pytest.raises(ValueError, match="'fcn' head has no activation checkpointing.*=false"):
        train(cfg, tmp_path / "fcn", progress=False)


def test_auto_picks_explicit_for_short_cpu_training_steps_and_fused_elsewhere(monkeypatch):
    from isa_explorer.models.layers import choose_impl

    v = torch.randn(4, 64, 64, requires_grad=True)  # 64 positions, 64 value channels
    q = torch.randn(4, 64, 16, requires_grad=True)
    assert choose_impl(q, v) == "explicit"  # training, affinities (64 x 64) <= values
    assert choose_impl(q, v[:, :, :32]) == "fused"  # a sequence longer than the values
    with torch.no_grad():
        assert choose_impl(q, v) == "fused"  # inference
    assert choose_impl(q.detach(), v.detach()) == "fused"  # nothing to train
    # The head with "auto" computes what the chosen path computes: in training (explicit for
    # both steps here: with 64 channels their sequences of 16 and 64 positions are short) and
    # at inference (streamed, as the fused path).
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
    calls, real = [], isa_decoder.streamed
    monkeypatch.setattr(isa_decoder, "streamed", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        torch.testing.assert_close(auto.eval()(x), fused(x), rtol=1e-5, atol=1e-5)
    assert len(calls) == 2  # both heads streamed
