"""Spatial transforms for video clips in plain torch: random resized crop, horizontal
flip, RandAugment, short-side resize with test crops, ImageNet normalisation.

No torchvision: on this project's machines the torchvision wheel from PyPI pulls a
different (CUDA) torch build of several GB, and every operation needed here is a few
lines of torch (interpolate, affine_grid/grid_sample, histogram via scatter_add).

Every random choice is drawn once per clip and applied to all its frames, so motion
is never confused with augmentation; the one exception is random erasing, which
VideoMAE's full fine-tuning applies to each frame on its own (see :func:`random_erase`).
Frames enter as uint8 ``(T, H, W, C)`` and leave as float32 ``(C, T, H, W)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from aptune.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "random_resized_crop_box",
    "resized_crop",
    "resize_short_side",
    "crop_positions",
    "normalize",
    "RandAugment",
    "parse_rand_augment",
    "random_erase",
    "ClipAugmentation",
    "TrainTransform",
    "TestTransform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # fill for pixels moved in by affine ops


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``(T, H, W, C)`` -> float32 ``(T, C, H, W)`` in [0, 255]."""
    return frames.permute(0, 3, 1, 2).float()


def channels_first(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``(T, H, W, C)`` -> uint8 ``(T, C, H, W)`` view (channels-last memory, no copy).

    Resizing stays in uint8 on this layout: PyTorch has a fast path for antialiased
    bilinear resizing of channels-last uint8 images, ~10x faster than float32.
    """
    return frames.permute(0, 3, 1, 2)


def normalize(video: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """``(T, C, H, W)`` in [0, 255] (uint8 or float) -> normalised float32 ``(C, T, H, W)``."""
    out = video.permute(1, 0, 2, 3).to(torch.float32, memory_format=torch.contiguous_format)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1) * 255
    scale_t = 1.0 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1) * 255)
    return out.sub_(mean_t).mul_(scale_t)


# ------------------------------------------------------------------------ geometry
def random_resized_crop_box(
    height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, h, w) covering a random area fraction in ``scale`` with aspect ratio in
    ``ratio`` (log-uniform); ten tries, then the largest centred box of a valid ratio."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(()).uniform_(log_low, log_high)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, ()))
            left = int(torch.randint(0, width - w + 1, ()))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _resize(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of ``(T, C, H, W)``, uint8 or float."""
    if tuple(video.shape[-2:]) == tuple(size):
        return video
    if video.dtype == torch.uint8:
        video = video.contiguous(memory_format=torch.channels_last)
    return F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)


def resized_crop(video: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop ``box`` from every frame of ``(T, C, H, W)`` and resize to ``size``²."""
    top, left, h, w = box
    return _resize(video[..., top : top + h, left : left + w], (size, size))


def resize_short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(T, C, H, W)`` (uint8 or float) so that its shorter side is ``size``."""
    height, width = video.shape[-2:]
    if height <= width:
        new = (size, max(size, round(width * size / height)))
    else:
        new = (max(size, round(height * size / width)), size)
    return _resize(video, new)


def crop_positions(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """(top, left) of ``num_crops`` square crops: 1 = centre; 3 = start, centre and end
    along the longer side (centred on the shorter side)."""
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    top, left = max(0, height - size) // 2, max(0, width - size) // 2
    if num_crops == 1:
        return [(top, left)]
    if height > width:
        return [(t, left) for t in (0, top, max(0, height - size))]
    return [(top, lf) for lf in (0, left, max(0, width - size))]


def _pad_to(video: torch.Tensor, size: int) -> torch.Tensor:
    """Pad (replicate) a clip smaller than ``size`` so crops always have the right shape."""
    height, width = video.shape[-2:]
    if height >= size and width >= size:
        return video
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    return F.pad(video, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="replicate")


def _affine(video: torch.Tensor, matrix: list[list[float]], fill=_FILL) -> torch.Tensor:
    """Warp float ``(T, C, H, W)`` by ``matrix`` (output pixel -> input pixel, 2x3)."""
    t, c, h, w = video.shape
    pixel = torch.tensor([[w / 2, 0, (w - 1) / 2], [0, h / 2, (h - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    full = torch.tensor(matrix + [[0.0, 0.0, 1.0]], dtype=torch.float64)
    theta = (torch.linalg.inv(pixel) @ full @ pixel)[:2].to(video.dtype)
    grid = F.affine_grid(theta.expand(t, 2, 3), [t, c, h, w], align_corners=False)
    fill_t = torch.tensor(fill[:c], dtype=video.dtype).view(1, c, 1, 1)
    warped = F.grid_sample(video - fill_t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped + fill_t


# --------------------------------------------------------------------- RandAugment ops
# Each op takes float (T, C, H, W) in [0, 255] and one already-sampled argument.
_GREY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _grey(video: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, ``(T, 1, H, W)``."""
    if video.shape[1] == 1:
        return video
    return F.conv2d(video, _GREY_WEIGHTS.to(video.dtype))


def _blend(degenerate: torch.Tensor, video: torch.Tensor, factor: float) -> torch.Tensor:
    # factor 0 gives the degenerate image, 1 the original, >1 extrapolates (as PIL's enhancers)
    return torch.lerp(degenerate, video, float(factor)).clamp_(0, 255)


def _auto_contrast(video, _):
    low = video.amin(dim=(-2, -1), keepdim=True)
    high = video.amax(dim=(-2, -1), keepdim=True)
    flat = high <= low
    scale = 255.0 / torch.where(flat, torch.full_like(high, 255.0), high - low)
    low = torch.where(flat, torch.zeros_like(low), low)
    return (video - low).mul_(scale).clamp_(0, 255)


def _equalize(video, _):
    t, c, h, w = video.shape
    values = video.round().clamp_(0, 255).long().reshape(t * c, h * w)
    levels = torch.arange(256, device=video.device)
    hist = torch.zeros(t * c, 256, dtype=torch.long, device=video.device)
    hist.scatter_add_(1, values, torch.ones_like(values))
    last_nonzero = (hist > 0).long() * levels
    last_count = hist.gather(1, last_nonzero.argmax(dim=1, keepdim=True))
    step = (hist.sum(dim=1, keepdim=True) - last_count) // 255
    before = torch.cumsum(hist, dim=1) - hist  # pixels strictly below each level
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    lut = torch.where(step > 0, lut, levels.expand(t * c, 256))
    return lut.float().gather(1, values).reshape(t, c, h, w)


def _invert(video, _):
    return 255.0 - video


def _posterize(video, bits):
    shift = 8 - int(bits)
    if shift <= 0:
        return video
    step = float(2**shift)
    return video.round().div_(step).floor_().mul_(step)


def _solarize(video, threshold):
    return torch.where(video >= threshold, 255.0 - video, video)


def _solarize_add(video, add):
    return torch.where(video < 128, (video + add).clamp_(0, 255), video)


def _color(video, factor):
    return _blend(_grey(video).expand_as(video), video, factor)


def _contrast(video, factor):
    mean = _grey(video).mean(dim=(-3, -2, -1), keepdim=True).round()
    return _blend(mean.expand_as(video), video, factor)


def _brightness(video, factor):
    return (video * factor).clamp_(0, 255)


def _sharpness(video, factor):
    # PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]]/13 = (3x3 box sum + 4 x centre) / 13
    inner = video[..., 1:-1, 1:-1]
    box = F.avg_pool2d(video, kernel_size=3, stride=1) * 9
    degenerate = video.clone()
    degenerate[..., 1:-1, 1:-1] = (box + 4 * inner) / 13  # borders stay as they are
    return _blend(degenerate, video, factor)


def _rotate(video, degrees):
    h, w = video.shape[-2:]
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    return _affine(video, [[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy]])


def _shear_x(video, shear):
    return _affine(video, [[1.0, shear, 0.0], [0.0, 1.0, 0.0]])


def _shear_y(video, shear):
    return _affine(video, [[1.0, 0.0, 0.0], [shear, 1.0, 0.0]])


def _shift(video: torch.Tensor, pixels: int, dim: int) -> torch.Tensor:
    """Move content by whole ``pixels`` along ``dim`` (-1 = x, -2 = y), filling the gap."""
    size = video.shape[dim]
    pixels = max(-size, min(size, pixels))
    out = torch.empty_like(video)
    out.copy_(torch.tensor(_FILL[: video.shape[1]], dtype=video.dtype).view(1, -1, 1, 1).expand_as(video))
    if pixels >= 0:
        out.narrow(dim, pixels, size - pixels).copy_(video.narrow(dim, 0, size - pixels))
    else:
        out.narrow(dim, 0, size + pixels).copy_(video.narrow(dim, -pixels, size + pixels))
    return out


def _translate_x(video, fraction):
    # input x = output x + fraction * W, i.e. content moves by -fraction * W (as PIL's affine)
    return _shift(video, -round(fraction * video.shape[-1]), -1)


def _translate_y(video, fraction):
    return _shift(video, -round(fraction * video.shape[-2]), -2)


def _signed(value: float) -> float:
    return -value if torch.rand(()) < 0.5 else value


# name -> (op, magnitude(0..10) -> argument).  Formulas follow timm's RandAugment levels.
_OPS: dict[str, tuple[Callable, Callable[[float], float]]] = {
    "AutoContrast": (_auto_contrast, lambda m: 0),
    "Equalize": (_equalize, lambda m: 0),
    "Invert": (_invert, lambda m: 0),
    "Rotate": (_rotate, lambda m: _signed(m / 10 * 30)),
    "Posterize": (_posterize, lambda m: int(m / 10 * 4)),
    "PosterizeIncreasing": (_posterize, lambda m: 4 - int(m / 10 * 4)),
    "Solarize": (_solarize, lambda m: int(m / 10 * 256)),
    "SolarizeIncreasing": (_solarize, lambda m: 256 - int(m / 10 * 256)),
    "SolarizeAdd": (_solarize_add, lambda m: int(m / 10 * 110)),
    "Color": (_color, lambda m: m / 10 * 1.8 + 0.1),
    "ColorIncreasing": (_color, lambda m: 1 + _signed(m / 10 * 0.9)),
    "Contrast": (_contrast, lambda m: m / 10 * 1.8 + 0.1),
    "ContrastIncreasing": (_contrast, lambda m: 1 + _signed(m / 10 * 0.9)),
    "Brightness": (_brightness, lambda m: m / 10 * 1.8 + 0.1),
    "BrightnessIncreasing": (_brightness, lambda m: 1 + _signed(m / 10 * 0.9)),
    "Sharpness": (_sharpness, lambda m: m / 10 * 1.8 + 0.1),
    "SharpnessIncreasing": (_sharpness, lambda m: 1 + _signed(m / 10 * 0.9)),
    "ShearX": (_shear_x, lambda m: _signed(m / 10 * 0.3)),
    "ShearY": (_shear_y, lambda m: _signed(m / 10 * 0.3)),
    "TranslateXRel": (_translate_x, lambda m: _signed(m / 10 * 0.45)),
    "TranslateYRel": (_translate_y, lambda m: _signed(m / 10 * 0.45)),
}
_COMMON = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "SolarizeAdd",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
_PLAIN = _COMMON + ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness")
_INCREASING = _COMMON + (
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
)


class RandAugment:
    """RandAugment over whole clips: ``num_ops`` ops drawn with replacement, each applied
    with probability ``prob`` at magnitude ~ N(magnitude, magnitude_std) clipped to
    [0, magnitude_max]; the same ops and arguments for every frame of the clip."""

    def __init__(
        self,
        magnitude: float = 9,
        num_ops: int = 2,
        magnitude_std: float = 0.0,
        magnitude_max: float = 10.0,
        increasing: bool = False,
        prob: float = 0.5,
    ):
        self.magnitude, self.num_ops = magnitude, num_ops
        self.magnitude_std, self.magnitude_max = magnitude_std, magnitude_max
        self.prob = prob
        self.names = _INCREASING if increasing else _PLAIN

    def sample(self) -> list[tuple[str, float]]:
        """The (op, argument) pairs for one clip."""
        chosen = []
        for index in torch.randint(0, len(self.names), (self.num_ops,)).tolist():
            if torch.rand(()) >= self.prob:
                continue
            magnitude = self.magnitude
            if self.magnitude_std > 0:
                magnitude = float(torch.normal(torch.tensor(float(magnitude)), self.magnitude_std))
            magnitude = min(max(0.0, magnitude), self.magnitude_max)
            name = self.names[index]
            chosen.append((name, _OPS[name][1](magnitude)))
        return chosen

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        for name, argument in self.sample():
            video = _OPS[name][0](video, argument)
        return video

    def __repr__(self) -> str:
        return f"RandAugment(m={self.magnitude}, n={self.num_ops}, mstd={self.magnitude_std}, ops={len(self.names)})"


def parse_rand_augment(spec: str | None) -> RandAugment | None:
    """Parse timm's string form, e.g. ``rand-m9-n2-mstd0.5-inc1`` (m: magnitude,
    n: ops per clip, mstd: magnitude std, mmax: max magnitude, inc: increasing ops,
    p: probability of each op).  None or "" disables it."""
    if not spec:
        return None
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"data.rand_augment={spec!r}: must start with 'rand-'")
    kwargs = {}
    keys = {
        "m": ("magnitude", float),
        "n": ("num_ops", int),
        "mstd": ("magnitude_std", float),
        "mmax": ("magnitude_max", float),
        "inc": ("increasing", lambda v: bool(int(v))),
        "p": ("prob", float),
    }
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)([0-9.]+)", part)
        if not match or match[1] not in keys:
            raise ConfigError(
                f"data.rand_augment={spec!r}: unknown part {part!r} (valid: {', '.join(k + '<number>' for k in keys)})"
            )
        name, convert = keys[match[1]]
        try:
            kwargs[name] = convert(match[2])
        except ValueError:
            raise ConfigError(f"data.rand_augment={spec!r}: bad number in {part!r}") from None
    return RandAugment(**kwargs)


# --------------------------------------------------------------------------- pipelines
def random_erase(video: torch.Tensor, probability: float) -> torch.Tensor:
    """Random erasing as VideoMAE's fine-tuning applies it, in place on a normalised
    ``(C, T, H, W)`` clip.

    Each frame on its own, with ``probability``, gets one box of N(0, 1) noise (timm's
    ``RandomErasing`` in "pixel" mode with one box: VideoMAE hands it the clip as a batch
    of frames).  The box covers 2-33 % of the frame at an aspect ratio in [0.3, 1/0.3]; up
    to 10 draws are tried for a box that fits, as timm does.
    """
    if probability <= 0:
        return video
    channels, frames, height, width = video.shape
    log_low, log_high = math.log(0.3), math.log(1 / 0.3)
    for frame in range(frames):
        if torch.rand(()).item() >= probability:
            continue
        for _ in range(10):
            area = height * width * (0.02 + (1 / 3 - 0.02) * torch.rand(()).item())
            aspect = math.exp(log_low + (log_high - log_low) * torch.rand(()).item())
            box_h, box_w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if box_w < width and box_h < height:
                top = int(torch.randint(0, height - box_h + 1, ()))
                left = int(torch.randint(0, width - box_w + 1, ()))
                video[:, frame, top : top + box_h, left : left + box_w] = torch.randn(channels, box_h, box_w)
                break
    return video


class ClipAugmentation(NamedTuple):
    """The random choices of one training clip, drawn by :meth:`TrainTransform.draw`."""

    box: tuple[int, int, int, int]  # (top, left, height, width) of the random resized crop
    flip: bool
    ops: tuple[tuple[str, float], ...]  # RandAugment's (op name, argument) pairs, in order


class TrainTransform:
    """uint8 ``(T, H, W, C)`` -> random resized crop -> flip -> RandAugment -> normalised
    float32 ``(C, T, S, S)`` -> random erasing (off by default).  One crop box, flip and op
    list per call (per clip).

    :meth:`draw` makes the random choices and :meth:`apply` carries them out; the batched
    path on the training device (:mod:`aptune.data.batch_augment`) carries out the same
    draws, made by a loader worker, for a whole batch at once.
    """

    def __init__(
        self,
        input_size: int = 224,
        rand_augment: str | None = None,
        horizontal_flip: bool = True,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        random_erase: float = 0.0,
    ):
        self.input_size = input_size
        self.rand_augment = parse_rand_augment(rand_augment)
        self.horizontal_flip = horizontal_flip
        self.scale, self.ratio = scale, ratio
        self.random_erase = random_erase

    def draw(self, height: int, width: int) -> ClipAugmentation:
        """The crop box, flip and RandAugment ops of one clip of frames ``height`` x ``width``
        (drawn from torch's global generator, in the order the per-clip path always drew them)."""
        box = random_resized_crop_box(height, width, self.scale, self.ratio)
        flip = bool(self.horizontal_flip and torch.rand(()) < 0.5)
        ops = tuple(self.rand_augment.sample()) if self.rand_augment is not None else ()
        return ClipAugmentation(box, flip, ops)

    def apply(self, frames: torch.Tensor, choices: ClipAugmentation) -> torch.Tensor:
        """uint8 ``(T, H, W, C)`` augmented by ``choices``, normalised, then randomly erased."""
        # Crop first, augment after: the ops then run on the small crop, which is cheaper
        # than augmenting the full frame and gives the same distribution of images.
        video = resized_crop(channels_first(frames), choices.box, self.input_size).float()
        if choices.flip:
            video = video.flip(-1)
        for name, argument in choices.ops:
            video = _OPS[name][0](video, argument)
        return random_erase(normalize(video), self.random_erase)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.apply(frames, self.draw(frames.shape[1], frames.shape[2]))


class TestTransform:
    """Short side to ``short_side_size``, then ``num_crops`` crops of ``input_size``."""

    def __init__(self, input_size: int = 224, short_side_size: int = 224, num_crops: int = 1):
        self.input_size, self.short_side_size, self.num_crops = (
            input_size,
            short_side_size,
            num_crops,
        )

    def resize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(T, H, W, C)`` -> uint8 ``(T, C, H', W')`` with the short side resized
        (kept as uint8 so a decoded video can be cached cheaply for all its crops)."""
        video = resize_short_side(channels_first(frames), self.short_side_size)
        if video.shape[-1] < self.input_size or video.shape[-2] < self.input_size:
            video = _pad_to(video.float(), self.input_size).round_().to(torch.uint8)
        return video

    def crop(self, resized: torch.Tensor, crop: int) -> torch.Tensor:
        """Crop ``crop`` (0-based) of a :meth:`resize` output, normalised ``(C, T, S, S)``."""
        height, width = resized.shape[-2:]
        top, left = crop_positions(height, width, self.input_size, self.num_crops)[crop]
        size = self.input_size
        return normalize(resized[..., top : top + size, left : left + size])

    def __call__(self, frames: torch.Tensor) -> list[torch.Tensor]:
        resized = self.resize(frames)
        return [self.crop(resized, i) for i in range(self.num_crops)]
