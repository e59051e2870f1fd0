"""The scenes of the synthetic datasets: every class (motion) and the renderer of each family.

Textured-object motions (travel along a direction, rotate, grow or shrink, a pair
approaching or separating, fade) are one small function each behind
``_MOTION_RENDERERS``; the palette scenes ("which object moves", and 2-4 objects that move
or not) are :func:`render_palette_scene`.  Deterministic given the random generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
        (
            cx + sign * ax * distance / 2,
            cy + sign * ay * distance / 2,
            radius * ones,
            rng.uniform(0, math.pi) * ones,
            ones,
        )
        for sign in (-1, 1)
    ]


def _fade(motion: str, scene: _Scene) -> list[_Object]:
    rng, ones, radius, tau = scene.rng, scene.ones, scene.radius, scene.tau
    cx = rng.uniform(radius, scene.width - radius)
    cy = rng.uniform(radius, scene.height - radius)
    alpha = np.clip(tau * 1.25 - 0.1, 0, 1) if motion == "fade_in" else np.clip(1.15 - tau * 1.25, 0, 1)
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


def render_motion_video(motion: str, num_frames: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
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
    video = np.broadcast_to((background + static_noise).astype(np.float32), (num_frames, height, width, 3)).copy()
    if rng.random() < 0.5:  # a smooth gradient so the background is not flat
        gradient = rng.uniform(-40, 40) * (xs[0] / width - 0.5) + rng.uniform(-40, 40) * (ys[0] / height - 0.5)
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
