"""Optimisers and the per-step learning-rate schedule.

Weight decay never applies to biases or other 1-D tensors (norm scales, APT's
per-prompt scales): decaying them pulls normalisation and scales toward zero,
which no recipe intends.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEAD_PREFIXES = ("fc_norm.", "head.")


def parameter_groups(model: nn.Module, weight_decay: float, head_lr_scale: float = 1.0) -> list[dict]:
    """Trainable tensors by (decayed or not) x (classifier or not); ``lr_scale`` rides on each group."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # APT stores every layer's per-prompt scales in one (layers, 2, P) tensor: still scales
        decays = not (param.ndim <= 1 or name.endswith((".bias", ".scales")))
        # without a head lr the head shares the groups: the same two as before head_lr existed
        own_lr = head_lr_scale != 1.0 and name.startswith(HEAD_PREFIXES)
        groups.setdefault((decays, own_lr), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0,
             "lr_scale": head_lr_scale if own_lr else 1.0}
            for (decays, own_lr), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999),
                    head_lr: float | None = None) -> torch.optim.Optimizer:
    """``head_lr``: the classifier's (``fc_norm``, ``head``) own peak lr; None: ``lr``."""
    groups = parameter_groups(model, weight_decay, 1.0 if head_lr is None else head_lr / lr)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer '{name}' (valid: adamw, sgd)")


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, base_lr: float,
                       min_lr: float) -> float:
    """Linear warm-up from ~0 to base_lr, then half-cosine decay to min_lr, per step."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class CosineSchedule:
    """Sets every group's lr (times its ``lr_scale``) from the step count; its state is that count."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                 base_lr: float, min_lr: float) -> None:
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.base_lr = base_lr
        self.min_lr = min_lr
        self.step_count = 0
        self._apply()

    def lr(self) -> float:
        return cosine_with_warmup(self.step_count, self.total_steps, self.warmup_steps,
                                  self.base_lr, self.min_lr)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def _apply(self) -> None:
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
