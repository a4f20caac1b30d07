"""Confusion-matrix metrics: mmseg's whole-set IoU, ignore pixels, absent classes, reduction."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from isa_explorer.evaluation import ConfusionMatrix, format_table

# 2x4 labels and predictions with 4 classes. The ignore pixel carries prediction 3, which must
# not count: class 3 is then absent from both labels and predictions.
TARGET = torch.tensor([[0, 0, 1, 1], [2, 255, 0, 1]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 3, 0, 2]])
# Rows ground truth, columns prediction, counted by hand over the 7 labelled pixels.
HAND = [[2, 1, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_confusion_matrix_counts_by_hand_and_skips_ignore():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    assert cm.mat.tolist() == HAND


def test_metrics_match_hand_computation_with_absent_class():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    m = cm.compute()
    # IoU = tp / (gt + pred - tp): class 0: 2 / (3 + 3 - 2), class 1: 2 / (3 + 3 - 2), class 2: 0 / 2.
    assert m["IoU"][:3] == pytest.approx([0.5, 0.5, 0.0])
    assert m["Acc"][:3] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert math.isnan(m["IoU"][3]) and math.isnan(m["Acc"][3])
    assert m["mIoU"] == pytest.approx(1 / 3)  # nan class left out of the mean
    assert m["mAcc"] == pytest.approx(4 / 9)
    assert m["aAcc"] == pytest.approx(4 / 7)


def test_class_only_predicted_counts_as_zero_iou():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2, 1]), torch.tensor([0, 0, 1]))
    m = cm.compute()
    assert m["IoU"] == pytest.approx([0.5, 1.0, 0.0])  # class 2: predicted, never labelled
    assert math.isnan(m["Acc"][2]) and m["mAcc"] == pytest.approx(0.75)
    assert m["mIoU"] == pytest.approx(0.5)


def test_iou_is_over_the_whole_set_not_a_mean_of_images():
    # Image A: class 1 fully right on 1 pixel; image B: class 1 wrong on 3 pixels.
    a_pred, a_gt = torch.tensor([1, 0, 0, 0]), torch.tensor([1, 0, 0, 0])
    b_pred, b_gt = torch.tensor([0, 0, 0, 0]), torch.tensor([1, 1, 1, 0])
    cm = ConfusionMatrix(2)
    cm.update(a_pred, a_gt)
    cm.update(b_pred, b_gt)
    whole = ConfusionMatrix(2)
    whole.update(torch.cat([a_pred, b_pred]), torch.cat([a_gt, b_gt]))
    assert torch.equal(cm.mat, whole.mat)
    # Whole set: class 1 has tp 1, gt 4, pred 1 -> 1/4; class 0 tp 4, gt 4, pred 7 -> 4/7.
    assert cm.compute()["IoU"] == pytest.approx([4 / 7, 1 / 4])


def test_bad_input_is_named():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="target holds class ids 0..7 outside 0..2"):
        cm.update(torch.zeros(2), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="prediction"):
        cm.update(torch.tensor([5, 0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="at least 1"):
        ConfusionMatrix(0)
    cm.update(torch.tensor([9]), torch.tensor([255]))  # predictions at ignore pixels are free
    assert cm.mat.sum() == 0 and math.isnan(cm.compute()["mIoU"])


def test_format_table_lists_classes_and_means():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    table = format_table(cm.compute(), ["road", "car", "sky", "tree"])
    lines = table.splitlines()
    rows = {cells[1].strip(): cells[2:4] for line in lines if len(cells := line.split("|")) == 5}
    assert [c.strip() for c in rows["road"]] == ["50.00", "66.67"]
    assert [c.strip() for c in rows["tree"]] == ["-", "-"]
    assert lines[-1] == "mIoU 33.33  mAcc 44.44  aAcc 57.14"
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        format_table(cm.compute(), ["a", "b", "c"])


def _reduce_worker(rank: int, init_file: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cm = ConfusionMatrix(4)
        half = slice(0, 1) if rank == 0 else slice(1, 2)  # each process sees one row of pixels
        cm.update(PRED[half], TARGET[half])
        cm.reduce_from_all_processes()
        out[rank] = cm.mat.tolist()
    finally:
        dist.destroy_process_group()


def test_reduce_sums_matrices_of_all_processes(tmp_path):
    ctx = mp.get_context("fork")  # fork: the workers need not import the package again
    with ctx.Manager() as manager:
        out = manager.dict()
        mp.start_processes(
            _reduce_worker, args=(str(tmp_path / "init"), out), nprocs=2, start_method="fork"
        )
        assert out[0] == HAND and out[1] == HAND
    single = ConfusionMatrix(4)
    single.reduce_from_all_processes()  # no process group: a no-op
    assert single.mat.sum() == 0
