"""Synthetic data: deterministic, fast, and classes that one frame cannot tell apart."""

from __future__ import annotations

import time

import numpy as np
import pytest

from aptune.data.decode import probe_video, read_frames
from aptune.data.synth import MOTIONS, make_synthetic_dataset, render_motion_video


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


def test_fast_enough(tmp_path):
    start = time.perf_counter()
    dataset = make_synthetic_dataset(
        tmp_path, format="list", num_classes=4, per_class=5, frames=32, size=(64, 64)
    )
    assert dataset.num_videos == 20
    assert time.perf_counter() - start < 5  # 200 such videos take a few seconds


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
