"""The optional torchcodec decoding backend (``data.decoder: torchcodec``).

PyAV (:mod:`aptune.data.decode`) stays the default.  torchcodec is PyTorch's own FFmpeg
decoder; it is an extra (``pip install aptune[torchcodec]``) because each of its releases is
built for one torch release and loads the system's FFmpeg libraries, so whether it works
depends on the machine.  A missing or unloadable torchcodec is a one-line
:class:`~aptune.errors.ConfigError` when the dataset is built, before any work starts.

:class:`TorchCodecReader` reads like :class:`~aptune.data.decode.VideoReader`: ``num_frames``
and ``get_frames(indices)`` giving uint8 ``(T, H, W, 3)``, frames scaled down so their short
side is at most ``max_short_side``, indices past the end repeating the last frame, and every
error a :class:`~aptune.data.decode.DecodeError`.  What differs from PyAV: frame ``i`` is the
``i``-th frame in presentation order (torchcodec's exact seek mode), not the frame nearest to
``i / fps`` on a time grid, so variable-frame-rate files can give other frames; and
scaling is PyTorch's antialiased bilinear resize, not FFmpeg's area filter.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from aptune.data.decode import MAX_ASPECT_RATIO, DecodeError, _reasons, check_video_file
from aptune.errors import ConfigError

__all__ = ["INSTALL_HINT", "TorchCodecReader", "load_torchcodec"]

INSTALL_HINT = "pip install aptune[torchcodec]"


def load_torchcodec():
    """torchcodec's ``VideoDecoder`` class, or a one-line ConfigError saying what to install."""
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as exc:
        if getattr(exc, "name", None) and not str(exc.name).startswith("torchcodec"):
            raise _cannot_load(exc) from None
        raise ConfigError(f"data.decoder=torchcodec needs the torchcodec package: {INSTALL_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - its libraries fail to load with OSError, RuntimeError, ...
        raise _cannot_load(exc) from None
    return VideoDecoder


def _cannot_load(exc: BaseException) -> ConfigError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
    return ConfigError(
        f"data.decoder=torchcodec: torchcodec is installed but cannot load ({reason}); it needs FFmpeg's "
        f"shared libraries and a torchcodec built for torch {torch.__version__} (or use data.decoder=pyav)"
    )


class TorchCodecReader:
    """One open video, read with torchcodec on the CPU.  Use it as a context manager."""

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int = 1,
        max_short_side: int | None = None,
        max_aspect_ratio: float | None = MAX_ASPECT_RATIO,
    ) -> None:
        self.path = os.fspath(path)
        self.max_short_side = max_short_side
        video_decoder = load_torchcodec()
        with _reasons("cannot open"):
            check_video_file(self.path)
            self.decoder = video_decoder(
                self.path, dimension_order="NHWC", num_ffmpeg_threads=max(1, threads), seek_mode="exact"
            )
            metadata = self.decoder.metadata
            self._count = int(metadata.num_frames or 0)
            height, width = int(metadata.height or 0), int(metadata.width or 0)
        if self._count < 1:
            raise DecodeError("no video frames")
        if height < 1 or width < 1:
            raise DecodeError(f"frame of {width}x{height} pixels")
        ratio = max(height, width) / min(height, width)
        if max_aspect_ratio is not None and ratio > max_aspect_ratio:
            raise DecodeError(f"aspect ratio {ratio:.0f}:1 ({width}x{height}) beyond {max_aspect_ratio:g}:1")

    @property
    def num_frames(self) -> int:
        return self._count

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(T, H, W, 3)``."""
        if len(indices) == 0:
            raise ValueError("no frame indices requested")
        last = self._count - 1
        clamped = [min(last, max(0, int(i))) for i in indices]
        wanted = sorted(set(clamped))
        with _reasons("decode error"):
            frames = self.decoder.get_frames_at(indices=wanted).data
            rows = torch.tensor([wanted.index(i) for i in clamped])
            return self._bounded(frames[rows])

    def _bounded(self, frames: torch.Tensor) -> torch.Tensor:
        """Scaled down so the short side is at most ``max_short_side`` (as the PyAV reader does)."""
        height, width = frames.shape[1:3]
        short = min(height, width)
        if self.max_short_side is None or short <= self.max_short_side:
            return frames.contiguous()
        factor = self.max_short_side / short
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        video = frames.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        resized = F.interpolate(video, size=size, mode="bilinear", antialias=True)
        return resized.permute(0, 2, 3, 1).contiguous()

    def close(self) -> None:
        self.decoder = None

    def __enter__(self) -> TorchCodecReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
