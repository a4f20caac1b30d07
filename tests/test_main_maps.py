"""Every head's batched ``main_maps`` equals the base class's loop over ``query_maps``.

``Head.main_maps``' default asks ``query_maps`` once per query; a head with attention overrides
it with the same math batched over the queries (the Compare view's whole-image statistics run
on it). Here each override meets the loop on every cell of small grids (ISA's padded ones
included), on a random subset with repeats, and on no query at all. A head registered in
``isa_explorer.heads`` is covered without a line of its own.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_heads_common import SMALL_OPTIONS, small_head

from isa_explorer import heads
from isa_explorer.heads.protocol import HeadConfig

#: ``(head, config changes)``: every head with attention as ``small_head`` builds it, and the
#: variants whose maps take other paths (ISA's other order, CC's loop beyond two passes).
CASES = [pytest.param(name, {}, id=name) for name in heads.with_attention()] + [
    pytest.param("isa", {"order": "short-long"}, id="isa-short-long"),
    pytest.param("cc", {"options": {"recurrence": 3}}, id="cc-recurrence3"),
]
#: Feature sizes: 11 x 13 and 5 x 17 pad to whole 4 x 4 blocks (ISA), 8 x 8 does not.
SIZES = [(11, 13), (8, 8), (5, 17)]


def _record(name: str, changes: dict, size: tuple[int, int]) -> heads.Record:
    """The record of one random image through ``small_head(name)`` (with ``changes`` to its
    config, same weights), in eval mode."""
    head = small_head(name)
    if changes:
        config = HeadConfig(16, 8, 0.0, down_factor=(4, 4), options=SMALL_OPTIONS.get(name, {}))
        variant = type(head).build(24, 3, dataclasses.replace(config, **changes))
        variant.load_state_dict(head.state_dict())
        head = variant
    torch.manual_seed(sum(size))
    with torch.no_grad():
        _, record = head.eval()(torch.randn(1, 24, *size), return_attention=True)
    return record


def _check(cls: type[heads.Head], record: heads.Record, fx: torch.Tensor, fy: torch.Tensor):
    with torch.inference_mode():  # as the Compare view runs it
        got = cls.main_maps(record, fx, fy)
        expected = heads.Head.main_maps.__func__(cls, record, fx, fy)  # the loop
    assert got.dtype == torch.float64 and got.shape == (len(fx), *record.padded)
    scale = max(1.0, float(expected.abs().max()))
    err = float((got - expected).abs().max())
    assert err <= 1e-12 * scale, f"batched maps differ from the loop's by {err:.3g}"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("name", "changes"), CASES)
def test_main_maps_equal_the_loop(name, changes, size):
    cls, record = heads.get(name), _record(name, changes, size)
    for key, value in changes.items():  # the variant really is one
        if key == "order":
            assert record.order == value
        if key == "options":
            assert record.q.shape[1] == value["recurrence"]
    h, w = size
    fy, fx = (t.flatten() for t in torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))
    _check(cls, record, fx, fy)  # every cell, in raster order
    gen = torch.Generator().manual_seed(0)
    cells = torch.randint(0, h * w, (2 * h,), generator=gen)  # with repeats
    _check(cls, record, cells % w, cells // w)


@pytest.mark.parametrize(("name", "changes"), CASES)
def test_no_query_gives_no_map(name, changes):
    record = _record(name, changes, (11, 13))
    none = torch.zeros(0, dtype=torch.int64)
    with torch.inference_mode():
        maps = heads.get(name).main_maps(record, none, none)
    assert maps.shape == (0, *record.padded) and maps.dtype == torch.float64


@pytest.mark.parametrize("name", heads.with_attention())
def test_every_head_with_maps_batches_them(name):
    cls = heads.get(name)
    assert cls.main_maps.__func__ is not heads.Head.main_maps.__func__, (
        f"{cls.__name__} loops over query_maps: give it a batched main_maps"
    )


@pytest.mark.parametrize("order", ["long-short", "short-long"])
def test_isa_reach_lists_its_steps_in_the_order_they_run(order):
    torch.manual_seed(0)
    head = heads.get("isa").build(24, 3, HeadConfig(16, 8, 0.0, down_factor=(4, 4), order=order))
    with torch.no_grad():
        _, record = head.eval()(torch.randn(1, 24, 11, 13), return_attention=True)
    reach = heads.get("isa").reach(record, 5, 6)
    assert list(reach) == order.split("-")
    assert int(reach["short"].sum()) == 16  # the query's 4 x 4 block (not on the border)
