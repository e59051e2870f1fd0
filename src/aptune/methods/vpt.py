"""Visual Prompt Tuning (Jia et al., ECCV 2022, https://arxiv.org/abs/2203.12119).

P learnable tokens of width D join the token sequence: once before the first
prompted block (shallow) or replaced before every block of the range (deep).
They take part in attention as queries, keys and values, which is what makes
VPT cost 12*P*D^2 + 2*D*(2NP + P^2) extra multiply-adds per layer.  They are
excluded from the mean pooling.

``prompt_init="tokens"`` starts each layer's prompts as copies of random training
tokens entering that layer, the counterpart of APT's option of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from aptune.methods.apt import resolve_layer_range
from aptune.methods.prompt_init import check_prompt_init, sample_block_tokens
from aptune.methods.registry import register
from aptune.models.vit import BlockExtension, VisionTransformer, prompt_init_bound


class TokenPrompts(BlockExtension):
    """Prompt tokens inserted before layers first_layer..last_layer (one set per layer)."""

    def __init__(
        self, num_layers: int, num_prompts: int, dim: int, bound: float, first_layer: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__(first_layer, num_layers)
        self.tokens = nn.Parameter(torch.empty(num_layers, num_prompts, dim).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)

    def forward(self, layer: int, batch_size: int) -> Tensor | None:
        """(B, P, D) tokens replacing the current prompts before ``layer``; None keeps them."""
        if not self.first_layer <= layer <= self.last_layer:
            return None
        tokens = self.dropout(self.tokens[layer - self.first_layer])
        return tokens[None].expand(batch_size, -1, -1)

    def tokens_before(self, layer: int, x: Tensor, num_patches: int) -> Tensor:
        # the prompts leaving the previous block are replaced; past last_layer the model stops
        # calling this, so shallow prompts (one layer) are carried through the later blocks
        tokens = self(layer, x.shape[0])
        return torch.cat((x[:, :num_patches], tokens.to(x.dtype)), dim=1)


@dataclass
class _VPT:
    num_prompts: int = 50
    prompt_start: int = 0
    prompt_end: int | None = None  # deep only: last block that gets fresh prompts
    prompt_dropout: float = 0.0
    prompt_init: str = "uniform"

    deep = False
    prompted: ClassVar[bool] = True
    injectable: ClassVar[bool] = True
    NOT_MERGEABLE_BECAUSE: ClassVar[str] = (
        "its prompt tokens join the attention of every block, which no weight can express"
    )
    # training-only: an adapter trained with other values computes the same at inference
    LOAD_IGNORES: ClassVar[tuple[str, ...]] = ("prompt_dropout", "prompt_init")

    def __post_init__(self) -> None:
        check_prompt_init(self.prompt_init)

    def attach(self, model: VisionTransformer) -> None:
        if self.num_prompts == 0:
            return
        start, end = resolve_layer_range(self.prompt_start, self.prompt_end, len(model.blocks))
        if not self.deep:
            end = start  # shallow: inserted once, then carried through the later blocks
        config = model.config
        prompts = TokenPrompts(
            num_layers=end - start + 1,
            num_prompts=self.num_prompts,
            dim=config.embed_dim,
            bound=prompt_init_bound(config.patch_size, config.embed_dim),
            first_layer=start,
            dropout=self.prompt_dropout,
        )
        model.add_extension("token_prompts", prompts.to(model.fc_norm.weight.device))

    def trainable_prefixes(self) -> tuple[str, ...]:
        return ("token_prompts.", "fc_norm.", "head.")

    @torch.no_grad()
    def init_from_clips(self, model: VisionTransformer, clips: Tensor, generator: torch.Generator) -> None:
        """With ``prompt_init="tokens"``: every layer's prompts become real tokens of ``clips``."""
        prompts = model.extension("token_prompts")
        if self.prompt_init != "tokens" or prompts is None:
            return
        samples = sample_block_tokens(model, clips, self.num_prompts, generator)
        for layer in range(prompts.first_layer, prompts.last_layer + 1):
            prompts.tokens[layer - prompts.first_layer].copy_(samples[layer].inputs)


@register("vpt-shallow")
@dataclass
class VPTShallow(_VPT):
    deep = False
    # shallow prompts enter once, before prompt_start: prompt_end is never used
    LOAD_IGNORES: ClassVar[tuple[str, ...]] = ("prompt_dropout", "prompt_init", "prompt_end")


@register("vpt-deep")
@dataclass
class VPTDeep(_VPT):
    deep = True
