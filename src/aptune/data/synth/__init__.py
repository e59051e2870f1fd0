"""Synthetic video datasets whose classes need temporal reasoning, written as real encoded
files in the exact on-disk layout of each annotation format.

Most classes are a motion (left vs right, up vs down, clockwise vs counter-clockwise,
growing vs shrinking, approaching vs separating, fading in vs out, diagonals); every
video draws its own colours, texture, shape, size, start position, speed and
background noise, so a single frame cannot tell the class.  Palette scenes add
"which object moves" (the colour of the one travelling object among still ones) and
unlabelled-in-spirit scenes of 2-4 objects that move or not, the demo's pre-training
source.  Deterministic by seed.

Layout: ``scenes`` (classes and their renderers), ``video`` (encoding), ``dataset``
(annotation layouts).  Used by the tests, by ``aptune data synth`` and by the demo.  (The decoder tests'
frame-counter videos are test material: ``tests/videos.py``.)
"""

from __future__ import annotations

from aptune.data.synth.dataset import (
    FORMAT_EXTENSIONS,
    MAX_PIXELS_PER_VIDEO,
    SyntheticDataset,
    make_synthetic_dataset,
)
from aptune.data.synth.scenes import (
    MOTIONS,
    PALETTE,
    PALETTE_TRAVEL,
    render_motion_video,
    render_palette_scene,
)
from aptune.data.synth.video import FPS_RANGE, MAX_GOP, write_video

__all__ = [
    "FORMAT_EXTENSIONS",
    "FPS_RANGE",
    "MAX_GOP",
    "MAX_PIXELS_PER_VIDEO",
    "MOTIONS",
    "PALETTE",
    "PALETTE_TRAVEL",
    "SyntheticDataset",
    "make_synthetic_dataset",
    "render_motion_video",
    "render_palette_scene",
    "write_video",
]
