"""mmseg-style training and eval transforms on (tv_tensors.Image, tv_tensors.Mask) pairs."""

import colorsys

import pytest
import torch
from torchvision import tv_tensors

from isa_explorer.data import build_eval_transforms, build_train_transforms
from isa_explorer.data.transforms import (
    CatMaxRatioCrop,
    PadToSize,
    PhotoMetricDistortion,
    RandomRescale,
    rescale_size,
)


def sample(h: int, w: int, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
    mask = torch.randint(0, classes, (h // 4, w // 4), generator=g)
    mask = mask.repeat_interleave(4, 0).repeat_interleave(4, 1)  # 4x4 blocks of one class
    mask[: h // 8] = 255
    return image, tv_tensors.Mask(mask)


def column_sample(h: int, w: int, left_cols: int, right: int = 2):
    """Image whose grey value encodes the column; mask class 1 left of ``left_cols``, else ``right``."""
    cols = torch.arange(w).expand(h, w)
    image = tv_tensors.Image(cols.to(torch.uint8).expand(3, h, w).clone())
    mask = torch.where(cols < left_cols, 1, right)
    return image, tv_tensors.Mask(mask)


def test_rescale_size_matches_mmcv_keep_ratio():
    assert rescale_size((1024, 2048), (2048, 1024)) == [1024, 2048]
    assert rescale_size((1024, 2048), (2048, 1024), 0.5) == [512, 1024]
    assert rescale_size((1024, 2048), (2048, 1024), 1.75) == [1792, 3584]
    # ADE20K's (2048, 512): the short edge reaches 512 unless the long edge hits 2048 first.
    assert rescale_size((375, 500), (2048, 512)) == [512, 683]
    assert rescale_size((683, 512), (512, 2048)) == [683, 512]
    assert rescale_size((100, 1000), (2048, 512)) == [205, 2048]


def test_random_rescale_keeps_ratio_and_mask_values():
    torch.manual_seed(0)
    image, mask = sample(32, 64)
    sizes = set()
    for _ in range(20):
        out_img, out_mask = RandomRescale((64, 32), (0.5, 2.0))(image, mask)
        h, w = out_img.shape[-2:]
        assert out_mask.shape == (h, w) and isinstance(out_mask, tv_tensors.Mask)
        assert 16 <= h <= 64 and abs(w - 2 * h) <= 1
        assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist())  # nearest
        sizes.add(h)
    assert len(sizes) > 10


def test_train_transforms_output_crop_size_and_values():
    torch.manual_seed(0)
    t = build_train_transforms(scale=(128, 64), crop_size=(48, 40))
    for h, w in [(64, 128), (16, 24), (80, 48)]:
        image, mask = sample(h, w, seed=h)
        for _ in range(5):
            out_img, out_mask = t(image, mask)
            assert isinstance(out_img, tv_tensors.Image) and out_img.dtype == torch.uint8
            assert isinstance(out_mask, tv_tensors.Mask) and out_mask.dtype == torch.int64
            assert out_img.shape == (3, 48, 40) and out_mask.shape == (48, 40)
            assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist()) | {255}


def test_train_transforms_pad_image_with_0_and_mask_with_255():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.full((3, 32, 64), 200, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(32, 64, dtype=torch.int64))
    # Fixed ratio 0.5: 32x64 -> 16x32, padded bottom/right to 24x40 after the photometric step.
    t = build_train_transforms((64, 32), (24, 40), ratio_range=(0.5, 0.5), cat_max_ratio=1.0)
    for _ in range(5):
        out_img, out_mask = t(image, mask)
        assert (out_mask[:16, :32] == 1).all()
        assert (out_mask[16:] == 255).all() and (out_mask[:, 32:] == 255).all()
        assert (out_img[:, 16:] == 0).all() and (out_img[:, :, 32:] == 0).all()
    img, msk = PadToSize((5, 6), image_fill=(1, 2, 3), mask_fill=7)(image[:, :3, :4], mask[:3, :4])
    assert img[:, 3:, :].flatten(1).tolist() == [[1] * 12, [2] * 12, [3] * 12]
    assert (msk[3:] == 7).all() and (msk[:, 4:] == 7).all() and (msk[:3, :4] == 1).all()


def shares(mask: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(mask[mask != 255].flatten())
    return counts[counts > 0].float() / counts.sum()


def test_cat_max_ratio_rejects_crops_dominated_by_one_class():
    # 32x32 crops of a 64x64 mask, class 1 in the first 24 columns: a crop is accepted only
    # at horizontal offsets 1..15 (45% of them); elsewhere one class covers >= 75%.
    image, mask = column_sample(64, 64, 24)
    torch.manual_seed(0)
    crop = CatMaxRatioCrop((32, 32), cat_max_ratio=0.75)
    for _ in range(30):
        out_img, out_mask = crop(image, mask)
        left = int(out_img[0, 0, 0])  # the image encodes the column
        assert torch.equal(out_mask, mask[:32, left : left + 32])
        assert len(shares(out_mask)) == 2 and shares(out_mask).max() < 0.75
    unchecked = [shares(CatMaxRatioCrop((32, 32), 1.0)(image, mask)[1]).max() for _ in range(30)]
    assert sum(s >= 0.75 for s in unchecked) >= 8


def test_cat_max_ratio_does_not_count_ignore_pixels():
    # Class 1 next to ignore only: counting 255 as a class would accept the offsets that
    # split them evenly; not counting it, every crop has one class, so the crop is uniform.
    image, mask = column_sample(32, 64, 32, right=255)
    torch.manual_seed(0)
    crop = CatMaxRatioCrop((32, 32), cat_max_ratio=0.75)
    lefts = torch.tensor([int(crop(image, mask)[0][0, 0, 0]) for _ in range(200)])
    balanced = ((lefts > 8) & (lefts < 24)).float().mean()  # 15 of the 33 offsets
    assert 0.3 < balanced < 0.6


def test_crop_smaller_input_keeps_it_whole():
    image, mask = sample(16, 20)
    out_img, out_mask = CatMaxRatioCrop((32, 32))(image, mask)
    assert torch.equal(out_img, image) and torch.equal(out_mask, mask)


def test_flip_moves_image_and_mask_together():
    # Grey image increasing to the right; saturation and hue leave grey alone and
    # brightness/contrast are monotone, so the image still tells whether it was flipped.
    h, w = 16, 32
    cols = torch.linspace(40, 200, w).round().to(torch.uint8)
    image = tv_tensors.Image(cols.expand(3, h, w).clone())
    mask = tv_tensors.Mask(torch.where(torch.arange(w) < 10, 1, 2).expand(h, w).clone())
    t = build_train_transforms((w, h), (h, w), ratio_range=(1.0, 1.0), cat_max_ratio=1.0)
    torch.manual_seed(0)
    flips = []
    for _ in range(20):
        out_img, out_mask = t(image, mask)
        mask_flipped = torch.equal(out_mask, mask.flip(-1))
        assert mask_flipped or torch.equal(out_mask, mask)
        left, right = out_img[0, :, : w // 2].float().mean(), out_img[0, :, w // 2 :].float().mean()
        assert (left > right) == mask_flipped
        assert (out_img[0] == out_img[1]).all() and (out_img[1] == out_img[2]).all()
        flips.append(mask_flipped)
    assert 0 < sum(flips) < 20


def test_photometric_distortion_follows_mmseg():
    t = PhotoMetricDistortion()
    px = [(200, 100, 50), (10, 20, 30), (255, 0, 128), (90, 90, 90)]
    image = tv_tensors.Image(torch.tensor(px, dtype=torch.uint8).T.reshape(3, 1, 4))
    none = dict(brightness=None, contrast=None, saturation=None, hue=None, contrast_first=True)
    assert torch.equal(t.transform(image, none), image)
    out = t.transform(image, {**none, "brightness": 70.5})  # + delta, clip, truncate
    assert out[:, 0, 0].tolist() == [255, 170, 120] and isinstance(out, tv_tensors.Image)
    out = t.transform(image, {**none, "contrast": 1.5})  # * alpha, clip, truncate
    assert out[:, 0, 1].tolist() == [15, 30, 45] and out[:, 0, 0].tolist() == [255, 150, 75]
    for alpha in (0.5, 1.5):  # HSV saturation scaled, hue and value kept
        out = t.transform(image, {**none, "saturation": alpha})
        for k, p in enumerate(px):
            hh, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in p))
            want = [255 * c for c in colorsys.hsv_to_rgb(hh, min(s * alpha, 1.0), v)]
            assert out[:, 0, k].tolist() == pytest.approx(want, abs=1.0)
    out = t.transform(image, {**none, "hue": 18})  # 18 of 180 OpenCV units = 36 degrees
    hh, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in px[0]))
    want = [255 * c for c in colorsys.hsv_to_rgb((hh + 0.1) % 1.0, s, v)]
    assert out[:, 0, 0].tolist() == pytest.approx(want, abs=1.5)
    mask = tv_tensors.Mask(torch.tensor([[1, 2, 3, 4]]))
    torch.manual_seed(0)
    changed = 0
    for _ in range(10):
        out_img, out_mask = t(image, mask)
        assert out_mask is mask and out_img.dtype == torch.uint8
        assert (out_img[:, 0, 3] == out_img[0, 0, 3]).all()  # grey stays grey
        changed += not torch.equal(out_img, image)
    assert changed >= 5


def test_photometric_distortion_orders_contrast_at_random():
    t = PhotoMetricDistortion()
    image = tv_tensors.Image(torch.tensor([[[200]], [[100]], [[50]]], dtype=torch.uint8))
    none = dict(brightness=None, contrast=None, saturation=None, hue=None, contrast_first=True)
    contrast, sat_hue = {**none, "contrast": 1.5}, {**none, "saturation": 0.5, "hue": 10}
    both = {**none, "contrast": 1.5, "saturation": 0.5, "hue": 10}
    first = t.transform(image, both)
    assert torch.equal(first, t.transform(t.transform(image, contrast), sat_hue))
    last = t.transform(image, {**both, "contrast_first": False})
    assert torch.equal(last, t.transform(t.transform(image, sat_hue), contrast))
    assert not torch.equal(first, last)  # contrast clips 200 -> 255 only when applied first


def test_photometric_distortion_draws_mmseg_parameters():
    t = PhotoMetricDistortion()
    torch.manual_seed(0)
    draws = [t.make_params([]) for _ in range(2000)]
    for key in ("brightness", "contrast", "saturation", "hue"):
        used = [d[key] for d in draws if d[key] is not None]
        assert 0.45 < len(used) / len(draws) < 0.55, key  # each step with p = 0.5
    assert 0.45 < sum(d["contrast_first"] for d in draws) / len(draws) < 0.55

    def values(key):
        return torch.tensor([float(d[key]) for d in draws if d[key] is not None])

    b, c, s, h = values("brightness"), values("contrast"), values("saturation"), values("hue")
    assert -32 <= b.min() < -30 and 30 < b.max() <= 32
    assert 0.5 <= c.min() < 0.52 and 1.48 < c.max() <= 1.5
    assert 0.5 <= s.min() < 0.52 and 1.48 < s.max() <= 1.5
    # numpy's randint(-18, 18) as in mmseg: integers -18..17.
    assert torch.equal(h, h.round()) and set(h.tolist()) == set(range(-18, 18))


def test_eval_transforms_resize_image_only():
    image, mask = sample(48, 64)
    out_img, out_mask = build_eval_transforms((128, 32))(image, mask)
    assert out_img.shape == (3, 32, 43) and isinstance(out_img, tv_tensors.Image)
    assert torch.equal(out_mask, mask)
    same_img, same_mask = build_eval_transforms(None)(image, mask)
    assert torch.equal(same_img, image) and torch.equal(same_mask, mask)


def test_transforms_work_in_a_dataloader():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return build_train_transforms((64, 32), (24, 24))(*sample(32, 64, seed=i))

    images, masks = next(iter(torch.utils.data.DataLoader(Pairs(), batch_size=4)))
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.uint8
    assert masks.shape == (4, 24, 24) and masks.dtype == torch.int64
