"""Linear probing: the backbone is frozen; only the pooled-feature LayerNorm and the head train."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aptune.methods.registry import register


@register("linear")
@dataclass
class Linear:
    injectable: ClassVar[bool] = True
    mergeable: ClassVar[bool] = True
    shareable: ClassVar[bool] = True

    def attach(self, model) -> None:
        pass

    def trainable_prefixes(self) -> tuple[str, ...]:
        return ("fc_norm.", "head.")
