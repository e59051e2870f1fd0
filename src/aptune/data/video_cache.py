"""Decoded videos kept in memory, for datasets small enough that decoding dominates (``data.video_cache_mb``).

A small synthetic set (the demo's 720 videos of 40 frames at 64x64 take ~350 MB) is decoded
every epoch and by every run: decoding is then most of a clip's CPU time, ~3x the random
crop and flip.  The cache keeps each video's frames, decoded once at the size the
transforms need, and hands clips out by index, so what a clip holds is exactly what
decoding its frames would give.  It is one per process (shared by every run of that
process: the demo trains four methods on one set) and least-recently-used beyond its
budget.  DataLoader worker processes would each hold their own copy, so it is meant for
``data.num_workers: 0``.  Off (0) by default and in ``configs/``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import nullcontext

import torch

from aptune.data.decode import open_video

__all__ = ["DecodedVideo", "DecodedVideoCache", "open_cached_video", "shared_video_cache"]


class DecodedVideo:
    """A video's frames in memory, read like an open :class:`~aptune.data.decode.VideoReader`."""

    def __init__(self, frames: torch.Tensor, num_frames: int) -> None:
        self.frames = frames  # (T, H, W, 3) uint8: frame i of the video at row i
        self.num_frames = num_frames  # what the container reports, as the reader does

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        rows = torch.tensor([max(0, int(i)) for i in indices], dtype=torch.long)
        return self.frames[rows]


class DecodedVideoCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._videos: OrderedDict[tuple, DecodedVideo] = OrderedDict()
        self._lock = threading.Lock()

    def video(self, path: str, threads: int, max_short_side: int | None, decoder: str = "pyav") -> DecodedVideo:
        """The whole video, decoded on first use; a decode error propagates and nothing is kept."""
        key = (path, max_short_side, decoder)
        with self._lock:
            if key in self._videos:
                self.hits += 1
                self._videos.move_to_end(key)
                return self._videos[key]
        with open_video(path, threads, max_short_side=max_short_side, decoder=decoder) as reader:
            total = reader.num_frames
            decoded = DecodedVideo(reader.get_frames(range(total)), total)
        with self._lock:
            self.misses += 1
            self._keep(key, decoded)
        return decoded

    def _keep(self, key: tuple, decoded: DecodedVideo) -> None:
        size = decoded.frames.numel() * decoded.frames.element_size()
        if size > self.max_bytes or key in self._videos:
            return
        while self._videos and self.bytes + size > self.max_bytes:
            _, dropped = self._videos.popitem(last=False)
            self.bytes -= dropped.frames.numel() * dropped.frames.element_size()
        self._videos[key] = decoded
        self.bytes += size


_SHARED: DecodedVideoCache | None = None


def shared_video_cache(max_mb: int) -> DecodedVideoCache | None:
    """The process's cache with a budget of ``max_mb`` MiB (the largest asked for so far); None for 0."""
    global _SHARED
    if max_mb <= 0:
        return None
    if _SHARED is None:
        _SHARED = DecodedVideoCache(max_mb * 2**20)
    _SHARED.max_bytes = max(_SHARED.max_bytes, max_mb * 2**20)
    return _SHARED


def open_cached_video(
    path: str, threads: int, max_short_side: int | None, cache: DecodedVideoCache | None, decoder: str = "pyav"
):
    """A context manager giving a reader of ``path`` (decoded by ``decoder``): from ``cache`` when there is one."""
    if cache is None:
        return open_video(path, threads, max_short_side=max_short_side, decoder=decoder)
    return nullcontext(cache.video(path, threads, max_short_side, decoder))
