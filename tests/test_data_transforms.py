"""Spatial transforms: one crop/flip/augmentation for every frame, test crop positions,
RandAugment parsing and ops, output shape and dtype."""

from __future__ import annotations

import pytest
import torch

from aptune.config import DataConfig
from aptune.data import transforms as T
from aptune.data.datasets import build_dataset
from aptune.errors import ConfigError


def _static_clip(frames=8, height=60, width=80, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, height, width, 3), dtype=torch.uint8, generator=generator)
    return image.expand(frames, -1, -1, -1).contiguous()


def test_train_transform_shape_dtype_and_same_augmentation_on_every_frame():
    transform = T.TrainTransform(32, "rand-m9-n4-mstd0.5-inc1", horizontal_flip=True)
    clip = _static_clip()
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform(clip)
        assert out.shape == (3, 8, 32, 32) and out.dtype == torch.float32
        assert torch.equal(out, out[:, :1].expand_as(out)), "frames were augmented differently"


def test_every_randaugment_op_keeps_identical_frames_identical_and_in_range():
    video = T.to_float(_static_clip(4, 40, 50))
    for name, (op, level) in T._OPS.items():
        torch.manual_seed(1)
        out = op(video.clone(), level(7))
        assert out.shape == video.shape, name
        assert float(out.min()) >= 0 and float(out.max()) <= 255, name
        assert torch.equal(out, out[:1].expand_as(out)), name


def test_randaugment_ops_do_what_they_say():
    video = T.to_float(_static_clip(2, 16, 16))
    assert torch.equal(T._invert(video, 0), 255 - video)
    assert torch.equal(T._solarize(video, 256), video)  # threshold above everything: no-op
    assert torch.equal(T._posterize(video, 8), video)
    assert set(T._posterize(video, 1).unique().tolist()) <= {0.0, 128.0}
    assert torch.allclose(T._brightness(video, 1.0), video)
    assert torch.allclose(T._color(video, 1.0), video) and torch.allclose(T._contrast(video, 1.0), video)
    grey = T._color(video, 0.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    stretched = T._auto_contrast(video * 0.5 + 20, 0)
    assert float(stretched.amin()) == 0 and float(stretched.amax()) == 255
    equalized = T._equalize(video, 0)
    assert len(equalized.unique()) > 10 and float(equalized.amax()) <= 255
    shifted = T._translate_x(video, 0.25)  # content moves left by 4 pixels, fill enters right
    assert torch.equal(shifted[..., :12], video[..., 4:])
    assert torch.allclose(T._rotate(video, 0.0), video, atol=1e-3)
    rotated = T._rotate(video, 90.0)
    assert torch.allclose(
        rotated[..., 2:-2, 2:-2], torch.rot90(video, 1, (-2, -1))[..., 2:-2, 2:-2], atol=1e-2
    ) or torch.allclose(rotated[..., 2:-2, 2:-2], torch.rot90(video, -1, (-2, -1))[..., 2:-2, 2:-2], atol=1e-2)


def test_parse_rand_augment():
    augment = T.parse_rand_augment("rand-m4-n2-mstd0.2-inc1")
    assert (augment.magnitude, augment.num_ops, augment.magnitude_std) == (4, 2, 0.2)
    assert "SolarizeIncreasing" in augment.names and "Solarize" not in augment.names
    assert T.parse_rand_augment(None) is None and T.parse_rand_augment("") is None
    assert "Solarize" in T.parse_rand_augment("rand-m9-n2").names
    with pytest.raises(ConfigError, match="unknown part 'x3'"):
        T.parse_rand_augment("rand-m9-x3")
    with pytest.raises(ConfigError, match="must start with"):
        T.parse_rand_augment("auto-m9")


def test_random_resized_crop_box_bounds():
    torch.manual_seed(0)
    for _ in range(200):
        top, left, h, w = T.random_resized_crop_box(60, 80)
        assert top >= 0 and top + h <= 60 and left >= 0 and left + w <= 80
        assert 0.08 * 4800 * 0.7 <= h * w <= 4800


def test_test_crop_positions():
    assert T.crop_positions(224, 298, 224, 3) == [(0, 0), (0, 37), (0, 74)]
    assert T.crop_positions(298, 224, 224, 3) == [(0, 0), (37, 0), (74, 0)]
    assert T.crop_positions(224, 298, 224, 1) == [(0, 37)]
    assert T.crop_positions(256, 320, 224, 3) == [(16, 0), (16, 48), (16, 96)]


def test_test_transform_resizes_short_side_and_crops_left_centre_right():
    # a landscape clip whose columns encode their position
    width = 96
    columns = torch.linspace(0, 255, width).round().to(torch.uint8)
    clip = columns.view(1, 1, width, 1).expand(4, 48, width, 3).contiguous()
    transform = T.TestTransform(input_size=32, short_side_size=32, num_crops=3)
    resized = transform.resize(clip)
    assert resized.shape == (4, 3, 32, 64) and resized.dtype == torch.uint8
    crops = transform(clip)
    assert len(crops) == 3 and all(c.shape == (3, 4, 32, 32) and c.dtype == torch.float32 for c in crops)
    left_means = [float(c[0, :, :, 0].mean()) for c in crops]
    assert left_means[0] < left_means[1] < left_means[2]
    for crop in crops:  # the same crop on every frame
        assert torch.equal(crop, crop[:, :1].expand_as(crop))


def test_normalize_uses_imagenet_statistics():
    video = torch.full((1, 3, 2, 2), 255.0)
    out = T.normalize(video)
    assert out.shape == (3, 1, 2, 2)
    expected = [(1 - m) / s for m, s in zip(T.IMAGENET_MEAN, T.IMAGENET_STD)]
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor(expected))


def test_flip_off_for_ssv2_unless_asked(synthetic):
    ssv2 = build_dataset(DataConfig(format="ssv2", root=str(synthetic("ssv2").root)), "train")
    assert ssv2.transform.horizontal_flip is False
    forced = build_dataset(DataConfig(format="ssv2", root=str(synthetic("ssv2").root), horizontal_flip=True), "train")
    assert forced.transform.horizontal_flip is True
    ucf = build_dataset(DataConfig(format="ucf101", root=str(synthetic("ucf101").root)), "train")
    assert ucf.transform.horizontal_flip is True
    assert ssv2.sampling == "segment" and ucf.sampling == "dense"


def test_flip_happens_when_enabled_and_never_when_disabled():
    clip = _static_clip(2, 16, 16)
    plain = T.TrainTransform(16, None, horizontal_flip=False, scale=(1, 1), ratio=(1, 1))
    flipping = T.TrainTransform(16, None, horizontal_flip=True, scale=(1, 1), ratio=(1, 1))
    reference = plain(clip)
    outputs = []
    for seed in range(16):
        torch.manual_seed(seed)
        assert torch.equal(plain(clip), reference)
        outputs.append(flipping(clip))
    assert any(torch.equal(o, reference.flip(-1)) for o in outputs)
    assert any(torch.equal(o, reference) for o in outputs)


def test_random_erasing_puts_one_noise_box_in_each_chosen_frame():
    from aptune.data.transforms import random_erase

    torch.manual_seed(0)
    clip = torch.zeros(3, 64, 32, 32)
    random_erase(clip, probability=1.0)
    areas = []
    for frame in range(64):
        erased = clip[:, frame].abs().sum(dim=0) > 0
        rows, cols = erased.any(dim=1).nonzero().flatten(), erased.any(dim=0).nonzero().flatten()
        box_h, box_w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert erased.sum() == box_h * box_w  # one solid box of noise, in every channel
        areas.append(box_h * box_w / (32 * 32))
    assert min(areas) >= 0.015 and max(areas) <= 0.36  # 2-33 % of the frame (rounded box sides)
    assert len({round(a, 3) for a in areas}) > 10  # each frame draws its own box
    untouched = torch.zeros(3, 8, 32, 32)
    assert torch.equal(random_erase(untouched, probability=0.0), torch.zeros(3, 8, 32, 32))
    torch.manual_seed(1)
    half = random_erase(torch.zeros(3, 400, 16, 16), probability=0.25)
    share = (half.abs().sum(dim=(0, 2, 3)) > 0).float().mean().item()
    assert 0.18 < share < 0.32  # about a quarter of the frames


def test_the_training_transform_erases_only_when_asked():
    frames = torch.randint(0, 256, (4, 40, 40, 3), dtype=torch.uint8)
    torch.manual_seed(3)
    plain = T.TrainTransform(32, None, False, scale=(1.0, 1.0))(frames)
    torch.manual_seed(3)
    erased = T.TrainTransform(32, None, False, scale=(1.0, 1.0), random_erase=1.0)(frames)
    changed = (plain != erased).any(dim=0).flatten(1).any(dim=1)
    assert changed.all()  # every frame got its box
