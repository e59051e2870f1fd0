"""Frame-counter videos for the decoder tests: frame ``i`` shows the number ``i``.

Test material only, so it lives here and not in the wheel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aptune.data.synth import write_video


def counter_frames(num_frames: int, size: tuple[int, int] = (32, 48), grey: bool = False) -> np.ndarray:
    """Frames whose content encodes their index: the left half's grey level is
    ``(i % 16) * 16 + 8`` and the right half's ``(i // 16) * 16 + 8``."""
    height, width = size
    frames = np.zeros((num_frames, height, width), np.uint8)
    for i in range(num_frames):
        frames[i, :, : width // 2] = (i % 16) * 16 + 8
        frames[i, :, width // 2 :] = (i // 16) % 16 * 16 + 8
    return frames if grey else np.repeat(frames[..., None], 3, axis=-1)


def read_counter(frame: np.ndarray) -> int:
    """The index written by :func:`counter_frames` into one decoded (H,W,3) frame."""
    width = frame.shape[1]
    left = float(frame[:, : width // 4].mean())
    right = float(frame[:, width - width // 4 :].mean())
    return int(round((left - 8) / 16)) + 16 * int(round((right - 8) / 16))


def make_counter_video(
    path: str | os.PathLike, num_frames: int, size: tuple[int, int] = (32, 48), **write_kwargs
) -> Path:
    """Write a video whose frame ``i`` shows the number ``i`` (see :func:`read_counter`)."""
    write_video(path, counter_frames(num_frames, size), **write_kwargs)
    return Path(path)
