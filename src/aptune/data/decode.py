"""Video decoding with PyAV: open, seek to the keyframe before the first needed frame,
decode up to the last needed frame, return ``uint8`` RGB frames ``(T, H, W, C)``.

Frame indices live on a regular time grid: index ``i`` means the frame shown at
``start + i / average_rate``.  For constant frame rate files that is exactly the
``i``-th decoded frame; for variable frame rate files it picks, for each grid
point, the decoded frame nearest in time, so sampled clips stay evenly spaced in
time rather than in (irregular) frame count.  Indices past the last decoded frame
repeat the last frame, which is how short videos are padded.

What a file can do to a reader, and what it gets:

* an input that cannot seek (a raw ``.h264`` elementary stream) is decoded from its
  start, reopened when it has to go back, so it is used, not lost;
* frames whose size changes mid-stream (legal in MKV, MJPEG, raw H.264) are scaled to
  the size of the first frame converted, so a clip always has one shape;
* frames are scaled down while they are converted when their short side exceeds
  ``max_short_side``, and a picture wider or taller than ``max_aspect_ratio`` : 1 is
  refused: resizing its short side for the model would blow it up to gigabytes;
* every error met while opening, counting frames, seeking or decoding (FFmpeg, OS,
  NumPy, anything) is a :class:`DecodeError` with a short reason, which the datasets
  count as a bad video: it never stops a run with a traceback.

The container stays open only inside ``with open_video(...)``: one read, then
closed, so thousands of videos never hold thousands of file handles.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from aptune.config import DECODERS
from aptune.errors import ConfigError

__all__ = [
    "DecodeError",
    "VideoInfo",
    "VideoReader",
    "open_video",
    "read_frames",
    "probe_video",
    "default_decode_threads",
    "check_video_file",
    "check_decoder",
    "DECODERS",
    "MAX_ASPECT_RATIO",
]

# Long side / short side beyond which a picture is refused.  Real videos stay under 4:1
# (32:9 monitors are 3.6:1, 360-degree equirectangular 2:1); at 10:1 a clip resized to a
# 224-pixel short side is 224 x 2240, about 8x a 4:3 clip.
MAX_ASPECT_RATIO = 10.0


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


def check_video_file(path: str) -> None:
    """A :class:`DecodeError` for a path that is no regular, non-empty file (before any decoder opens it)."""
    if not os.path.exists(path):
        raise DecodeError("file not found")
    if os.path.isdir(path):
        raise DecodeError("a folder, not a video file")
    if not os.path.isfile(path):  # reading a pipe or a device could block forever
        raise DecodeError("not a regular file (a pipe or a device?)")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")


def default_decode_threads(num_workers: int, cores: int | None = None) -> int:
    """Decoder threads per worker so that workers x threads does not exceed the cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, num_workers))


@contextmanager
def _reasons(what: str) -> Iterator[None]:
    """Turn any error inside into a :class:`DecodeError` "``what`` (reason)"."""
    try:
        yield
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile file can raise anything: count it
        raise DecodeError(f"{what} ({_short(exc)})") from None


class VideoReader:
    """One open video.  Use through :func:`open_video` so it is always closed.

    ``max_short_side`` (None: no limit) scales frames down while converting them so
    their short side is at most that; ``max_aspect_ratio`` (None: no limit) refuses
    pictures more elongated than that.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int = 1,
        max_short_side: int | None = None,
        max_aspect_ratio: float | None = MAX_ASPECT_RATIO,
    ):
        self.path = os.fspath(path)
        self.threads = threads
        self.max_short_side = max_short_side
        self.max_aspect_ratio = max_aspect_ratio
        self.container = None
        with _reasons("cannot open"):
            check_video_file(self.path)
            self._open()
        try:
            with _reasons("cannot read the stream header"):
                self._rate = _frame_rate(self.stream)
                self._time_base = self.stream.time_base or Fraction(1, 1)
                self._start = self.stream.start_time or 0
                codec = self.stream.codec_context
                if codec.width > 0 and codec.height > 0:
                    self._check_aspect(codec.height, codec.width)
        except DecodeError:
            self.close()
            raise
        self._seekable = True  # until a seek fails: then every rewind reopens the file
        self._at_start = True  # nothing demuxed since the file was opened or rewound
        self._rotation: int | None = None  # known once a frame is decoded
        self._size: tuple[int, int] | None = None  # (height, width) of every converted frame
        self._first_size: tuple[int, int] | None = None  # the first frame's, as displayed
        self._count: int | None = None
        self._count_exact = False
        self.frames_decoded = 0  # for tests and benchmarks: proves seeking skipped frames

    def _open(self) -> None:
        container = av.open(self.path, metadata_errors="ignore")
        try:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context
            if self.threads > 1:
                # Frame+slice threading; only worth it when the worker has spare cores.
                codec.thread_type = "AUTO"
                codec.thread_count = self.threads
            else:
                codec.thread_count = 1
        except BaseException:
            container.close()
            raise
        self.container, self.stream = container, stream

    def _rewind(self) -> None:
        """Back to the first frame: seek there, or reopen an input that cannot seek."""
        if self._seekable:
            try:
                self.container.seek(0, stream=self.stream, backward=True)
                self._at_start = True
                return
            except (av.FFmpegError, OSError):
                self._seekable = False
        self.close()
        self._open()
        self._at_start = True

    # -- metadata ---------------------------------------------------------------------
    @property
    def fps(self) -> float:
        return float(self._rate)

    @property
    def num_frames(self) -> int:
        """Frame count: container index, else duration x rate, else a packet count."""
        if self._count is None:
            with _reasons("cannot count frames"):
                self._count, self._count_exact = self._frame_count()
        return self._count

    def info(self) -> VideoInfo:
        """Metadata; the rotation is only known once a frame was decoded (else 0)."""
        count = self.num_frames
        with _reasons("cannot read metadata"):
            rotation = self._rotation or 0
            if self._first_size is not None:
                height, width = self._first_size
            else:
                height, width = self.stream.codec_context.height, self.stream.codec_context.width
            return VideoInfo(count, self.fps, height, width, self._duration(), rotation, self._count_exact)

    def _duration(self) -> float | None:
        if self.stream.duration:
            seconds = float(self.stream.duration * self._time_base)
        elif self.container.duration:
            seconds = self.container.duration / av.time_base
        else:
            return None
        return seconds if math.isfinite(seconds) and seconds > 0 else None

    def _frame_count(self) -> tuple[int, bool]:
        if self.stream.frames and self.stream.frames > 0:
            return int(self.stream.frames), True
        seconds = self._duration()
        if seconds is not None and math.isfinite(seconds * float(self._rate)):
            return max(1, round(seconds * float(self._rate))), False
        # No index and no duration: count packets (demux only, no decoding).
        self._at_start = False
        count = sum(1 for packet in self.container.demux(self.stream) if packet.size)
        self._rewind()
        if count == 0:
            raise DecodeError("no video packets")
        return count, True

    # -- decoding ---------------------------------------------------------------------
    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(T, H, W, 3)``."""
        if len(indices) == 0:
            raise ValueError("no frame indices requested")
        wanted = sorted({max(0, int(i)) for i in indices})
        with _reasons("decode error"):
            found = self._decode(wanted, seek=wanted[0] > 0)
            arrays = [found[max(0, int(i))] for i in indices]
            return torch.from_numpy(np.stack(arrays))

    def _decode(self, wanted: list[int], seek: bool) -> dict[int, np.ndarray]:
        rate, time_base, start = self._rate, self._time_base, self._start
        if seek and self._seekable:
            target = start + int(math.floor(wanted[0] / rate / time_base))
            self._at_start = False  # also after a failed seek, which may have read to the end
            try:
                self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
            except (av.FFmpegError, OSError):
                seek = False  # e.g. a raw .h264 stream: decode it from the start instead
                self._seekable = False
        else:
            seek = False
        if not seek and not self._at_start:
            self._rewind()
        self._at_start = False
        scale = float(time_base * rate)  # pts units -> grid positions (floats: fast in the loop)
        found: dict[int, np.ndarray] = {}
        position = 0  # next entry of ``wanted`` to fill
        previous = None  # (grid position, frame) of the last decoded frame
        for counter, frame in enumerate(self.container.decode(self.stream)):
            if frame.pts is None:
                if seek:  # cannot place frames after a seek without timestamps
                    return self._decode(wanted, seek=False)
                grid = float(counter)
            else:
                grid = (frame.pts - start) * scale
            self.frames_decoded += 1
            if seek and previous is None and grid > wanted[0] + 0.5:
                # The demuxer landed after the frame we need (bad index): start over.
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
        last = self._to_rgb(previous[1])  # before counting, which may rewind the file
        count = self.num_frames
        if last_grid < 0.9 * count - 2 and wanted[-1] > last_grid + 1:
            raise DecodeError(f"stream ended at frame {int(last_grid) + 1} of {count} (truncated file?)")
        for index in wanted[position:]:
            found[index] = last  # short video: repeat the last frame
        return found

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        rotation = _normalise_rotation(getattr(frame, "rotation", 0) or 0)
        turned = rotation % 180 != 0
        if self._size is None:  # the first frame converted fixes the clip's size
            height, width = (frame.width, frame.height) if turned else (frame.height, frame.width)
            self._first_size = (height, width)
            self._size = self._bounded_size(height, width)
            self._rotation = rotation
        height, width = self._size
        stored_height, stored_width = (width, height) if turned else (height, width)
        shrinking = stored_height * stored_width < frame.height * frame.width
        array = (
            _reformatter()
            .reformat(
                frame,
                format="rgb24",
                width=stored_width,
                height=stored_height,
                interpolation="AREA" if shrinking else None,
            )
            .to_ndarray()
        )
        if rotation:
            array = np.ascontiguousarray(np.rot90(array, k=rotation // 90))
        return array

    def _check_aspect(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise DecodeError(f"frame of {width}x{height} pixels")
        ratio = max(height, width) / min(height, width)
        if self.max_aspect_ratio is not None and ratio > self.max_aspect_ratio:
            raise DecodeError(
                f"aspect ratio {ratio:.0f}:1 ({width}x{height}) beyond "
                f"{self.max_aspect_ratio:g}:1 (resizing it for the model would take gigabytes)"
            )

    def _bounded_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) to convert frames to: the frame's, checked, and scaled down so
        the short side is at most ``max_short_side``."""
        self._check_aspect(height, width)
        short = min(height, width)
        if self.max_short_side is not None and short > self.max_short_side:
            factor = self.max_short_side / short
            return max(1, round(height * factor)), max(1, round(width * factor))
        return height, width

    def close(self) -> None:
        container, self.container = self.container, None
        if container is not None:
            # closing a broken file must not hide the frames already read
            with contextlib.suppress(Exception):
                container.close()

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


def open_video(
    path: str | os.PathLike,
    threads: int = 1,
    max_short_side: int | None = None,
    max_aspect_ratio: float | None = MAX_ASPECT_RATIO,
    decoder: str = "pyav",
):
    """Open ``path`` for one read: ``with open_video(p) as video: video.get_frames(idx)``.

    ``decoder``: ``pyav`` (this module's :class:`VideoReader`) or ``torchcodec``
    (:class:`aptune.data.decode_torchcodec.TorchCodecReader`, an optional extra).
    """
    if decoder == "torchcodec":
        from aptune.data.decode_torchcodec import TorchCodecReader

        return TorchCodecReader(path, threads, max_short_side, max_aspect_ratio)
    check_decoder(decoder)
    return VideoReader(path, threads, max_short_side, max_aspect_ratio)


def check_decoder(decoder: str) -> None:
    """A one-line ConfigError for an unknown backend or an optional one that cannot be used here."""
    if decoder not in DECODERS:
        raise ConfigError(f"data.decoder={decoder!r} is not one of: {', '.join(DECODERS)}")
    if decoder == "torchcodec":
        from aptune.data.decode_torchcodec import load_torchcodec

        load_torchcodec()


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int],
    threads: int = 1,
    max_short_side: int | None = None,
    max_aspect_ratio: float | None = MAX_ASPECT_RATIO,
) -> torch.Tensor:
    """Decode frames ``indices`` of ``path`` as uint8 ``(T, H, W, 3)`` RGB."""
    with open_video(path, threads, max_short_side, max_aspect_ratio) as video:
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
    if not math.isfinite(angle):
        return 0
    return int(round(angle / 90.0)) % 4 * 90


def _short(exc: BaseException) -> str:
    """One short line: FFmpeg's / the OS's own words, else the exception's type and text."""
    strerror = getattr(exc, "strerror", None)
    if isinstance(exc, (av.FFmpegError, OSError)) and isinstance(strerror, str) and strerror:
        text = strerror
    else:
        message = str(exc).strip()
        first = message.splitlines()[0] if message else ""
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text[:120]
