"""Synthetic data: deterministic, fast, and classes that one frame cannot tell apart."""

from __future__ import annotations

import numpy as np
import pytest

from aptune.data.decode import probe_video, read_frames
from aptune.data.synth import MOTIONS, PALETTE, make_synthetic_dataset, render_motion_video


def test_deterministic_by_seed(tmp_path):
    a = make_synthetic_dataset(
        tmp_path / "a", format="list", num_classes=2, per_class=2, frames=6, size=(16, 16), seed=5
    )
    b = make_synthetic_dataset(
        tmp_path / "b", format="list", num_classes=2, per_class=2, frames=6, size=(16, 16), seed=5
    )
    c = make_synthetic_dataset(
        tmp_path / "c", format="list", num_classes=2, per_class=2, frames=6, size=(16, 16), seed=6
    )
    for (pa, _), (pb, _), (pc, _) in zip(a.videos, b.videos, c.videos):
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.read_bytes() != pc.read_bytes()


def test_opposite_motions_look_alike_in_one_frame_but_move_oppositely():
    rng = np.random.default_rng(0)
    right = render_motion_video("right", 16, (48, 48), rng).astype(float)
    left = render_motion_video("left", 16, (48, 48), rng).astype(float)
    for video, sign in ((right, 1), (left, -1)):
        # centre of mass of the change between first and last frame moves along x
        diff = np.abs(video[1:] - video[:-1]).sum(axis=(1, 3))  # (T-1, W)
        centres = (diff * np.arange(48)).sum(axis=1) / diff.sum(axis=1)
        assert sign * (centres[-3:].mean() - centres[:3].mean()) > 3


def test_every_motion_renders_and_time_matters():
    for motion, _ in MOTIONS:
        video = render_motion_video(motion, 8, (24, 32), np.random.default_rng(1))
        assert video.shape == (8, 24, 32, 3) and video.dtype == np.uint8
        assert np.abs(video[0].astype(int) - video[-1].astype(int)).mean() > 1, motion


def test_which_object_moves_changes_only_pixels_of_the_named_colour():
    for name, colour in PALETTE.items():
        video = render_motion_video(f"{name}_moves", 16, (64, 64), np.random.default_rng(3))
        changed = np.abs(video[-1].astype(int) - video[0].astype(int)).sum(-1) > 60
        # pixels that change are the mover leaving or arriving: where it arrives, it has its colour
        arrived = video[-1][changed].astype(float)
        distance = np.linalg.norm(arrived - np.asarray(colour, float), axis=-1)
        assert changed.sum() > 20, name
        assert np.median(distance) < np.median(np.linalg.norm(arrived - video[0][changed], axis=-1)), name
        others = [c for n, c in PALETTE.items() if n != name]
        still = np.abs(video[-1].astype(int) - video[0].astype(int)).sum(-1) <= 60
        # the two distractors are still and visible: some unchanged pixels show other palette colours
        shown = {
            n
            for n, c in PALETTE.items()
            if n != name and (np.linalg.norm(video[-1][still] - np.asarray(c, float), axis=-1) < 40).sum() > 20
        }
        assert len(shown) == 2, (name, shown, len(others))


def test_palette_scenes_have_the_named_number_of_objects():
    for motion, count in (("two_objects", 2), ("three_objects", 3), ("four_objects", 4)):
        video = render_motion_video(motion, 8, (64, 64), np.random.default_rng(5))
        shown = {
            n for n, c in PALETTE.items() if (np.linalg.norm(video[0] - np.asarray(c, float), axis=-1) < 40).sum() > 20
        }
        assert len(shown) == count, (motion, shown)


def test_writes_every_video_with_its_label(tmp_path):
    dataset = make_synthetic_dataset(tmp_path, format="list", num_classes=4, per_class=5, frames=32, size=(64, 64))
    assert dataset.num_videos == 20
    assert sorted(label for _, label in dataset.videos) == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    assert all(path.stat().st_size > 0 for path, _ in dataset.videos)


@pytest.mark.parametrize(
    "options",
    [
        {"grey": True},
        {"variable_frame_rate": True},
        {"rotation": 90},
        {"size": (33, 45)},
        {"frames": 3},
        {"gop": 4},
    ],
)
def test_variety_options_produce_loadable_videos(tmp_path, options):
    kwargs = {"num_classes": 2, "per_class": 1, "frames": 12, "size": (32, 48)}
    kwargs.update(options)
    dataset = make_synthetic_dataset(tmp_path, format="list", **kwargs)
    path = dataset.videos[0][0]
    info = probe_video(path)
    frames = read_frames(path, range(16))
    assert frames.shape[0] == 16 and frames.shape[-1] == 3
    height, width = kwargs["size"]
    expected = (width, height) if options.get("rotation") else (height, width)
    assert (info.height, info.width) == expected == tuple(frames.shape[1:3])
    assert info.num_frames in (kwargs["frames"], kwargs["frames"] + 1)


def test_worker_processes_write_the_same_files(tmp_path):
    kwargs = {
        "format": "list",
        "motions": ["red_moves", "two_objects"],
        "per_class": 2,
        "frames": 6,
        "size": (32, 32),
        "seed": 3,
    }
    one = make_synthetic_dataset(tmp_path / "one", **kwargs)
    two = make_synthetic_dataset(tmp_path / "two", workers=2, **kwargs)
    assert [label for _, label in one.videos] == [label for _, label in two.videos]
    for (a, _), (b, _) in zip(one.videos, two.videos):
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    "options",
    [
        {"fps": 0},
        {"fps": -1},
        {"fps": float("nan")},
        {"fps": float("inf")},
        {"fps": 1e6},
        {"gop": -1},
        {"gop": 0},
        {"gop": 2.5},
        {"per_class": 0},
        {"frames": 0},
        {"size": (1, 16)},
        {"size": (16,)},
        {"size": (16.0, 16)},
        {"seed": -1},
        {"workers": 0},
        {"frames": 10_000, "size": (4096, 4096)},
    ],
)
def test_library_refuses_values_the_encoders_or_memory_cannot_take(tmp_path, options):
    kwargs = {"num_classes": 1, "per_class": 1, "frames": 2, "size": (8, 8)}
    kwargs.update(options)
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path / "out", format="list", **kwargs)
    assert not (tmp_path / "out").exists()


def test_extreme_but_allowed_frame_rates_write_readable_videos(tmp_path):
    for fps in (0.001, 1000):
        for data_format in ("list", "ssv2", "kinetics"):  # AVI/MPEG-4, WebM/VP9, MP4/H.264
            dataset = make_synthetic_dataset(
                tmp_path / f"{data_format}{fps}",
                format=data_format,
                num_classes=1,
                per_class=1,
                frames=3,
                size=(8, 8),
                fps=fps,
            )
            info = probe_video(dataset.videos[0][0])
            assert info.fps == pytest.approx(fps, rel=1e-3) and info.num_frames == 3
