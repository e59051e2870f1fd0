"""LoRA (Hu et al., ICLR 2022, https://arxiv.org/abs/2106.09685) on the fused qkv projection.

Each block's frozen qkv weight W (3D x D) gets a low-rank update (alpha / r) * B A
with A (r x D) and B (3D x r); B starts at zero so training starts from the
pretrained model.  For inference the update can be merged into W
(:func:`merge_lora`), after which the model costs exactly the backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from aptune.methods.apt import resolve_layer_range
from aptune.methods.registry import register
from aptune.models.vit import BlockExtension


class QKVLowRank(BlockExtension):
    def __init__(self, num_layers: int, dim: int, rank: int, alpha: float, first_layer: int = 0) -> None:
        super().__init__(first_layer, num_layers)
        self.scaling = alpha / rank
        self.down = nn.Parameter(torch.empty(num_layers, rank, dim))
        self.up = nn.Parameter(torch.zeros(num_layers, 3 * dim, rank))
        for index in range(num_layers):
            nn.init.kaiming_uniform_(self.down.data[index], a=math.sqrt(5))

    def forward(self, layer: int):
        if not self.first_layer <= layer <= self.last_layer:
            return None
        index = layer - self.first_layer
        down, up = self.down[index], self.up[index]
        return lambda x: (x @ down.T) @ up.T * self.scaling

    def block_inputs(self, layer: int) -> dict:
        return {"qkv_delta": self(layer)}

    def delta_weight(self, layer: int) -> Tensor:
        index = layer - self.first_layer
        return self.up[index] @ self.down[index] * self.scaling


@register("lora")
@dataclass
class LoRA:
    adapter: ClassVar[bool] = True
    mergeable: ClassVar[bool] = True  # merge() folds the update into the qkv weights
    lora_rank: int = 8
    lora_alpha: float = 16.0
    prompt_start: int = 0  # first block adapted (shared range option name)
    prompt_end: int | None = None

    def attach(self, model) -> None:
        start, end = resolve_layer_range(self.prompt_start, self.prompt_end, len(model.blocks))
        adapters = QKVLowRank(end - start + 1, model.config.embed_dim, self.lora_rank, self.lora_alpha, start)
        model.add_extension("qkv_adapters", adapters.to(model.fc_norm.weight.device))

    def trainable_prefixes(self) -> tuple[str, ...]:
        return ("qkv_adapters.", "fc_norm.", "head.")

    def merge(self, model) -> None:
        merge_lora(model)


@torch.no_grad()
def merge_lora(model) -> None:
    """Fold the low-rank updates into the frozen qkv weights and remove the adapters."""
    adapters = model.extension("qkv_adapters")
    if adapters is None:
        return
    for layer in range(adapters.first_layer, adapters.last_layer + 1):
        weight = model.blocks[layer].attn.qkv.weight
        weight.add_(adapters.delta_weight(layer).to(weight.dtype))
    model.remove_extension("qkv_adapters")
