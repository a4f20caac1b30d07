"""The synthetic long-range-context dataset: determinism, labels, and that the cue is needed."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from isa_explorer.data.synthetic import (
    SYNTHETIC_CONTEXT_CLASSES,
    SYNTHETIC_INFO,
    SyntheticContextDataset,
    generate,
)

SIZE = (128, 256)


def test_info_describes_the_classes():
    assert SYNTHETIC_INFO.name == "synthetic-context"
    assert SYNTHETIC_INFO.num_classes == len(SYNTHETIC_INFO.palette) == 7
    assert SYNTHETIC_INFO.class_names[0] == "background"
    assert SYNTHETIC_CONTEXT_CLASSES == (3, 4)
    assert SyntheticContextDataset.info is SYNTHETIC_INFO


@pytest.mark.parametrize("size", [SIZE, (256, 512)])
def test_generate_is_deterministic_per_seed_index_and_size(size):
    a_img, a_lab = generate(3, 7, size)
    b_img, b_lab = generate(3, 7, size)
    assert a_img.shape == (*size, 3) and a_img.dtype == np.uint8
    assert a_lab.shape == size and a_lab.dtype == np.int64
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, generate(4, 7, size)[0])  # other seed
    assert not np.array_equal(a_img, generate(3, 8, size)[0])  # other index


def test_dataset_items_match_generate_and_have_the_agreed_types():
    ds = SyntheticContextDataset(length=5, seed=2, size=SIZE)
    assert len(ds) == 5
    image, mask = ds[4]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
    assert image.shape == (3, *SIZE) and mask.shape == SIZE
    ref_img, ref_lab = generate(2, 4, SIZE)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), ref_img)
    np.testing.assert_array_equal(mask.numpy(), ref_lab)
    # A second dataset object with the same seed gives the same items; another seed does not.
    assert torch.equal(SyntheticContextDataset(5, 2, SIZE)[1][0], ds[1][0])
    assert not torch.equal(SyntheticContextDataset(5, 9, SIZE)[1][0], ds[1][0])
    with pytest.raises(IndexError):
        ds[5]


def test_dataset_applies_transforms_to_image_and_mask():
    flip = v2.RandomHorizontalFlip(p=1.0)
    image, mask = SyntheticContextDataset(3, 0, SIZE, transforms=flip)[1]
    ref_img, ref_mask = SyntheticContextDataset(3, 0, SIZE)[1]
    assert torch.equal(image, ref_img.flip(-1)) and torch.equal(mask, ref_mask.flip(-1))


def test_labels_and_scene_geometry():
    for size in (SIZE, (256, 512)):
        h, w = size
        for i in range(40):
            image, labels = generate(0, i, size)
            assert set(np.unique(labels)) <= set(range(SYNTHETIC_INFO.num_classes))
            cue_ys, cue_xs = np.nonzero(np.isin(labels, (1, 2)))
            obj_ys, obj_xs = np.nonzero(np.isin(labels, SYNTHETIC_CONTEXT_CLASSES))
            assert len(cue_xs) >= 32 * 32 and len(obj_xs) > 0
            # One cue, one context per image, matching each other.
            cue_class = set(labels[cue_ys, cue_xs].tolist())
            assert cue_class in ({1}, {2})
            assert set(labels[obj_ys, obj_xs].tolist()) == {cue_class.pop() + 2}
            # The cue is near an edge; the objects are more than a third of the width away.
            gap = max(obj_xs.min() - cue_xs.max(), cue_xs.min() - obj_xs.max())
            assert gap > w / 3
            assert min(cue_xs.min(), w - 1 - cue_xs.max()) < w // 10


def test_swapping_the_cue_swaps_the_context_classes_only():
    for i in range(10):
        img_a, lab_a = generate(5, i, SIZE, context=0)
        img_b, lab_b = generate(5, i, SIZE, context=1)
        cue = np.isin(lab_a, (1, 2))
        ctx = np.isin(lab_a, SYNTHETIC_CONTEXT_CLASSES)
        assert ctx.any() and np.array_equal(cue, np.isin(lab_b, (1, 2)))
        # Every pixel outside the cue is identical, the cue itself is recoloured...
        np.testing.assert_array_equal(img_a[~cue], img_b[~cue])
        assert np.abs(img_a[cue].astype(int) - img_b[cue].astype(int)).mean() > 100
        # ... and the labels of the identical object pixels swap.
        assert (lab_a[ctx] == 3).all() and (lab_b[ctx] == 4).all()
        np.testing.assert_array_equal(lab_a[~cue & ~ctx], lab_b[~cue & ~ctx])
    assert any(
        np.array_equal(generate(5, i, SIZE, context=0)[0], generate(5, i, SIZE)[0])
        for i in range(4)
    )


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="too small"):
        generate(0, 0, (64, 64))
    with pytest.raises(ValueError, match="too small"):
        SyntheticContextDataset(size=(32, 512))
    with pytest.raises(ValueError, match="context"):
        generate(0, 0, SIZE, context=2)
    with pytest.raises(ValueError, match="non-negative"):
        generate(-1, 0, SIZE)


# --- The context classes cannot be told apart from a local window, only with the cue. ---

WINDOW = 64  # the local window: twice the largest object, far smaller than the cue distance


def _samples(seed: int, n_images: int, per_image: int = 4):
    """Local windows around context-class pixels, a coarse view of the whole image, labels."""
    gen = torch.Generator().manual_seed(seed)
    local, coarse, target = [], [], []
    r = WINDOW // 2
    for i in range(n_images):
        image, labels = generate(seed, i, SIZE)
        img = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # (3, H, W)
        padded = F.pad(img, (r, r, r, r))
        ys, xs = np.nonzero(np.isin(labels, SYNTHETIC_CONTEXT_CLASSES))
        pick = torch.randint(len(ys), (per_image,), generator=gen).numpy()
        for y, x in zip(ys[pick], xs[pick], strict=True):
            local.append(padded[:, y : y + WINDOW, x : x + WINDOW].reshape(-1))
            coarse.append(F.avg_pool2d(img, 16).reshape(-1))  # (3, H/16, W/16) flattened
            target.append(float(labels[y, x] == SYNTHETIC_CONTEXT_CLASSES[1]))
    return torch.stack(local), torch.stack(coarse), torch.tensor(target)


def _logistic_regression_accuracy(x_train, y_train, x_test, y_test) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(x_train.shape[1], 1)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(linear(x_train).squeeze(1), y_train)
        loss = loss + 1e-3 * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((linear(x_test).squeeze(1) > 0).float() == y_test).float().mean().item()


def test_a_local_window_is_at_chance_on_the_context_classes_the_cue_decides_them():
    local_tr, coarse_tr, y_tr = _samples(seed=0, n_images=300)
    local_te, coarse_te, y_te = _samples(seed=1, n_images=100)
    assert 0.35 < y_te.mean() < 0.65  # balanced: chance is ~0.5
    local_acc = _logistic_regression_accuracy(local_tr, y_tr, local_te, y_te)
    with_cue = _logistic_regression_accuracy(
        torch.cat([local_tr, coarse_tr], 1), y_tr, torch.cat([local_te, coarse_te], 1), y_te
    )
    assert local_acc <= 0.6, f"a {WINDOW}x{WINDOW} window decides the context: {local_acc:.3f}"
    assert with_cue >= 0.9, f"the same classifier with the cue in view: {with_cue:.3f}"
