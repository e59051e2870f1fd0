"""Encoding frames into a video file (PyAV): the codec by extension, keyframe interval,
variable frame rate and display rotation; a failed write removes its partial file."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from aptune.fileio import make_folder, output_error

# What the encoders accept (MPEG-4 part 2 refuses a time base past 65535; an H.264 MP4 above
# 1000 fps decodes to nothing) and what a video rendered in memory may take (float32 RGB).
FPS_RANGE = (0.001, 1000.0)
MAX_GOP = 100_000


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 25,
    codec: str | None = None,
    gop: int | None = None,
    frame_durations: Sequence[float] | None = None,
    rotation: int = 0,
    bit_rate: int | None = None,
) -> None:
    """Encode ``frames`` (T,H,W,3 RGB or T,H,W grey, uint8) into ``path``.

    ``codec`` defaults by extension (.avi MPEG-4 part 2, .mp4/.mkv H.264, .webm VP9);
    grey frames are stored as grey FFV1.  ``gop`` is the keyframe interval.
    ``frame_durations`` (seconds per frame) makes a variable-frame-rate file.
    ``rotation`` stores a display-matrix rotation (degrees counter-clockwise).
    """
    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    grey = frames.ndim == 3
    height, width = frames.shape[1:3]
    if codec is None:
        codec = _default_codec(path.suffix.lower(), grey, height, width)
    options = _codec_options(codec, gop)
    rate = Fraction(fps).limit_denominator(1001)
    make_folder(path.parent)
    with _output_errors(path), av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = width, height
        stream.pix_fmt = "gray" if grey else "yuv420p"
        if codec == "mpeg4":
            stream.codec_context.bit_rate = bit_rate or max(200_000, width * height * 60)
        elif bit_rate:
            stream.codec_context.bit_rate = bit_rate
        if gop:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        time_base = Fraction(1, 1000) if frame_durations is not None else None
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        clock = 0.0
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="gray" if grey else "rgb24")
            if time_base is not None:
                frame.pts = int(round(clock * 1000))
                frame.time_base = time_base
                clock += frame_durations[index % len(frame_durations)]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _default_codec(suffix: str, grey: bool, height: int, width: int) -> str:
    """The codec for a file extension: .avi MPEG-4 part 2, .webm VP9, else H.264; grey FFV1."""
    codec = {".avi": "mpeg4", ".webm": "libvpx-vp9"}.get(suffix, "libx264")
    if grey:
        return "ffv1"
    if codec == "libx264" and (height % 2 or width % 2):
        return "mpeg4"  # x264 cannot store odd sizes in 4:2:0
    return codec


def _codec_options(codec: str, gop: int | None) -> dict[str, str]:
    """Encoder options: fast presets, and a fixed keyframe interval when ``gop`` is given."""
    if codec == "libx264":
        options = {"preset": "veryfast", "crf": "18"}
        if gop:
            options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        return options
    if codec == "libvpx-vp9":
        return {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}
    if codec == "mpeg4":
        return {"sc_threshold": "1000000000"} if gop else {}
    return {}


@contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    """A write that fails (full disk, no permission) removes its partial file and raises
    :class:`~aptune.errors.OutputError` naming the file and the reason."""
    try:
        yield
    except OSError as exc:  # av's own errors for ENOSPC, EACCES, ... are OSErrors too
        with suppress(OSError):
            os.unlink(path)
        raise output_error(path, exc) from None
