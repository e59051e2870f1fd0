"""Mixup and CutMix on video batches (the same box on every frame), with smoothed soft targets.

Every random draw (which of the two, the mixing weight, the pairing, the box) comes from
the ``generator`` when one is given, else from torch's global generator, so a seeded
epoch mixes the same way after a resume.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + off


def mix_batch(
    clips: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mixup: float,
    cutmix: float,
    smoothing: float,
    generator: torch.Generator | None = None,
):
    """Returns (clips, soft targets).  With both enabled, each batch flips a coin between them."""
    targets = soft_targets(labels, num_classes, smoothing)
    if mixup <= 0 and cutmix <= 0:
        return clips, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand((), generator=generator).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = sample_beta(alpha, generator)
    perm = torch.randperm(clips.shape[0], generator=generator)
    if use_cutmix:
        clips, lam = _cutmix(clips, perm, lam, generator)
    else:
        clips = clips * lam + clips[perm] * (1.0 - lam)
    return clips, targets * lam + targets[perm] * (1.0 - lam)


def sample_beta(alpha: float, generator: torch.Generator | None) -> float:
    """One Beta(alpha, alpha) draw whose randomness comes from ``generator`` (torch's own
    Beta sampler cannot take one)."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _cutmix(clips: torch.Tensor, perm: torch.Tensor, lam: float, generator):
    height, width = clips.shape[-2:]
    cut = (1.0 - lam) ** 0.5
    box_h, box_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    y0, y1 = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    x0, x1 = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    clips = clips.clone()
    clips[..., y0:y1, x0:x1] = clips[perm][..., y0:y1, x0:x1]
    # the label weight follows the area actually pasted, after clipping at the border
    return clips, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
