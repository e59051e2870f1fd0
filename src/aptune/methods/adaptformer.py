"""AdaptFormer (Chen et al., NeurIPS 2022, https://arxiv.org/abs/2205.13535).

A bottleneck adapter (D -> d, ReLU, d -> D) runs in parallel with each frozen
MLP, reading the same residual stream, and its output, scaled by s, is added to
the block's output.  The up-projection starts at zero, so training starts from
the pretrained model.  Extra cost: 2*N*D*d multiply-adds per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from aptune.methods.apt import resolve_layer_range
from aptune.methods.registry import register
from aptune.models.vit import BlockExtension


class ParallelAdapters(BlockExtension):
    def __init__(self, num_layers: int, dim: int, bottleneck: int, scale: float, first_layer: int = 0) -> None:
        super().__init__(first_layer, num_layers)
        self.scale = scale
        self.down_weight = nn.Parameter(torch.empty(num_layers, bottleneck, dim))
        self.down_bias = nn.Parameter(torch.zeros(num_layers, bottleneck))
        self.up_weight = nn.Parameter(torch.zeros(num_layers, dim, bottleneck))
        self.up_bias = nn.Parameter(torch.zeros(num_layers, dim))
        for index in range(num_layers):
            nn.init.kaiming_uniform_(self.down_weight.data[index], a=math.sqrt(5))

    def forward(self, layer: int):
        if not self.first_layer <= layer <= self.last_layer:
            return None
        i = layer - self.first_layer

        def adapter(x):
            hidden = F.relu(F.linear(x, self.down_weight[i], self.down_bias[i]))
            return F.linear(hidden, self.up_weight[i], self.up_bias[i]) * self.scale

        return adapter

    def block_inputs(self, layer: int) -> dict:
        return {"mlp_side": self(layer)}


@register("adaptformer")
@dataclass
class AdaptFormer:
    adapter: ClassVar[bool] = True
    NOT_MERGEABLE_BECAUSE: ClassVar[str] = "its bottleneck adapters sit behind a ReLU, so no single weight equals them"
    adapter_dim: int = 64
    adapter_scale: float = 0.1
    prompt_start: int = 0
    prompt_end: int | None = None

    def attach(self, model) -> None:
        start, end = resolve_layer_range(self.prompt_start, self.prompt_end, len(model.blocks))
        adapters = ParallelAdapters(
            end - start + 1, model.config.embed_dim, self.adapter_dim, self.adapter_scale, start
        )
        model.add_extension("mlp_adapters", adapters.to(model.fc_norm.weight.device))

    def trainable_prefixes(self) -> tuple[str, ...]:
        return ("mlp_adapters.", "fc_norm.", "head.")
