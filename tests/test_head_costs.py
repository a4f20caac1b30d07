"""Every head's analytic cost (``Head.cost``) against what its attention step runs.

For each registered head with a cost and an attention step (ISA, dense, NL, CC, DA, GC, EMA),
each implementation it declares (``Head.impls``), and options away from the defaults:

* FLOPs equal what ``torch.utils.flop_counter.FlopCounterMode`` counts when
  ``attention_module(config)`` runs, forward (eval, no autograd) and forward+backward
  (training), at a size that is a multiple of 8 and one that is not, batch 1 and 2. Exactly:
  the counter counts matrix products and convolutions (2 FLOPs per multiply-add, biases not
  counted) and the formulas count the same; neither counts softmax, normalisation, masking or
  elementwise adds. (``tests/test_benchmark.py`` checks the benchmark's modules, at the
  default options, through ``analytic_costs`` and the meta-device count.)
* Affinity entries equal the entries of the softmax maps the explicit path builds.

A wrong formula fails (:func:`test_a_wrong_cost_fails_the_checks`).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from isa_explorer import heads
from isa_explorer.costs.flops import backward, register_sdpa_formulas
from isa_explorer.heads import cc, da, ema, nl
from isa_explorer.heads.protocol import HeadConfig

#: Per head, a small config with its own options away from the defaults (DA: ``C / Cp = 4``,
#: so its fused path runs the values as four heads, the published layout).
CONFIGS = {
    "isa": HeadConfig(32, 16, down_factor=(4, 8)),
    "dense": HeadConfig(32, 16),
    "nl": HeadConfig(32, options={"reduction": 4}),
    "cc": HeadConfig(32, options={"recurrence": 3}),
    "da": HeadConfig(64, options={"pam_channels": 16}),
    "gc": HeadConfig(32, options={"ratio": 0.5}),
    "ema": HeadConfig(32, options={"num_bases": 8, "num_stages": 2}),
}
#: ``(h, w), batch``: a multiple of 8 and a size that is not (ISA pads it).
SIZES = [((16, 24), 1), ((9, 31), 2)]


def _costed(name: str) -> bool:
    cls, config = heads.get(name), HeadConfig(8, 8, attn_impl="explicit")
    return cls.cost(8, 8, config) is not None and cls.attention_module(config) is not None


CASES = [(n, impl) for n in heads.names() if _costed(n) for impl in heads.get(n).impls]
EXPLICIT = [n for n, impl in CASES if impl == "explicit"]


def _config(name: str, impl: str) -> HeadConfig:
    return dataclasses.replace(CONFIGS.get(name, HeadConfig(32, 16)), attn_impl=impl)


def _input(name: str, size: tuple[int, int], batch: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, _config(name, "explicit").channels, *size)


def check_flops(name: str, impl: str, size: tuple[int, int], batch: int) -> None:
    """``cost().flops`` equal the counted FLOPs of both passes of the attention step."""
    register_sdpa_formulas()  # torch counts the CPU flash kernel as 0 FLOPs otherwise
    cls, config = heads.get(name), _config(name, impl)
    cost = cls.cost(*size, config, impl, batch)
    torch.manual_seed(0)
    m = cls.attention_module(config)
    x = _input(name, size, batch)
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        m.eval()(x)
    x.requires_grad_()
    with FlopCounterMode(display=False) as both:
        backward(m.train()(x))
    assert cost.flops["forward"] == cost.attention_flops + cost.projection_flops
    counted = {"forward": fwd.get_total_flops(), "forward+backward": both.get_total_flops()}
    assert cost.flops == counted, (name, impl, size, cost.flops, counted)


class _SoftmaxEntries(TorchFunctionMode):
    """Counts the entries of every softmax computed while active."""

    def __init__(self) -> None:
        super().__init__()
        self.entries = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") == "softmax":
            self.entries += out.numel()
        return out


def softmax_entries(name: str, size: tuple[int, int], batch: int) -> int:
    """Entries of the softmax maps the explicit attention step builds on ``size``."""
    m = heads.get(name).attention_module(_config(name, "explicit"))
    counter = _SoftmaxEntries()
    with torch.no_grad(), counter:
        m.eval()(_input(name, size, batch))
    return counter.entries


def check_affinities(name: str, size: tuple[int, int], batch: int) -> None:
    """``affinity_elements`` is the size of the maps built, the same for every impl."""
    cls = heads.get(name)
    elements = {i: cls.cost(*size, _config(name, i), i, batch).affinity_elements for i in cls.impls}
    built = softmax_entries(name, size, batch)
    assert set(elements.values()) == {built}, (name, size, elements, built)


@pytest.mark.parametrize("size,batch", SIZES)
@pytest.mark.parametrize("name,impl", CASES)
def test_flops_equal_the_flop_counter(name, impl, size, batch):
    check_flops(name, impl, size, batch)


@pytest.mark.parametrize("size,batch", SIZES)
@pytest.mark.parametrize("name", EXPLICIT)
def test_affinity_elements_are_the_maps_the_head_builds(name, size, batch):
    check_affinities(name, size, batch)


def test_the_new_heads_affinities_follow_their_formulas():
    """At the published channels: NL ``N^2``, CC ``2 N (h + w)``, DA ``N^2 + C^2``, GC ``N``,
    EMA ``3 N K``; FLOPs grow as their formulas say."""
    h, w, n = 64, 128, 64 * 128
    config = HeadConfig(512, 256)
    got = {name: heads.get(name).cost(h, w, config) for name in ("nl", "cc", "da", "gc", "ema")}
    assert got["nl"].affinity_elements == n * n
    assert got["cc"].affinity_elements == 2 * n * (h + w)
    assert got["da"].affinity_elements == n * n + 512 * 512
    assert got["gc"].affinity_elements == n
    assert got["ema"].affinity_elements == 3 * n * 64
    assert got["nl"].attention_flops == 4 * n * n * 256
    assert got["ema"].flops["forward+backward"] == got["ema"].flops["forward"]  # no backward
    # The dense heads' explicit peak holds their N x N affinity; the fused NL path does not.
    for name in ("nl", "da"):
        explicit = heads.get(name).cost(h, w, config, "explicit")
        assert explicit.predicted_peak_bytes["forward"] > 2 * 4 * n * n
    assert got["nl"].predicted_peak_bytes["forward"] < got["nl"].affinity_bytes / 2


def _replace_cost(monkeypatch, cls, **changes) -> None:
    """Patch ``cls.cost`` to return its cost with ``changes`` (callables of the true cost)."""
    true_cost = cls.cost

    def cost(_cls, *args, **kwargs):
        c = true_cost(*args, **kwargs)
        return dataclasses.replace(c, **{k: f(c, *args) for k, f in changes.items()})

    monkeypatch.setattr(cls, "cost", classmethod(cost))


MUTATIONS = {
    "cc with N^2 affinities": (
        "cc",
        lambda mp: _replace_cost(mp, cc.CCHead, affinity_elements=lambda c, h, w, *_: (h * w) ** 2),
    ),
    "cc with h + w - 1 per query": (
        "cc",
        lambda mp: _replace_cost(
            mp,
            cc.CCHead,
            affinity_elements=lambda c, h, w, config, impl, b: c.affinity_elements - 3 * b * h * w,
        ),
    ),
    "da without CAM's C^2": (
        "da",
        lambda mp: _replace_cost(
            mp, da.DAHead, affinity_elements=lambda c, h, w, *_: c.affinity_elements - 64 * 64
        ),
    ),
    "nl's fused backward at 2x": (
        "nl",
        lambda mp: mp.setattr(
            nl, "softmax_attention_flops", lambda p, k, v, i: (4 * p * k, 8 * p * k)
        ),
    ),
    "ema with a backward": (
        "ema",
        lambda mp: _replace_cost(
            mp,
            ema.EMAHead,
            flops=lambda c, *_: {**c.flops, "forward+backward": 3 * c.flops["forward"]},
        ),
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_wrong_cost_fails_the_checks(mutation, monkeypatch):
    name, mutate = MUTATIONS[mutation]
    check_flops(name, "fused" if name == "nl" else "explicit", (9, 31), 2)
    check_affinities(name, (9, 31), 2)
    mutate(monkeypatch)
    with pytest.raises(AssertionError):
        check_flops(name, "fused" if name == "nl" else "explicit", (9, 31), 2)
        check_affinities(name, (9, 31), 2)
