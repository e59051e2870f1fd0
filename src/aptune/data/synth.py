"""Synthetic video datasets whose classes need temporal reasoning, written as real encoded
files in the exact on-disk layout of each annotation format.

Most classes are a motion (left vs right, up vs down, clockwise vs counter-clockwise,
growing vs shrinking, approaching vs separating, fading in vs out, diagonals); every
video draws its own colours, texture, shape, size, start position, speed and
background noise, so a single frame cannot tell the class.  Palette scenes add
"which object moves" (the colour of the one travelling object among still ones) and
unlabelled-in-spirit scenes of 2-4 objects that move or not, the demo's pre-training
source.  Deterministic by seed.

Used by the tests, by ``aptune data synth`` and by the demo.  (The decoder tests'
frame-counter videos are test material: ``tests/videos.py``.)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from aptune.fileio import make_folder, output_error, write_text_atomically

__all__ = [
    "MOTIONS",
    "SyntheticDataset",
    "make_synthetic_dataset",
    "render_motion_video",
    "write_video",
]

# (motion, readable name).  The first ten are the most distinct; classes beyond that add
# opposite pairs (fades, diagonals) so opposites always come in together.
MOTIONS: tuple[tuple[str, str], ...] = (
    ("right", "moving right"),
    ("left", "moving left"),
    ("down", "moving down"),
    ("up", "moving up"),
    ("rotate_cw", "rotating clockwise"),
    ("rotate_ccw", "rotating counterclockwise"),
    ("grow", "growing"),
    ("shrink", "shrinking"),
    ("approach", "two objects approaching"),
    ("separate", "two objects separating"),
    ("fade_in", "appearing"),
    ("fade_out", "disappearing"),
    ("down_right", "moving down right"),
    ("up_left", "moving up left"),
    ("down_left", "moving down left"),
    ("up_right", "moving up right"),
    # "which object moves": three plain objects of palette colours, only the named one travels
    ("red_moves", "the red object moves"),
    ("green_moves", "the green object moves"),
    ("blue_moves", "the blue object moves"),
    ("yellow_moves", "the yellow object moves"),
    ("magenta_moves", "the magenta object moves"),
    ("cyan_moves", "the cyan object moves"),
    # palette scenes of 2-4 objects, each travelling or still by a coin flip: a source
    # domain for pre-training that looks like the "which object moves" task
    ("two_objects", "two objects"),
    ("three_objects", "three objects"),
    ("four_objects", "four objects"),
)
_DIRECTIONS = {
    "right": (1, 0),
    "left": (-1, 0),
    "down": (0, 1),
    "up": (0, -1),
    "down_right": (1, 1),
    "up_left": (-1, -1),
    "down_left": (-1, 1),
    "up_right": (1, -1),
}
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 70, 230),
    "yellow": (235, 220, 50),
    "magenta": (210, 50, 210),
    "cyan": (50, 210, 220),
}
PALETTE_TRAVEL = (0.4, 0.9)  # path length of a travelling palette object, in frame sides
_SCENE_SIZES = {"two_objects": 2, "three_objects": 3, "four_objects": 4}
# What the encoders accept (MPEG-4 part 2 refuses a time base past 65535; an H.264 MP4 above
# 1000 fps decodes to nothing) and what a video rendered in memory may take (float32 RGB).
FPS_RANGE = (0.001, 1000.0)
MAX_GOP = 100_000
MAX_PIXELS_PER_VIDEO = 50_000_000  # frames x height x width: ~0.6 GB rendered
FORMAT_EXTENSIONS = {
    "list": ".avi",
    "ucf101": ".avi",
    "hmdb51": ".avi",
    "ssv2": ".webm",
    "kinetics": ".mp4",
}


@dataclass
class SyntheticDataset:
    """What :func:`make_synthetic_dataset` wrote."""

    root: Path
    format: str
    class_names: list[str]
    videos: list[tuple[Path, int]] = field(default_factory=list)  # every file with its label

    @property
    def num_videos(self) -> int:
        return len(self.videos)


# ----------------------------------------------------------------------------- encoding
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
    suffix = path.suffix.lower()
    if codec is None:
        codec = {".avi": "mpeg4", ".webm": "libvpx-vp9"}.get(suffix, "libx264")
        if grey:
            codec = "ffv1"
        elif codec == "libx264" and (height % 2 or width % 2):
            codec = "mpeg4"  # x264 cannot store odd sizes in 4:2:0
    options: dict[str, str] = {}
    if codec == "libx264":
        options = {"preset": "veryfast", "crf": "18"}
        if gop:
            options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    elif codec == "libvpx-vp9":
        options = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}
    elif codec == "mpeg4":
        options = {"sc_threshold": "1000000000"} if gop else {}
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


# ---------------------------------------------------------------------------- rendering
@dataclass
class _Scene:
    """What a motion renderer draws its objects in: the frame, the clock and the random stream."""

    rng: np.random.Generator
    width: int
    height: int
    side: int  # the shorter frame side
    tau: np.ndarray  # (T,1,1) time from 0 to 1
    ones: np.ndarray  # (T,1,1) ones, to turn a constant into a path
    radius: float  # the default object radius (drawn for every motion, so the stream stays aligned)


# one object: (cx(T), cy(T), radius(T), angle(T), alpha(T))
_Object = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _travel(motion: str, scene: _Scene) -> list[_Object]:
    """One object moving straight along a direction of :data:`_DIRECTIONS`."""
    rng, ones, radius = scene.rng, scene.ones, scene.radius
    dx, dy = _DIRECTIONS[motion]
    norm = math.hypot(dx, dy)
    dx, dy = dx / norm, dy / norm
    length = rng.uniform(0.3, 0.55) * scene.side
    cx0 = _start(rng, scene.width, radius, dx * length)
    cy0 = _start(rng, scene.height, radius, dy * length)
    angle = rng.uniform(0, math.pi) * ones
    return [(cx0 + dx * length * scene.tau, cy0 + dy * length * scene.tau, radius * ones, angle, ones)]


def _rotate(motion: str, scene: _Scene) -> list[_Object]:
    rng, ones = scene.rng, scene.ones
    turn = rng.uniform(0.5, 1.1) * math.pi * (1 if motion == "rotate_cw" else -1)
    radius = rng.uniform(0.2, 0.3) * scene.side
    cx = rng.uniform(radius, scene.width - radius)
    cy = rng.uniform(radius, scene.height - radius)
    return [(cx * ones, cy * ones, radius * ones, rng.uniform(0, math.pi) + turn * scene.tau, ones)]


def _scale(motion: str, scene: _Scene) -> list[_Object]:
    """Growing or shrinking in place."""
    rng, ones = scene.rng, scene.ones
    small = rng.uniform(0.07, 0.11) * scene.side
    factor = rng.uniform(2.0, 2.8)
    progress = scene.tau if motion == "grow" else 1 - scene.tau
    big = small * factor
    cx = rng.uniform(big * 0.6, scene.width - big * 0.6)
    cy = rng.uniform(big * 0.6, scene.height - big * 0.6)
    return [(cx * ones, cy * ones, small * factor**progress, rng.uniform(0, math.pi) * ones, ones)]


def _pair(motion: str, scene: _Scene) -> list[_Object]:
    """Two objects approaching or separating along a random axis."""
    rng, ones, side = scene.rng, scene.ones, scene.side
    radius = rng.uniform(0.08, 0.12) * side
    near, far = rng.uniform(0.2, 0.3) * side, rng.uniform(0.6, 0.75) * side
    progress = scene.tau if motion == "separate" else 1 - scene.tau
    distance = near + (far - near) * progress
    axis = rng.uniform(0, math.pi)
    ax, ay = math.cos(axis), math.sin(axis)
    cx = scene.width / 2 + rng.uniform(-0.1, 0.1) * side
    cy = scene.height / 2 + rng.uniform(-0.1, 0.1) * side
    return [
        (cx + sign * ax * distance / 2, cy + sign * ay * distance / 2, radius * ones,
         rng.uniform(0, math.pi) * ones, ones)
        for sign in (-1, 1)
    ]


def _fade(motion: str, scene: _Scene) -> list[_Object]:
    rng, ones, radius, tau = scene.rng, scene.ones, scene.radius, scene.tau
    cx = rng.uniform(radius, scene.width - radius)
    cy = rng.uniform(radius, scene.height - radius)
    if motion == "fade_in":
        alpha = np.clip(tau * 1.25 - 0.1, 0, 1)
    else:
        alpha = np.clip(1.15 - tau * 1.25, 0, 1)
    return [(cx * ones, cy * ones, radius * ones, rng.uniform(0, math.pi) * ones, alpha)]


# the textured-object motions, by family: motion name -> the renderer of its objects
_MOTION_RENDERERS = {
    **{motion: _travel for motion in _DIRECTIONS},
    "rotate_cw": _rotate,
    "rotate_ccw": _rotate,
    "grow": _scale,
    "shrink": _scale,
    "approach": _pair,
    "separate": _pair,
    "fade_in": _fade,
    "fade_out": _fade,
}


def render_motion_video(
    motion: str, num_frames: int, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """One video of ``motion`` with random appearance, uint8 ``(T, H, W, 3)``."""
    if motion.endswith("_moves") and motion[: -len("_moves")] in PALETTE:
        mover = motion[: -len("_moves")]
        others = [name for name in PALETTE if name != mover]
        colours = [mover, *rng.choice(others, size=2, replace=False)]
        return render_palette_scene(colours, [True, False, False], num_frames, size, rng)
    if motion in _SCENE_SIZES:
        colours = list(rng.choice(list(PALETTE), size=_SCENE_SIZES[motion], replace=False))
        moving = [bool(rng.random() < 0.5) for _ in colours]
        return render_palette_scene(colours, moving, num_frames, size, rng)
    if motion not in _MOTION_RENDERERS:
        raise ValueError(f"unknown motion {motion!r} (valid: {', '.join(m for m, _ in MOTIONS)})")
    height, width = size
    tau = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)[:, None, None]  # (T,1,1) time
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys, xs = ys[None], xs[None]
    video = _noisy_background(rng, num_frames, height, width, xs, ys)
    radius = rng.uniform(0.12, 0.2) * min(height, width)
    scene = _Scene(rng, width, height, min(height, width), tau, np.ones_like(tau), radius)
    for cx, cy, r, angle, alpha in _MOTION_RENDERERS[motion](motion, scene):
        _paint_textured_object(video, rng, xs, ys, cx, cy, r, angle, alpha)
    video += rng.uniform(0, 6) * rng.standard_normal(video.shape, dtype=np.float32)  # sensor noise
    return np.clip(video, 0, 255).astype(np.uint8)


def _noisy_background(rng, num_frames, height, width, xs, ys) -> np.ndarray:
    """A random colour with fixed pixel noise and, one time in two, a smooth gradient (float32)."""
    background = rng.uniform(30, 225, size=3)
    static_noise = rng.uniform(4, 30) * rng.standard_normal((height, width, 1), dtype=np.float32)
    video = np.broadcast_to(
        (background + static_noise).astype(np.float32), (num_frames, height, width, 3)
    ).copy()
    if rng.random() < 0.5:  # a smooth gradient so the background is not flat
        gradient = rng.uniform(-40, 40) * (xs[0] / width - 0.5) + rng.uniform(-40, 40) * (
            ys[0] / height - 0.5
        )
        video += gradient[None, ..., None].astype(np.float32)
    return video


def _paint_textured_object(video, rng, xs, ys, cx, cy, r, angle, alpha) -> None:
    """Blend one striped disc or square with an off-centre marker into ``video``, in place."""
    colour_a, colour_b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    frequency, phase = rng.uniform(0.6, 1.6), rng.uniform(0, 2 * math.pi)
    square = rng.random() < 0.5
    cos, sin = np.cos(angle, dtype=np.float32), np.sin(angle, dtype=np.float32)
    u = ((xs - cx) * cos + (ys - cy) * sin) / r
    v = (-(xs - cx) * sin + (ys - cy) * cos) / r
    inside = np.maximum(np.abs(u), np.abs(v)) < 0.85 if square else (u * u + v * v) < 1.0
    # stripes plus a bright marker off-centre make the orientation visible
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * u + phase)
    marker = ((u - 0.45) ** 2 + (v - 0.3) ** 2) < 0.05
    colour_a, colour_b = colour_a.astype(np.float32), colour_b.astype(np.float32)
    texture = colour_b + stripes[..., None] * (colour_a - colour_b)
    texture[marker] = 255 - colour_a
    weight = (inside * alpha)[..., None].astype(np.float32)
    video += weight * (texture - video)


def render_palette_scene(
    colours: Sequence[str],
    moving: Sequence[bool],
    num_frames: int,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Plain objects of :data:`PALETTE` colours on a grey background, uint8 ``(T, H, W, 3)``.

    Object k travels in a straight line of random direction (bouncing off the frame's
    edges) when ``moving[k]``, else stays put.  Colours are jittered and the shape is a
    disc or a square, so the colour name, not the exact pixel value, is what objects share.
    """
    height, width = size
    side = min(height, width)
    tau = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)[:, None, None]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys, xs = ys[None], xs[None]
    grey = rng.uniform(60, 160) + rng.uniform(-15, 15, size=3)
    video = np.broadcast_to(grey.astype(np.float32), (num_frames, height, width, 3)).copy()
    for name, travels in zip(colours, moving):
        radius = rng.uniform(0.11, 0.15) * side
        cx = rng.uniform(radius, width - radius)
        cy = rng.uniform(radius, height - radius)
        if travels:
            heading = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(*PALETTE_TRAVEL) * side
            cx = _bounce(cx + math.cos(heading) * length * tau, radius, width - radius)
            cy = _bounce(cy + math.sin(heading) * length * tau, radius, height - radius)
        u, v = (xs - cx) / radius, (ys - cy) / radius
        square = rng.random() < 0.5
        inside = np.maximum(np.abs(u), np.abs(v)) < 0.85 if square else u * u + v * v < 1.0
        colour = np.asarray(PALETTE[name], np.float32) + rng.uniform(-12, 12, size=3).astype(np.float32)
        shading = (1 + 0.075 * u)[..., None]  # lit from one side, so the object is not flat
        video += inside[..., None] * (colour * shading - video)
    video += rng.uniform(0, 2) * rng.standard_normal(video.shape, dtype=np.float32)
    return np.clip(video, 0, 255).astype(np.uint8)


def _bounce(position: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fold a straight path back into [low, high], as a ball bouncing between two walls."""
    span = high - low
    folded = np.mod(position - low, 2 * span)
    return (low + np.where(folded > span, 2 * span - folded, folded)).astype(np.float32)


def _start(rng: np.random.Generator, extent: float, radius: float, travel: float) -> float:
    low = radius - min(0.0, travel)
    high = extent - radius - max(0.0, travel)
    if high <= low:
        return (extent - travel) / 2
    return float(rng.uniform(low, high))


# ------------------------------------------------------------------------------ layouts
def make_synthetic_dataset(
    out: str | os.PathLike,
    format: str = "list",
    num_classes: int = 10,
    per_class: int = 20,
    frames: int = 32,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    fps: float = 25,
    gop: int | None = None,
    grey: bool = False,
    variable_frame_rate: bool = False,
    rotation: int = 0,
    motions: list[str] | tuple[str, ...] | None = None,
    workers: int = 1,
) -> SyntheticDataset:
    """Write a synthetic dataset in the layout of ``format`` under ``out``.

    ``motions`` picks the classes by motion name (see :data:`MOTIONS`); by default the
    first ``num_classes``.  Disjoint motion sets give a source and a target task.

    ``gop`` sets the keyframe interval (None: the encoder's default, i.e. long GOP);
    ``grey``, ``variable_frame_rate`` and ``rotation`` make every video grey / VFR /
    display-rotated, for testing the decoder on such files.  AVI can store neither a
    variable frame rate nor a display matrix, so with those options the formats that
    normally use .avi (list, ucf101, hmdb51) write .mp4 files instead.
    ``workers`` > 1 renders in that many spawned processes (the files do not depend on it);
    a script that uses it must guard its entry point with ``if __name__ == "__main__":``.
    """
    if format not in FORMAT_EXTENSIONS:
        raise ValueError(f"unknown format {format!r} (valid: {', '.join(FORMAT_EXTENSIONS)})")
    names = dict(MOTIONS)
    if motions is None:
        if not 1 <= num_classes <= len(MOTIONS):
            raise ValueError(f"num_classes must be between 1 and {len(MOTIONS)}, got {num_classes}")
        motions = [m for m, _ in MOTIONS[:num_classes]]
    unknown = [m for m in motions if m not in names]
    if unknown or not motions or len(set(motions)) != len(motions):
        raise ValueError(f"motions must be distinct names from: {', '.join(names)} (got {list(motions)})")
    _check_arguments(per_class, frames, size, seed, fps, gop, workers)
    root = make_folder(Path(out))
    motions = list(motions)
    readable = [names[m] for m in motions]
    extension = FORMAT_EXTENSIONS[format]
    if extension == ".avi" and (variable_frame_rate or rotation):
        extension = ".mp4"
    write_kwargs = {"fps": fps, "gop": gop, "rotation": rotation}
    if variable_frame_rate:
        base = 1.0 / fps
        write_kwargs["frame_durations"] = [base * 0.6, base * 1.4, base * 0.8, base * 1.2]

    jobs: list[tuple] = []

    def render(label: int, index: int, path: Path) -> None:  # deferred: see _render_jobs
        jobs.append((motions[label], frames, size, (seed, label, index), grey, write_kwargs, path))

    writer = {
        "list": _write_list,
        "ucf101": _write_ucf101,
        "hmdb51": _write_hmdb51,
        "ssv2": _write_ssv2,
        "kinetics": _write_kinetics,
    }[format]
    dataset = SyntheticDataset(root=root, format=format, class_names=[])
    writer(root, readable, per_class, extension, render, dataset, seed)
    _render_jobs(jobs, workers)
    return dataset


def _check_arguments(per_class, frames, size, seed, fps, gop, workers) -> None:
    def whole(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not (whole(per_class) and whole(frames) and per_class >= 1 and frames >= 1):
        raise ValueError(f"per_class and frames must be integers >= 1, got {per_class}, {frames}")
    if len(size) != 2 or not all(whole(side) and side >= 2 for side in size):
        raise ValueError(f"size must be (height, width) of integers >= 2, got {size}")
    if frames * size[0] * size[1] > MAX_PIXELS_PER_VIDEO:
        raise ValueError(
            f"frames x height x width must be at most {MAX_PIXELS_PER_VIDEO:,} (videos are "
            f"rendered in memory), got {frames} x {size[0]} x {size[1]}"
        )
    if not (whole(seed) and seed >= 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed}")
    low, high = FPS_RANGE
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and low <= fps <= high):
        raise ValueError(f"fps must be between {low:g} and {high:g}, got {fps}")
    if gop is not None and not (whole(gop) and 1 <= gop <= MAX_GOP):
        raise ValueError(f"gop must be None or an integer between 1 and {MAX_GOP}, got {gop}")
    if not (whole(workers) and workers >= 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers}")


def _render_jobs(jobs: list[tuple], workers: int) -> None:
    """Render and encode every video; each is seeded by its own (seed, label, index), so the
    files are the same whatever the number of worker processes."""
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            _render_one(*job)
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # spawn, not fork: the caller may hold torch threads, which fork would copy mid-flight
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_render_one, *job) for job in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # do not render the rest before raising
            raise


def _render_one(motion: str, frames: int, size: tuple[int, int], seed: tuple[int, int, int], grey: bool,
                write_kwargs: dict, path: Path) -> None:
    video = render_motion_video(motion, frames, size, np.random.default_rng(list(seed)))
    if grey:
        video = video.mean(axis=-1).astype(np.uint8)
    with _output_errors(path):
        write_video(path, video, **write_kwargs)


def _split_of(index: int, per_class: int) -> str:
    """A 60/20/20 train/val/test split by position within the class."""
    position = (index + 0.5) / per_class
    return "train" if position < 0.6 else ("val" if position < 0.8 else "test")


def _write_list(root, names, per_class, ext, render, dataset, seed):
    dataset.class_names = list(names)
    write_text_atomically(root / "classes.txt", "".join(f"{name}\n" for name in names))
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        folder = name.replace(" ", "_")
        for index in range(per_class):
            relative = f"videos/{folder}/{folder}_{index:03d}{ext}"
            render(label, index, root / relative)
            dataset.videos.append((root / relative, label))
            lines[_split_of(index, per_class)].append(f"{relative} {label}\n")
    for split, rows in lines.items():
        write_text_atomically(root / f"{split}.csv", "".join(rows))


def _camel(name: str) -> str:
    return "".join(word.capitalize() for word in name.split())


def _write_ucf101(root, names, per_class, ext, render, dataset, seed):
    classes = [_camel(name) for name in names]
    dataset.class_names = classes
    lists = make_folder(root / "ucfTrainTestlist")
    write_text_atomically(
        lists / "classInd.txt", "".join(f"{i + 1} {c}\r\n" for i, c in enumerate(classes))
    )
    train: dict[int, list[str]] = {1: [], 2: [], 3: []}
    test: dict[int, list[str]] = {1: [], 2: [], 3: []}
    for label, name in enumerate(classes):
        clips_in_group: dict[int, int] = {}
        for index in range(per_class):
            group = index * 25 // per_class + 1  # spread videos over the 25 groups
            clips_in_group[group] = clips_in_group.get(group, 0) + 1
            relative = f"{name}/v_{name}_g{group:02d}_c{clips_in_group[group]:02d}{ext}"
            render(label, index, root / "UCF-101" / relative)
            dataset.videos.append((root / "UCF-101" / relative, label))
            for split in (1, 2, 3):
                # UCF101's official rule: split s tests groups 7(s-1)+1 .. 7s
                if 7 * (split - 1) < group <= 7 * split:
                    test[split].append(f"{relative}\r\n")
                else:
                    train[split].append(f"{relative} {label + 1}\r\n")
    for split in (1, 2, 3):
        write_text_atomically(lists / f"trainlist0{split}.txt", "".join(train[split]))
        write_text_atomically(lists / f"testlist0{split}.txt", "".join(test[split]))


def _write_hmdb51(root, names, per_class, ext, render, dataset, seed):
    classes = [name.replace(" ", "_") for name in names]
    dataset.class_names = sorted(classes)
    splits = make_folder(root / "testTrainMulti_7030_splits")
    for label, name in enumerate(classes):
        files = []
        for index in range(per_class):
            filename = f"{name}_clip_{index:03d}{ext}"
            render(label, index, root / name / filename)
            files.append(filename)
            dataset.videos.append((root / name / filename, dataset.class_names.index(name)))
        for split in (1, 2, 3):
            rows = []
            for index, filename in enumerate(files):
                tag = 2 if (index + split) % 3 == 0 else 1
                if per_class >= 6 and index == per_class - split:
                    tag = 0  # unused in this split, as in the real files
                rows.append(f"{filename} {tag} \n")
            write_text_atomically(splits / f"{name}_test_split{split}.txt", "".join(rows))


def _write_ssv2(root, names, per_class, ext, render, dataset, seed):
    templates = [f"Something {name}" for name in names]
    dataset.class_names = templates
    labels_dir = make_folder(root / "labels")
    labels = {template: str(index) for index, template in enumerate(templates)}
    write_text_atomically(labels_dir / "labels.json", json.dumps(labels, indent=1))
    train, validation = [], []
    video_id = 1000 + seed * 100_000
    for label, template in enumerate(templates):
        for index in range(per_class):
            video_id += 1
            path = root / "20bn-something-something-v2" / f"{video_id}{ext}"
            render(label, index, path)
            dataset.videos.append((path, label))
            entry = {
                "id": str(video_id),
                "label": template.replace("Something", "A ball"),
                "template": template.replace("Something", "[Something]"),
                "placeables": ["a ball"],
            }
            (validation if _split_of(index, per_class) == "test" else train).append(entry)
    write_text_atomically(labels_dir / "train.json", json.dumps(train, indent=1))
    write_text_atomically(labels_dir / "validation.json", json.dumps(validation, indent=1))
    write_text_atomically(labels_dir / "test.json", json.dumps([], indent=1))


def _youtube_id(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=11))


def _write_kinetics(root, names, per_class, ext, render, dataset, seed):
    dataset.class_names = sorted(names)
    rows: dict[str, list[list[str]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        for index in range(per_class):
            rng = np.random.default_rng([seed, label, index, 7])
            youtube_id, start = _youtube_id(rng), int(rng.integers(0, 300))
            split = _split_of(index, per_class)
            path = root / split / name / f"{youtube_id}_{start:06d}_{start + 10:06d}{ext}"
            render(label, index, path)
            dataset.videos.append((path, dataset.class_names.index(name)))
            rows[split].append([name, youtube_id, str(start), str(start + 10), split])
    for split, filename in (("train", "train.csv"), ("val", "validate.csv"), ("test", "test.csv")):
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerows(rows[split])
        write_text_atomically(root / filename, text.getvalue())
