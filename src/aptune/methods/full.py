"""Full fine-tuning: every parameter trains.  The reference point for accuracy and cost."""

from __future__ import annotations

from dataclasses import dataclass

from aptune.methods import register


@register("full")
@dataclass
class Full:
    def attach(self, model) -> None:
        pass

    def trainable_prefixes(self) -> tuple[str, ...]:
        return ("",)
