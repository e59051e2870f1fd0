"""APT and VPT for ``transformers`` VideoMAE models, changed in place.

APT: each layer's ``attention.attention`` (a ``VideoMAESelfAttention``) is
replaced by :class:`PromptedVideoMAESelfAttention`, a subclass that reuses the
same ``query`` / ``key`` / ``value`` Linears (so state-dict names and the user's
optimiser references are unchanged), projects q/k/v itself, appends the layer's
prompt keys/values and attends through
:func:`aptune.models.attention.prompted_attention`, the native blocks' own code.  Hooks on the key/value Linears are not used:
they would have to return more rows than the queries have, which the rest of
the layer does not expect.

VPT: ``videomae.encoder`` is replaced by :class:`PromptedVideoMAEEncoder`, an
encoder subclass holding the same ``layer`` list, which inserts the prompt
tokens after the patch tokens before each prompted layer (replacing the
previous layer's prompts) and strips them after the last layer, so the
classifier's mean pooling, or ``bool_masked_pos``, see only video tokens.

The prompt modules are aptune's own (``AttentionPrompts`` / ``TokenPrompts``),
registered at the top of the model as ``kv_prompts`` / ``token_prompts``: the
same names, shapes and formulas as on the native backbone.  ``transformers``
is imported only when this module is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.videomae.modeling_videomae import VideoMAEEncoder, VideoMAESelfAttention

from aptune.errors import ConfigError
from aptune.interop.inject import Injection, build_prompt_modules
from aptune.methods.prompt_init import layer_prompts
from aptune.models.attention import prompted_attention
from aptune.models.checkpoints import arch_from_hf_config
from aptune.models.vit import IMAGENET_MEAN, IMAGENET_STD, ViTConfig


class PromptedVideoMAESelfAttention(VideoMAESelfAttention):
    """VideoMAE self-attention whose keys and values get the layer's prompts appended."""

    def __init__(self, original: VideoMAESelfAttention, prompts: nn.Module, layer_index: int) -> None:
        nn.Module.__init__(self)  # the projections are taken over, not rebuilt
        for name in (
            "config",
            "num_attention_heads",
            "attention_head_size",
            "all_head_size",
            "dropout_prob",
            "scaling",
            "is_causal",
        ):
            if hasattr(original, name):
                setattr(self, name, getattr(original, name))
        self.query, self.key, self.value = original.query, original.key, original.value
        # transformers < 5 kept the query/value biases as separate parameters
        self.q_bias = getattr(original, "q_bias", None)
        self.v_bias = getattr(original, "v_bias", None)
        self.training = original.training
        self.layer_index = layer_index
        # the prompts are registered once, at the model's top (kv_prompts.*), not per layer
        object.__setattr__(self, "prompts", prompts)

    def _project(self, hidden: Tensor, linear: nn.Linear, bias: Tensor | None) -> Tensor:
        out = linear(hidden) if bias is None else F.linear(hidden, linear.weight, bias)
        batch, tokens, _ = hidden.shape
        return out.view(batch, tokens, -1, self.attention_head_size).transpose(1, 2)

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, None]:
        q = self._project(hidden_states, self.query, self.q_bias)
        k = self._project(hidden_states, self.key, None)
        v = self._project(hidden_states, self.value, self.v_bias)
        extra_kv = layer_prompts(self.prompts, self.layer_index, k, v)
        dropout = self.dropout_prob if self.training else 0.0
        context = prompted_attention(q, k, v, extra_kv, dropout_p=dropout, scale=self.attention_head_size**-0.5)
        batch, tokens = hidden_states.shape[:2]
        context = context.transpose(1, 2).reshape(batch, tokens, -1)
        return context, None  # attention probabilities are not computed on the fused path


class PromptedVideoMAEEncoder(VideoMAEEncoder):
    """The same layers, with prompt tokens inserted before prompted layers and stripped at the end."""

    def __init__(self, original: VideoMAEEncoder, prompts: nn.Module) -> None:
        nn.Module.__init__(self)
        self.config = original.config
        self.layer = original.layer
        self.gradient_checkpointing = getattr(original, "gradient_checkpointing", False)
        self.training = original.training
        object.__setattr__(self, "prompts", prompts)

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> BaseModelOutput:
        num_tokens = hidden_states.shape[1]
        for index, layer in enumerate(self.layer):
            tokens = self.prompts(index, hidden_states.shape[0])
            if tokens is not None:
                video = hidden_states[:, :num_tokens]
                hidden_states = torch.cat((video, tokens.to(video.dtype)), dim=1)
            hidden_states = layer(hidden_states, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states[:, :num_tokens])


def inject_huggingface(model: nn.Module, tuning) -> Injection:
    base = getattr(model, "videomae", model)
    config = base.config
    layers = base.encoder.layer
    if any(not isinstance(layer.attention.attention, VideoMAESelfAttention) for layer in layers):
        raise ConfigError(
            "inject: a VideoMAE layer's attention is not a VideoMAESelfAttention (already modified by another library?)"
        )
    device = next(model.parameters()).device
    kv_prompts, token_prompts = build_prompt_modules(
        tuning,
        depth=len(layers),
        embed_dim=config.hidden_size,
        num_heads=config.num_attention_heads,
        patch_size=_side(config.patch_size),
        device=device,
    )
    if kv_prompts is not None:
        model.kv_prompts = kv_prompts
        for index, layer in enumerate(layers):
            layer.attention.attention = PromptedVideoMAESelfAttention(layer.attention.attention, kv_prompts, index)
    if token_prompts is not None:
        model.token_prompts = token_prompts
        base.encoder = PromptedVideoMAEEncoder(base.encoder, token_prompts)

    name_map = {"kv_prompts.": "kv_prompts.", "token_prompts.": "token_prompts."}
    if isinstance(getattr(model, "classifier", None), nn.Linear):
        name_map["classifier."] = "head."
    if isinstance(getattr(model, "fc_norm", None), nn.LayerNorm):
        name_map["fc_norm."] = "fc_norm."
    return Injection.from_family_module("videomae", tuning, name_map, sys.modules[__name__])


def _side(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def describe_arch(model: nn.Module) -> dict[str, Any]:
    """The native ViTConfig of these weights, so ``model_from_adapter`` can rebuild it."""

    base = getattr(model, "videomae", model)
    arch, _ = arch_from_hf_config(base.config.to_dict(), Path("<transformers VideoMAEConfig>"))
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        arch["num_classes"] = classifier.out_features
    return ViTConfig.from_dict(arch).to_dict()


def describe_preprocess(model: nn.Module) -> dict[str, Any]:

    config = getattr(model, "videomae", model).config
    # VideoMAE's image processors normalise with the ImageNet statistics
    return {
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "num_frames": config.num_frames,
        "input_size": _side(config.image_size),
        "layout": "BTCHW",
    }


def class_names(model: nn.Module) -> list[str] | None:
    classifier = getattr(model, "classifier", None)
    labels = getattr(model.config, "id2label", None)
    if not isinstance(classifier, nn.Linear) or not labels or len(labels) != classifier.out_features:
        return None
    return [str(labels[k]) for k in sorted(labels, key=int)]


def set_class_names(model: nn.Module, names: list[str]) -> None:
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
