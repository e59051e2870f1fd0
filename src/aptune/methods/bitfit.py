"""BitFit (Ben Zaken et al., ACL 2022, https://arxiv.org/abs/2106.10199): tune only the bias terms.

Every bias of the frozen backbone trains (VideoMAE's q/v biases, the projections', the
MLPs', the LayerNorms' and the patch embedding's), with the pooled-feature LayerNorm and
the head; the weights stay frozen.  It adds no module and no multiply-add: the tuned model
costs exactly the backbone, and its adapter holds one vector per bias (~0.1 % of ViT-B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aptune.methods.registry import register

HEAD_PREFIXES = ("fc_norm.", "head.")


@register("bitfit")
@dataclass
class BitFit:
    mergeable: ClassVar[bool] = True  # the tuned biases are the backbone's own: nothing to fold

    def attach(self, model) -> None:
        pass  # nothing is added: the biases are the backbone's own

    def trainable_prefixes(self) -> tuple[str, ...]:
        return HEAD_PREFIXES

    def trains(self, name: str) -> bool:
        # "q_bias"/"v_bias" (VideoMAE's attention) and "*.bias" (every Linear, Conv and LayerNorm)
        return name.startswith(HEAD_PREFIXES) or name.endswith("bias")
