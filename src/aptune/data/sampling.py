"""Which frames make a clip: dense windows (UCF101, HMDB51, Kinetics) and TSN-style
segments (Something-Something-v2).

All functions return frame indices in ``[0, num_frames_in_video)``; a video shorter
than the clip repeats its last frame (indices are clamped).  Random choices use
torch's global generator, which the DataLoader seeds per worker.
"""

from __future__ import annotations

import torch

from aptune.errors import ConfigError

__all__ = [
    "SAMPLINGS",
    "resolve_sampling",
    "dense_train_indices",
    "dense_test_indices",
    "segment_train_indices",
    "segment_test_indices",
    "clip_indices",
]

SAMPLINGS = ("auto", "dense", "segment")


def resolve_sampling(sampling: str, data_format: str) -> str:
    """``auto`` means segment sampling for SSv2 and dense sampling for everything else."""
    if sampling not in SAMPLINGS:
        raise ConfigError(f"data.sampling={sampling!r} is not one of: {', '.join(SAMPLINGS)}")
    if sampling == "auto":
        return "segment" if data_format == "ssv2" else "dense"
    return sampling


def _clamp(indices: list[int], total: int) -> list[int]:
    return [min(max(0, i), total - 1) for i in indices]


def dense_train_indices(total: int, num_frames: int, sampling_rate: int) -> list[int]:
    """``num_frames`` frames ``sampling_rate`` apart from a random start."""
    span = num_frames * sampling_rate
    start = int(torch.randint(0, max(0, total - span) + 1, ()).item())
    return _clamp([start + i * sampling_rate for i in range(num_frames)], total)


def dense_test_indices(total: int, num_frames: int, sampling_rate: int, num_segments: int, segment: int) -> list[int]:
    """Window ``segment`` of ``num_segments`` windows spread evenly from start to end."""
    span = num_frames * sampling_rate
    room = max(0, total - span)
    start = round(room * segment / (num_segments - 1)) if num_segments > 1 else room // 2
    return _clamp([start + i * sampling_rate for i in range(num_frames)], total)


def segment_train_indices(total: int, num_frames: int) -> list[int]:
    """One random frame from each of ``num_frames`` equal segments (TSN)."""
    length = total / num_frames
    offsets = torch.rand(num_frames).tolist()
    return _clamp([int(length * (i + offsets[i])) for i in range(num_frames)], total)


def segment_test_indices(total: int, num_frames: int, num_segments: int, segment: int) -> list[int]:
    """The same relative position in every segment; view ``segment`` of ``num_segments``
    uses position ``(segment + 0.5) / num_segments``, so the views are distinct."""
    length = total / num_frames
    offset = (segment + 0.5) / num_segments
    return _clamp([int(length * (i + offset)) for i in range(num_frames)], total)


def clip_indices(
    sampling: str,
    total: int,
    num_frames: int,
    sampling_rate: int,
    train: bool,
    num_segments: int = 1,
    segment: int = 0,
) -> list[int]:
    """Dispatch on ``sampling`` ("dense" | "segment") and train/test."""
    if total < 1:
        raise ValueError("a video needs at least one frame")
    if sampling == "dense":
        if train:
            return dense_train_indices(total, num_frames, sampling_rate)
        return dense_test_indices(total, num_frames, sampling_rate, num_segments, segment)
    if sampling == "segment":
        if train:
            return segment_train_indices(total, num_frames)
        return segment_test_indices(total, num_frames, num_segments, segment)
    raise ValueError(f"unknown sampling {sampling!r}")
