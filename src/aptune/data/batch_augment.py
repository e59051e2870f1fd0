"""Training augmentation of a whole batch on the training device (``data.augment_on: device``).

A loader worker decodes a video, draws each of its ``num_sample`` clips' random choices
with :meth:`~aptune.data.transforms.TrainTransform.draw` (the crop box, the flip, the
RandAugment ops and their arguments: a few numbers) and hands on the uint8 frames as they
were decoded.  :func:`collate_raw_train` pads a batch's frames to one size and packs the
choices into small tensors; :class:`BatchAugment`, in the main process, moves the uint8
frames to the device (a quarter of the bytes of float clips, once per video however many
clips it gives) and carries the choices out there: random resized crop, flip, RandAugment
and normalisation, each op applied at once to every clip of the batch that drew it.

The choices are the per-clip path's (:class:`~aptune.data.transforms.TrainTransform`):
the same draws from the same generator, seeded per item, so the distribution of
augmentations is the same and a run still replays exactly after a resume.  The pixels
agree with the per-clip path up to rounding (``tests/test_data_batch_augment.py``): each
op below is that path's op written for a batch with one argument per clip.  Random
erasing (off in every recipe but full fine-tuning) stays on the per-clip path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from aptune.data.transforms import (
    _FILL,
    _OPS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipAugmentation,
    _auto_contrast,
    _equalize,
)

__all__ = ["OP_NAMES", "RawTrainBatch", "BatchAugment", "collate_raw_train", "pack_choices"]

#: every RandAugment op, in a fixed order: a batch carries an op as its index here
OP_NAMES: tuple[str, ...] = tuple(_OPS)
_NO_OP = -1


class RawTrainBatch(NamedTuple):
    """What a worker hands on for ``data.augment_on: device``: decoded frames and choices."""

    frames: torch.Tensor  # (V, T, H, W, 3) uint8, each video padded at the bottom/right to the largest
    sizes: torch.Tensor  # (V, 2) int64: each video's own (height, width)
    source: torch.Tensor  # (N,) int64: the video each clip is cut from
    boxes: torch.Tensor  # (N, 4) int64: (top, left, height, width)
    flips: torch.Tensor  # (N,) bool
    ops: torch.Tensor  # (N, K) int64: index into OP_NAMES, -1 where a clip drew fewer ops
    arguments: torch.Tensor  # (N, K) float64: each op's argument
    labels: torch.Tensor  # (N,) int64
    failures: list  # Failure records of videos replaced while building the batch


def pack_choices(choices: Sequence[ClipAugmentation]) -> tuple[torch.Tensor, ...]:
    """Boxes, flips, op indices and arguments of ``choices`` as tensors (see :class:`RawTrainBatch`)."""
    width = max((len(c.ops) for c in choices), default=0)
    boxes = torch.tensor([list(c.box) for c in choices], dtype=torch.long).view(-1, 4)
    flips = torch.tensor([c.flip for c in choices], dtype=torch.bool)
    ops = torch.full((len(choices), width), _NO_OP, dtype=torch.long)
    arguments = torch.zeros((len(choices), width), dtype=torch.float64)
    for row, clip in enumerate(choices):
        for slot, (name, argument) in enumerate(clip.ops):
            ops[row, slot] = OP_NAMES.index(name)
            arguments[row, slot] = float(argument)
    return boxes, flips, ops, arguments


def collate_raw_train(batch: Sequence) -> RawTrainBatch:
    """Items with ``frames``, ``choices``, ``label``, ``failures`` -> one :class:`RawTrainBatch`."""
    frames = [item.frames for item in batch]
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) == 1:
        stacked = torch.stack(frames)
    else:  # videos of different sizes: pad (only a copy; crops never reach the padding)
        length = max(f.shape[0] for f in frames)
        height, width = max(f.shape[1] for f in frames), max(f.shape[2] for f in frames)
        stacked = torch.zeros((len(frames), length, height, width, 3), dtype=torch.uint8)
        for row, f in enumerate(frames):
            stacked[row, : f.shape[0], : f.shape[1], : f.shape[2]] = f
    sizes = torch.tensor([[f.shape[1], f.shape[2]] for f in frames], dtype=torch.long).view(-1, 2)
    choices = [c for item in batch for c in item.choices]
    source = torch.tensor([row for row, item in enumerate(batch) for _ in item.choices], dtype=torch.long)
    labels = torch.tensor([item.label for item in batch for _ in item.choices], dtype=torch.long)
    failures = [f for item in batch for f in item.failures]
    return RawTrainBatch(stacked, sizes, source, *pack_choices(choices), labels, failures)


# ------------------------------------------------------------------- batched ops
# Each takes float (b, T, C, H, W) in [0, 255] and a float64 (b,) CPU tensor of arguments,
# one per clip, and returns the same shape.  ``_per_clip`` shapes an argument to broadcast.
def _per_clip(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _per_frame(op: Callable) -> Callable:
    """An op of the per-clip path that works frame by frame and takes no argument."""

    def apply(video: torch.Tensor, _arguments: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = video.shape
        return op(video.reshape(b * t, c, h, w), None).view(b, t, c, h, w)

    return apply


def _grey(video: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, ``(b, T, 1, H, W)``."""
    if video.shape[2] == 1:
        return video
    weights = torch.tensor((0.299, 0.587, 0.114), device=video.device, dtype=video.dtype)
    return torch.einsum("btchw,c->bthw", video, weights).unsqueeze(2)


def _blend(degenerate: torch.Tensor, video: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return torch.lerp(degenerate, video, _per_clip(factors, video)).clamp_(0, 255)


def _invert(video, _arguments):
    return 255.0 - video


def _posterize(video, bits):
    steps = _per_clip(torch.exp2((8 - bits.floor()).clamp(min=0)), video)
    return torch.where(steps > 1, video.round().div_(steps).floor_().mul_(steps), video)


def _solarize(video, thresholds):
    return torch.where(video >= _per_clip(thresholds, video), 255.0 - video, video)


def _solarize_add(video, additions):
    return torch.where(video < 128, (video + _per_clip(additions, video)).clamp_(0, 255), video)


def _color(video, factors):
    return _blend(_grey(video).expand_as(video), video, factors)


def _contrast(video, factors):
    mean = _grey(video).mean(dim=(-3, -2, -1), keepdim=True).round()
    return _blend(mean.expand_as(video), video, factors)


def _brightness(video, factors):
    return (video * _per_clip(factors, video)).clamp_(0, 255)


def _sharpness(video, factors):
    # PIL's SMOOTH kernel (3x3 box sum + 4 x centre) / 13 inside, borders as they are
    rows = video[..., :-2, :] + video[..., 1:-1, :] + video[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    degenerate = video.clone()
    degenerate[..., 1:-1, 1:-1] = (box + 4 * video[..., 1:-1, 1:-1]) / 13
    return _blend(degenerate, video, factors)


def _affine(video: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Warp each clip by its 2x3 matrix (output pixel -> input pixel), filling with the mean."""
    b, t, c, h, w = video.shape
    pixel = torch.tensor([[w / 2, 0, (w - 1) / 2], [0, h / 2, (h - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    full = torch.cat([matrices, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64).expand(b, 1, 3)], dim=1)
    theta = (torch.linalg.inv(pixel) @ full @ pixel)[:, :2].to(video.device, video.dtype)
    theta = theta.repeat_interleave(t, dim=0)
    grid = F.affine_grid(theta, [b * t, c, h, w], align_corners=False)
    fill = torch.tensor(_FILL[:c], device=video.device, dtype=video.dtype).view(1, c, 1, 1)
    flat = video.reshape(b * t, c, h, w) - fill
    warped = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (warped + fill).view(b, t, c, h, w)


def _rotate(video, degrees):
    h, w = video.shape[-2:]
    radians = degrees * (math.pi / 180)
    cos, sin = torch.cos(radians), torch.sin(radians)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    rows = [
        torch.stack([cos, -sin, cx - cos * cx + sin * cy], -1),
        torch.stack([sin, cos, cy - sin * cx - cos * cy], -1),
    ]
    return _affine(video, torch.stack(rows, dim=1))


def _shear(video, shears, along_x: bool):
    matrices = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64).repeat(len(shears), 1, 1)
    matrices[:, 0 if along_x else 1, 1 if along_x else 0] = shears
    return _affine(video, matrices)


def _shift(video: torch.Tensor, pixels: Sequence[int], dim: int) -> torch.Tensor:
    """Move each clip's content by its whole ``pixels`` along ``dim`` (-1 = x, -2 = y)."""
    size = video.shape[dim]
    fill = torch.tensor(_FILL[: video.shape[2]], device=video.device, dtype=video.dtype).view(1, 1, -1, 1, 1)
    out = fill.expand_as(video).clone()
    for row, amount in enumerate(pixels):
        amount = max(-size, min(size, amount))
        source, target = out[row], video[row]
        if amount >= 0:
            source.narrow(dim, amount, size - amount).copy_(target.narrow(dim, 0, size - amount))
        else:
            source.narrow(dim, 0, size + amount).copy_(target.narrow(dim, -amount, size + amount))
    return out


def _translate(video, fractions, dim: int):
    # as the per-clip path: content moves by -fraction * size, rounded half to even like round()
    return _shift(video, [-round(f * video.shape[dim]) for f in fractions.tolist()], dim)


_BATCHED: dict[Callable, Callable] = {
    _OPS["AutoContrast"][0]: _per_frame(_auto_contrast),
    _OPS["Equalize"][0]: _per_frame(_equalize),
    _OPS["Invert"][0]: _invert,
    _OPS["Rotate"][0]: _rotate,
    _OPS["Posterize"][0]: _posterize,
    _OPS["Solarize"][0]: _solarize,
    _OPS["SolarizeAdd"][0]: _solarize_add,
    _OPS["Color"][0]: _color,
    _OPS["Contrast"][0]: _contrast,
    _OPS["Brightness"][0]: _brightness,
    _OPS["Sharpness"][0]: _sharpness,
    _OPS["ShearX"][0]: lambda video, shears: _shear(video, shears, along_x=True),
    _OPS["ShearY"][0]: lambda video, shears: _shear(video, shears, along_x=False),
    _OPS["TranslateXRel"][0]: lambda video, fractions: _translate(video, fractions, -1),
    _OPS["TranslateYRel"][0]: lambda video, fractions: _translate(video, fractions, -2),
}
#: OP_NAMES index -> the batched op (the per-clip op of that name, written for a batch)
BATCHED_OPS: tuple[Callable, ...] = tuple(_BATCHED[_OPS[name][0]] for name in OP_NAMES)


# ------------------------------------------------------------------- the pipeline
class BatchAugment:
    """Carries out a :class:`RawTrainBatch`'s choices on ``device``: float32 ``(N, C, T, S, S)``
    normalised clips, as :class:`~aptune.data.transforms.TrainTransform` makes them one by one.

    Clips stay uint8 through the crop and the flip; only those that drew RandAugment ops
    become float, and a clip without ops is normalised straight from uint8.  On a GPU the
    clips that drew the same op are transformed together; on the CPU (where launches cost
    nothing and gathering clips costs a pass over memory) one clip at a time.
    """

    def __init__(self, input_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.input_size = input_size
        self.mean, self.std = mean, std

    def __call__(self, batch: RawTrainBatch, device: torch.device | str = "cpu") -> torch.Tensor:
        device = torch.device(device)
        frames = batch.frames.to(device, non_blocking=True)
        crops = self.resized_crops(frames, batch.source.tolist(), batch.boxes.tolist())
        flipped = batch.flips.nonzero().flatten().to(device)
        if len(flipped):
            crops.index_copy_(0, flipped, crops.index_select(0, flipped).flip(-1))
        count, length, channels, size, _ = crops.shape
        out = torch.empty((count, channels, length, size, size), device=device)
        with_ops = (batch.ops != _NO_OP).any(dim=1)
        self.normalize_into(out, crops, (~with_ops).nonzero().flatten())
        changed = with_ops.nonzero().flatten()
        groups = changed.split(1) if device.type == "cpu" else [changed]
        for rows in groups:
            if len(rows) == 0:
                continue
            on_device = rows.to(device)
            video = crops.index_select(0, on_device).float()
            for slot in range(batch.ops.shape[1]):
                video = self.apply_ops(video, batch.ops[rows, slot], batch.arguments[rows, slot])
            out.index_copy_(0, on_device, self.normalize(video))
        return out

    def resized_crops(self, frames: torch.Tensor, source: list[int], boxes: list[list[int]]) -> torch.Tensor:
        """uint8 ``(N, T, C, S, S)``: each clip's box of its video's frames, resized (antialiased
        bilinear) to S x S: on the CPU by the per-clip path's own uint8 resize, on a GPU in
        float and rounded to whole levels."""
        size = self.input_size
        out = torch.empty((len(boxes), frames.shape[1], 3, size, size), device=frames.device, dtype=torch.uint8)
        for row, (video, (top, left, height, width)) in enumerate(zip(source, boxes)):
            crop = frames[video, :, top : top + height, left : left + width].permute(0, 3, 1, 2)
            if (height, width) == (size, size):
                out[row] = crop
            elif frames.device.type == "cpu":  # PyTorch's fast path for channels-last uint8
                crop = crop.contiguous(memory_format=torch.channels_last)
                out[row] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
            else:  # CUDA resizes floats only
                resized = F.interpolate(crop.float(), size=(size, size), mode="bilinear", antialias=True)
                out[row] = resized.round_().clamp_(0, 255)
        return out

    @staticmethod
    def apply_ops(video: torch.Tensor, ops: torch.Tensor, arguments: torch.Tensor) -> torch.Tensor:
        """One RandAugment slot of the clips in ``video``: each op drawn in it, applied to the
        clips that drew it (all of them: in place of ``video``, no gather)."""
        for index in ops.unique().tolist():
            if index == _NO_OP:
                continue
            rows = (ops == index).nonzero().flatten()
            if len(rows) == len(video):
                video = BATCHED_OPS[index](video, arguments)
                continue
            on_device = rows.to(video.device)
            changed = BATCHED_OPS[index](video.index_select(0, on_device), arguments[rows])
            video.index_copy_(0, on_device, changed)
        return video

    def _constants(self, device: torch.device, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        # the per-clip path's arithmetic exactly: (x - 255 mean) * (1 / (255 std)) in float32
        mean = torch.tensor(self.mean, dtype=torch.float32).view(shape) * 255
        scale = 1.0 / (torch.tensor(self.std, dtype=torch.float32).view(shape) * 255)
        return mean.to(device), scale.to(device)

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        """Float ``(b, T, C, S, S)`` in [0, 255] -> normalised ``(b, C, T, S, S)`` (a view)."""
        mean, scale = self._constants(video.device, (1, 1, -1, 1, 1))
        return video.sub_(mean).mul_(scale).transpose(1, 2)

    def normalize_into(self, out: torch.Tensor, crops: torch.Tensor, rows: torch.Tensor) -> None:
        """``out[rows]`` = the uint8 ``crops[rows]`` normalised, without a float copy of the crops."""
        if len(rows) == 0:
            return
        mean, scale = self._constants(out.device, (1, -1, 1, 1, 1))
        if len(rows) == len(out):
            torch.sub(crops.transpose(1, 2), mean, out=out).mul_(scale)
            return
        on_device = rows.to(out.device)
        source = crops.index_select(0, on_device).transpose(1, 2)
        out.index_copy_(0, on_device, torch.sub(source, mean).mul_(scale))
