"""Linear probing: the backbone is frozen; only the pooled-feature LayerNorm and the head train."""

from __future__ import annotations

from dataclasses import dataclass

from aptune.methods import register


@register("linear")
@dataclass
class Linear:
    def attach(self, model) -> None:
        pass

    def trainable_prefixes(self) -> tuple[str, ...]:
        return ("fc_norm.", "head.")
