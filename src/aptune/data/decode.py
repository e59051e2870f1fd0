"""Video decoding with PyAV: open, seek to the keyframe before the first needed frame,
decode up to the last needed frame, return ``uint8`` RGB frames ``(T, H, W, C)``.

Frame indices live on a regular time grid: index ``i`` means the frame shown at
``start + i / average_rate``.  For constant frame rate files that is exactly the
``i``-th decoded frame; for variable frame rate files it picks, for each grid
point, the decoded frame nearest in time, so sampled clips stay evenly spaced in
time rather than in (irregular) frame count.  Indices past the last decoded frame
repeat the last frame, which is how short videos are padded.

The container stays open only inside ``with open_video(...)``: one read, then
closed, so thousands of videos never hold thousands of file handles.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

__all__ = [
    "DecodeError",
    "VideoInfo",
    "VideoReader",
    "open_video",
    "read_frames",
    "probe_video",
    "default_decode_threads",
]


class DecodeError(Exception):
    """A video that cannot be opened or decoded; the message says why in a few words."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video, read without decoding."""

    num_frames: int
    fps: float
    height: int  # after applying the display rotation
    width: int
    duration: float | None
    rotation: int  # degrees counter-clockwise to turn decoded frames for display
    frames_exact: bool  # the count came from the container index, not an estimate


def default_decode_threads(num_workers: int, cores: int | None = None) -> int:
    """Decoder threads per worker so that workers x threads does not exceed the cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, num_workers))


class VideoReader:
    """One open video.  Use through :func:`open_video` so it is always closed."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise DecodeError("file not found")
        if os.path.getsize(self.path) == 0:
            raise DecodeError("empty file (0 bytes)")
        try:
            self.container = av.open(self.path, metadata_errors="ignore")
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise DecodeError(f"cannot open ({_short(exc)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise DecodeError("no video stream")
        self.stream = self.container.streams.video[0]
        codec = self.stream.codec_context
        if threads > 1:
            # Frame+slice threading; only worth it when the worker has spare cores.
            codec.thread_type = "AUTO"
            codec.thread_count = threads
        else:
            codec.thread_count = 1
        self._rate = _frame_rate(self.stream)
        self._time_base = self.stream.time_base or Fraction(1, 1)
        self._start = self.stream.start_time or 0
        self._rotation: int | None = None  # known once a frame is decoded
        self._count: int | None = None
        self._count_exact = False
        self.frames_decoded = 0  # for tests and benchmarks: proves seeking skipped frames

    # -- metadata ---------------------------------------------------------------------
    @property
    def fps(self) -> float:
        return float(self._rate)

    @property
    def num_frames(self) -> int:
        """Frame count: container index, else duration x rate, else a packet count."""
        if self._count is None:
            self._count, self._count_exact = self._frame_count()
        return self._count

    def info(self) -> VideoInfo:
        """Metadata; the rotation is only known once a frame was decoded (else 0)."""
        height, width = self.stream.codec_context.height, self.stream.codec_context.width
        rotation = self._rotation or 0
        if rotation % 180:
            height, width = width, height
        duration = None
        if self.stream.duration:
            duration = float(self.stream.duration * self._time_base)
        elif self.container.duration:
            duration = self.container.duration / av.time_base
        count = self.num_frames
        return VideoInfo(count, self.fps, height, width, duration, rotation, self._count_exact)

    def _frame_count(self) -> tuple[int, bool]:
        if self.stream.frames and self.stream.frames > 0:
            return int(self.stream.frames), True
        if self.stream.duration:
            seconds = float(self.stream.duration * self._time_base)
        elif self.container.duration:
            seconds = self.container.duration / av.time_base
        else:
            seconds = 0.0
        if seconds > 0:
            return max(1, round(seconds * float(self._rate))), False
        # No index and no duration: count packets (demux only, no decoding).
        count = sum(1 for packet in self.container.demux(self.stream) if packet.size)
        self.container.seek(0, stream=self.stream, backward=True)
        if count == 0:
            raise DecodeError("no video packets")
        return count, True

    # -- decoding ---------------------------------------------------------------------
    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(T, H, W, 3)``."""
        if len(indices) == 0:
            raise ValueError("no frame indices requested")
        wanted = sorted({max(0, int(i)) for i in indices})
        try:
            found = self._decode(wanted, seek=wanted[0] > 0)
        except DecodeError:
            raise
        except (av.FFmpegError, MemoryError, ValueError, RuntimeError) as exc:
            raise DecodeError(f"decode error ({_short(exc)})") from None
        arrays = [found[max(0, int(i))] for i in indices]
        return torch.from_numpy(np.stack(arrays))

    def _decode(self, wanted: list[int], seek: bool) -> dict[int, np.ndarray]:
        rate, time_base, start = self._rate, self._time_base, self._start
        if seek:
            target = start + int(math.floor(wanted[0] / rate / time_base))
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        scale = float(time_base * rate)  # pts units -> grid positions (floats: fast in the loop)
        found: dict[int, np.ndarray] = {}
        position = 0  # next entry of ``wanted`` to fill
        previous = None  # (grid position, frame) of the last decoded frame
        for counter, frame in enumerate(self.container.decode(self.stream)):
            if frame.pts is None:
                if seek:  # cannot place frames after a seek without timestamps
                    self.container.seek(0, stream=self.stream, backward=True)
                    return self._decode(wanted, seek=False)
                grid = float(counter)
            else:
                grid = (frame.pts - start) * scale
            self.frames_decoded += 1
            if seek and previous is None and grid > wanted[0] + 0.5:
                # The demuxer landed after the frame we need (bad index): start over.
                self.container.seek(start, stream=self.stream, backward=True)
                return self._decode(wanted, seek=False)
            while position < len(wanted) and grid >= wanted[position]:
                index = wanted[position]
                use_previous = previous is not None and index - previous[0] < grid - index
                chosen = previous[1] if use_previous else frame
                found[index] = self._to_rgb(chosen)
                position += 1
            if position == len(wanted):
                return found
            previous = (grid, frame)
        if previous is None:
            raise DecodeError(f"no frames decoded at or after frame {wanted[0]}")
        last_grid = previous[0]
        count = self.num_frames
        if last_grid < 0.9 * count - 2 and wanted[-1] > last_grid + 1:
            raise DecodeError(
                f"stream ended at frame {int(last_grid) + 1} of {count} (truncated file?)"
            )
        last = self._to_rgb(previous[1])
        for index in wanted[position:]:
            found[index] = last  # short video: repeat the last frame
        return found

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        array = _reformatter().reformat(frame, format="rgb24").to_ndarray()
        rotation = _normalise_rotation(getattr(frame, "rotation", 0) or 0)
        self._rotation = rotation
        if rotation:
            array = np.ascontiguousarray(np.rot90(array, k=rotation // 90))
        return array

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_local = threading.local()


def _reformatter() -> VideoReformatter:
    """One reusable converter per thread: ``frame.to_ndarray(format=...)`` builds a new
    scaler context for every frame, which costs more than decoding small frames."""
    # Keyed by process: a converter inherited through fork (DataLoader workers) must be
    # neither used nor freed in the child, where FFmpeg's state is not safe to touch.
    by_process = _local.__dict__.setdefault("by_process", {})
    pid = os.getpid()
    if pid not in by_process:
        by_process[pid] = VideoReformatter()
    return by_process[pid]


def open_video(path: str | os.PathLike, threads: int = 1) -> VideoReader:
    """Open ``path`` for one read: ``with open_video(p) as video: video.get_frames(idx)``."""
    return VideoReader(path, threads=threads)


def read_frames(path: str | os.PathLike, indices: Sequence[int], threads: int = 1) -> torch.Tensor:
    """Decode frames ``indices`` of ``path`` as uint8 ``(T, H, W, 3)`` RGB."""
    with open_video(path, threads) as video:
        return video.get_frames(indices)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, fps, size and rotation; decodes only the first frame (for the rotation)."""
    with open_video(path) as video:
        video.get_frames([0])
        return video.info()


def _frame_rate(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return Fraction(rate)
    return Fraction(25, 1)


def _normalise_rotation(angle: float) -> int:
    # PyAV reports the counter-clockwise angle that turns the stored picture into the
    # displayed one; only right angles occur in practice.
    return int(round(angle / 90.0)) % 4 * 90


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]
