"""Full fine-tuning: every parameter trains.  The reference point for accuracy and cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aptune.methods.registry import register


@register("full")
@dataclass
class Full:
    trains_backbone: ClassVar[bool] = True
    mergeable: ClassVar[bool] = True

    def attach(self, model) -> None:
        pass

    def trainable_prefixes(self) -> tuple[str, ...]:
        return ("",)
