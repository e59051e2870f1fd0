"""Attention Prompt Tuning (Bandara & Patel, FG 2024, https://arxiv.org/abs/2403.06978).

In every block l of [prompt_start, prompt_end], P learnable keys Pk_l and values
Pv_l of shape (P, head_dim), shared by all heads, are appended to that block's
keys and values.  Queries are unchanged, so the block still outputs N tokens
and the prompts never reach the next layer.  The extra cost is 2*N*P*D
multiply-adds per layer, against VPT-deep's 12*P*D^2 + 2*D*(2NP + P^2).

Reparameterisation: a learnable scale s_l of shape (2, P), initialised to one,
multiplies each prompt row by max(s, 1).  This is the official formula, kept
exactly so checkpoints trained with the official code give the same logits.

``prompt_init="uniform"`` is the paper's start (small uniform noise);
``"tokens"`` copies keys and values of random training tokens (see
:mod:`aptune.methods.prompt_init` for why a sharp backbone needs it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from aptune.errors import ConfigError
from aptune.methods.prompt_init import check_prompt_init, sample_block_tokens
from aptune.methods.registry import register
from aptune.models.vit import BlockExtension, VisionTransformer, prompt_init_bound


class AttentionPrompts(BlockExtension):
    """Per-layer prompt keys/values (and scales) for layers first_layer..last_layer."""

    def __init__(
        self,
        num_layers: int,
        num_prompts: int,
        head_dim: int,
        bound: float,
        first_layer: int = 0,
        dropout: float = 0.0,
        reparam: bool = True,
    ) -> None:
        super().__init__(first_layer, num_layers)
        self.keys = nn.Parameter(torch.empty(num_layers, num_prompts, head_dim).uniform_(-bound, bound))
        self.values = nn.Parameter(torch.empty(num_layers, num_prompts, head_dim).uniform_(-bound, bound))
        self.scales = nn.Parameter(torch.ones(num_layers, 2, num_prompts)) if reparam else None
        self.dropout = nn.Dropout(dropout)
        # this forward's prompts, set by prepare(), per thread: two threads may run one model
        self._layer_kv: dict[int, tuple[Tensor, ...]] = {}
        self._constant_kv: tuple[tuple, tuple[Tensor, ...]] | None = None  # prompts kept between no-grad forwards

    def forward(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """(keys, values) of shape (1, 1, P, head_dim) for ``layer``, or None outside the range."""
        if not self.first_layer <= layer <= self.last_layer:
            return None
        index = layer - self.first_layer
        keys = self.dropout(self.keys[index])
        values = self.dropout(self.values[index])
        if self.scales is not None:
            # torch.maximum (not clamp) so gradients at s == 1 match the official code
            one = torch.ones((), dtype=self.scales.dtype, device=self.scales.device)
            keys = keys * torch.maximum(self.scales[index, 0], one)[:, None]
            values = values * torch.maximum(self.scales[index, 1], one)[:, None]
        return keys[None, None], values[None, None]

    def effective_prompts(self) -> Tensor:
        """Every layer's prompts as the blocks see them, (layers, 2, P, head_dim): keys then values."""
        prompts = self.dropout(torch.stack((self.keys, self.values), dim=1))
        if self.scales is None:
            return prompts
        one = torch.ones((), dtype=self.scales.dtype, device=self.scales.device)
        return prompts * torch.maximum(self.scales, one)[..., None]

    def prepare(self) -> None:
        # once per forward, for all layers at once: per layer, the few small ops of the
        # reparameterisation cost more than the attention to 32 extra keys at 128 tokens.
        # Each layer's (2, 1, 1, P, head_dim): keys and values broadcast over batch and heads.
        if torch.is_grad_enabled() or (self.training and self.dropout.p > 0):
            self._layer_kv[threading.get_ident()] = self.effective_prompts()[:, :, None, None].unbind(0)
            return
        # Without autograd the prompts are constants until a tensor changes: kept from the
        # last forward, which saves their ops (run between the patch embedding and the first
        # block, each costs several times its isolated time; ~2 % of a 128-token forward)
        state = self._prompt_state()
        if self._constant_kv is None or not _same_state(self._constant_kv[0], state):
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, usable in any mode
                self._constant_kv = (state, self.effective_prompts()[:, :, None, None].unbind(0))
        self._layer_kv[threading.get_ident()] = self._constant_kv[1]

    def _prompt_state(self) -> tuple:
        """What the prompts' values depend on: each tensor (held, so its identity and memory
        cannot be reused while cached), its storage and its in-place version."""
        tensors = [t for t in (self.keys, self.values, self.scales) if t is not None]
        return tuple((t, t.data_ptr(), t._version) for t in tensors)

    def release(self) -> None:
        # part of this forward's graph: not kept (nor deep-copied) with the module
        self._layer_kv.pop(threading.get_ident(), None)

    def block_inputs(self, layer: int) -> dict:
        prepared = self._layer_kv.get(threading.get_ident())
        if prepared is None:
            raise RuntimeError("AttentionPrompts.block_inputs called outside a forward (prepare() was not called)")
        return {"extra_kv": prepared[layer - self.first_layer]}


def _same_state(kept: tuple, now: tuple) -> bool:
    return len(kept) == len(now) and all(a[0] is b[0] and a[1:] == b[1:] for a, b in zip(kept, now, strict=True))


@register("apt")
@dataclass
class APT:
    prompted: ClassVar[bool] = True
    injectable: ClassVar[bool] = True
    shareable: ClassVar[bool] = True  # prompts change only attention: tasks can share a batch
    NOT_MERGEABLE_BECAUSE: ClassVar[str] = "its prompts add keys and values that no backbone weight can express"

    num_prompts: int = 400
    prompt_start: int = 0
    prompt_end: int | None = None  # inclusive; None = last block
    prompt_dropout: float = 0.0
    reparam: bool = True
    prompt_init: str = "uniform"

    # training-only: an adapter trained with other values computes the same at inference
    LOAD_IGNORES: ClassVar[tuple[str, ...]] = ("prompt_dropout", "prompt_init")
    # the official code weight-decays the (layers, 2, P) scales; optim.decay_prompt_scales=false does not
    DECAY_OPTIONAL: ClassVar[tuple[str, ...]] = ("kv_prompts.scales",)

    def __post_init__(self) -> None:
        check_prompt_init(self.prompt_init)

    def attach(self, model: VisionTransformer) -> None:
        if self.num_prompts == 0:
            return  # zero prompts is exactly the frozen backbone with a new head
        start, end = resolve_layer_range(self.prompt_start, self.prompt_end, len(model.blocks))
        config = model.config
        prompts = AttentionPrompts(
            num_layers=end - start + 1,
            num_prompts=self.num_prompts,
            head_dim=config.head_dim,
            bound=prompt_init_bound(config.patch_size, config.head_dim),
            first_layer=start,
            dropout=self.prompt_dropout,
            reparam=self.reparam,
        )
        model.add_extension("kv_prompts", prompts.to(model.fc_norm.weight.device))

    def trainable_prefixes(self) -> tuple[str, ...]:
        return ("kv_prompts.", "fc_norm.", "head.")

    @torch.no_grad()
    def init_from_clips(self, model: VisionTransformer, clips: Tensor, generator: torch.Generator) -> None:
        """With ``prompt_init="tokens"``: every layer's prompts become real keys/values of ``clips``."""
        prompts = model.extension("kv_prompts")
        if self.prompt_init != "tokens" or prompts is None:
            return
        samples = sample_block_tokens(model, clips, self.num_prompts, generator)
        for layer in range(prompts.first_layer, prompts.last_layer + 1):
            index = layer - prompts.first_layer
            prompts.keys[index].copy_(samples[layer].keys)
            prompts.values[index].copy_(samples[layer].values)


def resolve_layer_range(start: int, end: int | None, depth: int) -> tuple[int, int]:
    """Check an inclusive block range and fill in the default end (the last block)."""
    end = depth - 1 if end is None else end
    if not 0 <= start <= end < depth:
        raise ConfigError(f"prompt range [{start}, {end}] must satisfy 0 <= prompt_start <= prompt_end < depth={depth}")
    return start, end
