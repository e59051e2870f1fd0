"""Optimisers, parameter groups and the per-step schedules, by the official recipe's rules.

What VideoMAE and APT train with (``run_class_finetuning.py`` / ``run_class_apt.py``,
``optim_factory.py``, ``utils.cosine_scheduler``), restated here from their formulas:

* **Weight decay** applies to every trainable tensor except those of one dimension,
  biases, ``pos_embed`` / ``cls_token`` and the tensors the model's method lists in its
  ``NO_WEIGHT_DECAY`` (none of the built-in ones does).  APT's per-prompt scales are a
  (layers, 2, P) tensor, so the official code decays them; ``decay_prompt_scales=False``
  (an aptune option) exempts the tensors a method lists in ``DECAY_OPTIONAL`` (APT's scales).
* **Layer-wise lr decay** (full fine-tuning): with depth L and decay d, the patch
  embedding's lr is scaled by d^(L+1), block i's by d^(L-i), everything else
  (``fc_norm``, the head, prompt tensors shared by all blocks) by 1.
* **Learning rate**, per optimiser step: ``linspace(0, peak, W)`` over the W warm-up
  steps (first step at 0, last at the peak), then
  ``min_lr + (peak - min_lr) * (1 + cos(pi * i / R)) / 2`` for i = 0..R-1 over the R
  remaining steps.  Each group's lr is that value times its ``lr_scale``.
* **Weight decay schedule**: ``end + (start - end) * (1 + cos(pi * i / T)) / 2`` over all
  T steps, on the groups that decay (constant when no end value is given).
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEAD_PREFIXES = ("fc_norm.", "head.")
NO_DECAY_NAMES = ("pos_embed", "cls_token")  # VideoMAE's no_weight_decay()


def is_decayed(name: str, param: torch.Tensor, exempt: tuple[str, ...] = ()) -> bool:
    """The official criterion, plus the tensors ``exempt`` names (a wrapper's prefix allowed)."""
    if param.ndim <= 1 or name.endswith(".bias") or name in NO_DECAY_NAMES:
        return False
    return not any(name == other or name.endswith("." + other) for other in exempt)


def exempt_from_decay(model: nn.Module, decay_prompt_scales: bool = True) -> tuple[str, ...]:
    """The tensor names the model's tuning method keeps out of weight decay."""
    method = getattr(getattr(model, "module", model), "tuning_method", None)  # a DDP wrap holds it as .module
    exempt = tuple(getattr(method, "NO_WEIGHT_DECAY", ()))
    if not decay_prompt_scales:
        exempt += tuple(getattr(method, "DECAY_OPTIONAL", ()))
    return exempt


def layer_id(name: str, depth: int) -> int:
    """VideoMAE's layer index of a tensor: 0 for the embedding, i + 1 for block i, depth + 1 else."""
    if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_lr_scale(name: str, depth: int, layer_decay: float) -> float:
    if layer_decay >= 1.0:
        return 1.0
    return layer_decay ** (depth + 1 - layer_id(name, depth))


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    head_lr_scale: float = 1.0,
    layer_decay: float = 1.0,
    decay_prompt_scales: bool = True,
) -> list[dict]:
    """Trainable tensors grouped by (decayed, lr scale); ``lr_scale`` rides on each group.

    Groups keep the order in which their first tensor appears, as in the official code.
    """
    depth = _depth(model)
    exempt = exempt_from_decay(model, decay_prompt_scales)
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = is_decayed(name, param, exempt)
        scale = layer_lr_scale(name, depth, layer_decay)
        if head_lr_scale != 1.0 and name.startswith(HEAD_PREFIXES):
            scale *= head_lr_scale
        group = groups.setdefault(
            (decays, scale), {"params": [], "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
        )
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    head_lr_scale: float = 1.0,
    layer_decay: float = 1.0,
    decay_prompt_scales: bool = True,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """``head_lr_scale``: the classifier's (``fc_norm``, ``head``) peak lr over the body's."""
    groups = parameter_groups(model, weight_decay, head_lr_scale, layer_decay, decay_prompt_scales)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer '{name}' (valid: adamw, sgd)")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, min_lr: float) -> float:
    """The official per-step learning rate (see the module docstring)."""
    warmup_steps = min(warmup_steps, total_steps)
    if step < warmup_steps:
        if warmup_steps == 1:
            return 0.0  # linspace(0, peak, 1) is [0]
        return peak * step / (warmup_steps - 1)
    remaining = total_steps - warmup_steps
    if remaining <= 0:
        return peak
    index = min(step - warmup_steps, remaining - 1)
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * index / remaining))


def weight_decay_at(step: int, total_steps: int, start: float, end: float | None) -> float:
    """The official weight-decay schedule: a half cosine from ``start`` to ``end`` over every step."""
    if end is None or end == start or total_steps <= 0:
        return start
    index = min(step, total_steps - 1)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * index / total_steps))


class CosineSchedule:
    """Sets every group's lr (times its ``lr_scale``) and weight decay from the step count.

    Its state is that count, so a resumed run continues the exact schedule.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int,
        base_lr: float,
        min_lr: float,
        weight_decay_end: float | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.base_lr = base_lr
        self.min_lr = min_lr
        self.weight_decay_end = weight_decay_end
        for group in optimizer.param_groups:
            group.setdefault("initial_weight_decay", group["weight_decay"])
        self.step_count = 0
        self._apply()

    def lr(self) -> float:
        return lr_at(self.step_count, self.total_steps, self.warmup_steps, self.base_lr, self.min_lr)

    def weight_decay(self, start: float) -> float:
        return weight_decay_at(self.step_count, self.total_steps, start, self.weight_decay_end)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def _apply(self) -> None:
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if group["initial_weight_decay"] > 0:
                group["weight_decay"] = self.weight_decay(group["initial_weight_decay"])

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


def _depth(model: nn.Module) -> int:
    blocks = getattr(model, "blocks", None)
    return len(blocks) if blocks is not None else 0


# ------------------------------------------------------------------ the recipe's rules
def peak_lr(optim, total_batch: int) -> tuple[float, float]:
    """(peak lr, min lr) of a run whose lr-scaling batch is ``total_batch`` videos (``optim``:
    the config's optim section)."""
    if optim.lr is not None:
        return optim.lr, optim.min_lr
    scale = total_batch / 256
    return optim.base_lr * scale, optim.min_lr * scale


def head_lr_scale(optim) -> float:
    """The classifier's peak lr over the body's; fixed by the recipe, whatever the number of GPUs."""
    if optim.head_lr is not None:
        return optim.head_lr / optim.lr
    if optim.head_base_lr is not None:
        return optim.head_base_lr / optim.base_lr
    return 1.0


def classifier_lr(optimizer: torch.optim.Optimizer) -> float | None:
    """The current lr of the classifier groups when ``optim.head_lr`` gave them their own, else None."""
    for group in optimizer.param_groups:
        if group.get("lr_scale", 1.0) != 1.0:
            return group["lr"]
    return None
