"""Starting prompts from the frozen model's own activations on training clips.

The papers start prompts as small uniform noise (VPT's init, kept by APT).  An APT key
that small gets an attention logit near zero, but the frozen keys of a backbone with
sharp attention reach logits of tens: such a prompt then receives ~e^-40 of every
query's attention, hence almost no gradient, and stays useless for hundreds of steps.
Copying the keys and values (APT) or the block inputs (VPT) of random training tokens
starts every prompt where real tokens live, so it is attended from the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aptune.errors import ConfigError

PROMPT_INITS = ("uniform", "tokens")  # how prompt methods start their prompts


def check_prompt_init(value: str) -> None:
    if value not in PROMPT_INITS:
        raise ConfigError(f"prompt_init '{value}' is not one of: {', '.join(PROMPT_INITS)}")


@dataclass
class SampledTokens:
    """``count`` random patch tokens of one block: its inputs, keys and values (one head each)."""

    inputs: Tensor  # (count, D)
    keys: Tensor  # (count, head_dim)
    values: Tensor  # (count, head_dim)


class KeyValueSampler:
    """Keeps ``count`` random (clip, head, token) rows of each layer's keys and values.

    :func:`sample_block_tokens` feeds it from hooks on aptune's own blocks.  For models given
    to ``aptune.inject`` it is installed as ``prompts.sampler``: the injected attentions then
    hand it each prompted layer's keys and values, exactly where prompts would be appended
    (for timm after ``k_norm``), and run that layer without prompts.
    """

    def __init__(self, count: int, generator: torch.Generator) -> None:
        self.count, self.generator = count, generator
        self.samples: dict[int, tuple[Tensor, Tensor]] = {}

    def __call__(self, layer: int, keys: Tensor, values: Tensor) -> None:
        pick = torch.randint(keys.shape[0] * keys.shape[1] * keys.shape[2], (self.count,), generator=self.generator)
        pick = pick.to(keys.device)
        self.samples[layer] = (keys.flatten(0, 2)[pick].clone(), values.flatten(0, 2)[pick].clone())


@torch.no_grad()
def sample_block_tokens(model, clips: Tensor, count: int, generator: torch.Generator) -> list[SampledTokens]:
    """Run the frozen backbone, without any prompts, on ``clips`` and sample ``count`` tokens per block.

    Keys and values are drawn from random (clip, head, token) triples: APT's prompts are
    shared by all heads, so a real key of any head is a plausible start.  Only the samples
    are kept, never a block's full activations.
    """
    samples: list[SampledTokens] = []
    key_values = KeyValueSampler(count, generator)

    def capture(block, args) -> None:
        tokens = args[0]  # (B, N, D): without prompts, every row is a patch token
        keys, values = block.attn.project_qkv(block.norm1(tokens))[1:]  # (B, H, N, head_dim)
        pick = torch.randint(tokens.shape[0] * tokens.shape[1], (count,), generator=generator)
        layer = len(samples)
        key_values(layer, keys, values)
        samples.append(SampledTokens(tokens.flatten(0, 1)[pick.to(tokens.device)].clone(), *key_values.samples[layer]))

    hooks = [block.register_forward_pre_hook(capture) for block in model.blocks]
    was_training = model.training
    try:
        model.eval()
        with model.extensions_disabled():
            model.forward_pooled(clips)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return samples


def layer_prompts(prompts, layer: int, keys: Tensor, values: Tensor):
    """The (keys, values) to append in ``layer``, or None; a sampler, when installed, sees the real ones."""
    sampler = getattr(prompts, "sampler", None)
    if sampler is not None:
        if prompts.first_layer <= layer <= prompts.last_layer:
            sampler(layer, keys, values)
        return None
    return prompts(layer)
