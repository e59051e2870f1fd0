"""Which frames a clip uses: dense windows and TSN segments, train and test."""

from __future__ import annotations

import pytest
import torch

from aptune.data.sampling import (
    clip_indices,
    dense_test_indices,
    dense_train_indices,
    resolve_sampling,
    segment_test_indices,
    segment_train_indices,
)
from aptune.errors import ConfigError


def test_dense_train_window_is_random_and_inside():
    torch.manual_seed(0)
    starts = set()
    for _ in range(200):
        idx = dense_train_indices(100, 16, 4)
        assert len(idx) == 16
        assert all(b - a == 4 for a, b in zip(idx, idx[1:]))
        assert idx[0] >= 0 and idx[-1] <= 99
        starts.add(idx[0])
    assert min(starts) == 0 and max(starts) == 100 - 64 and len(starts) > 20


def test_dense_short_video_repeats_last_frame():
    idx = dense_train_indices(10, 8, 4)
    assert idx == [0, 4, 8, 9, 9, 9, 9, 9]
    assert dense_test_indices(3, 4, 2, 5, 4) == [0, 2, 2, 2]


def test_dense_test_windows_spread_start_to_end():
    windows = [dense_test_indices(100, 16, 4, 5, s) for s in range(5)]
    assert [w[0] for w in windows] == [0, 9, 18, 27, 36]
    assert windows[-1][-1] == 96
    assert dense_test_indices(100, 16, 4, 1, 0)[0] == 18  # one window: the centre


def test_segment_train_one_frame_per_segment():
    torch.manual_seed(0)
    for _ in range(50):
        idx = segment_train_indices(64, 8)
        assert [i // 8 for i in idx] == list(range(8))
    # varied within a segment
    assert len({tuple(segment_train_indices(64, 8)) for _ in range(20)}) > 1


def test_segment_test_offsets_are_fixed_and_distinct():
    views = [segment_test_indices(64, 8, 2, s) for s in range(2)]
    assert views == [[2, 10, 18, 26, 34, 42, 50, 58], [6, 14, 22, 30, 38, 46, 54, 62]]
    assert segment_test_indices(64, 8, 2, 0) == views[0]  # deterministic
    short = segment_test_indices(4, 8, 1, 0)
    assert short == [0, 0, 1, 1, 2, 2, 3, 3]


def test_dispatch_and_resolution():
    assert resolve_sampling("auto", "ssv2") == "segment"
    assert resolve_sampling("auto", "kinetics") == "dense"
    assert resolve_sampling("dense", "ssv2") == "dense"
    with pytest.raises(ConfigError, match="data.sampling"):
        resolve_sampling("tsn", "ssv2")
    assert clip_indices("segment", 64, 8, 4, False, 2, 1) == segment_test_indices(64, 8, 2, 1)
    assert clip_indices("dense", 100, 16, 4, False, 5, 2) == dense_test_indices(100, 16, 4, 5, 2)
