"""The Compare view's statistics: each against a hand computation on a small map, and the
whole-image averages (batched through ``main_maps``) against a loop over queries."""

from __future__ import annotations

import math

import pytest
import torch
from test_heads_common import small_head

from isa_explorer import heads
from isa_explorer.explorer.map_stats import MapGrid, image_statistics, map_statistics


def _grid(size, padded=None, offset=(0, 0), classes=None, truth=None, stride=8) -> MapGrid:
    classes = torch.zeros(size, dtype=torch.int64) if classes is None else torch.tensor(classes)
    truth = None if truth is None else torch.tensor(truth)
    return MapGrid(size, padded or size, offset, stride, classes, truth)


def _one(m, fx, fy, grid, cls, true=None) -> dict[str, float]:
    out = map_statistics(
        torch.tensor(m, dtype=torch.float64)[None],
        torch.tensor([fx]),
        torch.tensor([fy]),
        grid,
        torch.tensor([cls]),
        None if true is None else torch.tensor([true]),
    )
    return {k: float(v[0]) for k, v in out.items()}


def test_each_statistic_equals_a_hand_computation():
    m = [[0.5, 0.25, 0.0], [0.125, 0.125, 0.0]]
    grid = _grid((2, 3), classes=[[0, 1, 1], [0, 2, 1]], truth=[[1, 1, 1], [0, 0, 0]])
    got = _one(m, 0, 0, grid, cls=0, true=1)
    # -(1/2 log2 1/2 + 1/4 log2 1/4 + 2 * 1/8 log2 1/8) = 1/2 + 1/2 + 3/4
    assert got["entropy_bits"] == pytest.approx(1.75, abs=1e-12)
    assert got["entropy_fraction"] == pytest.approx(1.75 / math.log2(6), abs=1e-12)
    # Cells one to the right, one below and one diagonal, 8 px apart.
    assert got["distance_px"] == pytest.approx(8 * (0.25 + 0.125 + 0.125 * 2**0.5), abs=1e-12)
    assert got["share_predicted"] == pytest.approx(0.5 + 0.125, abs=1e-12)  # class 0 cells
    assert got["share_true"] == pytest.approx(0.75, abs=1e-12)  # the top row is class 1
    assert got["cells_90"] == 4  # 0.5, 0.75, 0.875 < 0.9 <= 1.0
    assert "share_padding" not in got  # this grid does not pad


def test_ninety_percent_counts_a_cell_that_reaches_it_exactly():
    grid = _grid((1, 3))
    assert _one([[0.9, 0.1, 0.0]], 0, 0, grid, 0)["cells_90"] == 1
    assert _one([[0.3, 0.3, 0.4]], 0, 0, grid, 0)["cells_90"] == 3
    assert _one([[1.0, 0.0, 0.0]], 2, 0, grid, 0)["entropy_bits"] == 0.0  # 0 log 0 is 0


def test_padding_share_and_distances_on_the_padded_grid():
    # The image's 2 x 3 cells sit at rows 1-2, columns 0-2 of a 4 x 4 grid.
    m = torch.zeros(4, 4, dtype=torch.float64)
    m[0, 0], m[3, 3], m[2, 2] = 0.15, 0.05, 0.8  # two padding cells, the query's own cell
    grid = _grid((2, 3), padded=(4, 4), offset=(1, 0), stride=4)
    got = _one(m.tolist(), 2, 1, grid, 0)  # unpadded (2, 1) is padded (2, 2)
    assert got["share_padding"] == pytest.approx(0.2, abs=1e-12)
    assert got["distance_px"] == pytest.approx(4 * (0.15 * 8**0.5 + 0.05 * 2**0.5), abs=1e-12)
    assert got["share_predicted"] == pytest.approx(0.8, abs=1e-12)  # padding has no class
    assert got["entropy_fraction"] == pytest.approx(got["entropy_bits"] / 4, abs=1e-12)


def _record(name: str, size=(11, 13)):
    head = small_head(name).eval()
    with torch.no_grad():
        _, record = head(torch.randn(1, 24, *size), return_attention=True)
    return head, record


@pytest.mark.parametrize("name", heads.with_attention())
def test_image_averages_equal_a_loop_over_queries(name):
    head, record = _record(name)
    h, w = record.size
    gen = torch.Generator().manual_seed(1)
    classes = torch.randint(0, 3, (h, w), generator=gen)
    truth = torch.randint(0, 3, (h, w), generator=gen)
    grid = MapGrid.of(record, 8, classes, truth)
    fast = image_statistics(type(head), record, grid, chunk=37)  # chunks that do not divide N
    assert fast.complete and fast.done == h * w
    expected: dict[str, list[float]] = {}
    for fy in range(h):
        for fx in range(w):  # one query at a time, through query_maps
            m = type(head).query_maps(record, fx, fy)[type(head).main_map]
            one = _one(m.tolist(), fx, fy, grid, int(classes[fy, fx]), int(truth[fy, fx]))
            for k, v in one.items():
                expected.setdefault(k, []).append(v)
    assert set(fast.means) == set(expected)
    for k, values in expected.items():
        mean = sum(values) / len(values)
        assert fast.means[k] == pytest.approx(mean, rel=1e-9, abs=1e-12), k


def test_a_spent_budget_averages_a_random_sample_of_the_cells():
    head, record = _record("isa")
    grid = MapGrid.of(record, 8, torch.zeros(record.size, dtype=torch.int64))
    part = image_statistics(type(head), record, grid, budget_s=0.0, chunk=16)
    assert part.done == 16 and part.total == 11 * 13 and not part.complete  # one chunk
    assert len({tuple(c) for c in part.cells.tolist()}) == 16
    again = image_statistics(type(head), record, grid, budget_s=0.0, chunk=16, seed=1)
    assert {tuple(c) for c in again.cells.tolist()} != {tuple(c) for c in part.cells.tolist()}
    assert part.as_dict()["queries"] == 16 and part.as_dict()["of_queries"] == 143
