"""What is particular to ``transformers`` VideoMAE models: VPT, and describing them as aptune's own.

APT reaches VideoMAE like every other transformers video model, through the attention
interface (:mod:`aptune.interop.interface`).

VPT: ``videomae.encoder`` is replaced by :class:`PromptedVideoMAEEncoder`, an
encoder subclass holding the same ``layer`` list, which inserts the prompt
tokens after the patch tokens before each prompted layer (replacing the
previous layer's prompts) and strips them after the last layer, so the
classifier's mean pooling, or ``bool_masked_pos``, see only video tokens.

The prompt modules are aptune's own (``AttentionPrompts`` / ``TokenPrompts``),
registered at the top of the model as ``kv_prompts`` / ``token_prompts``: the
same names, shapes and formulas as on the native backbone.  The architecture and
preprocessing an adapter records are the native ``ViTConfig`` of the same weights, so an
adapter trained on either loads into the other.  ``transformers`` is imported only when
this module is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.videomae.modeling_videomae import VideoMAEEncoder

# class names live in config.id2label as for every transformers video model
from aptune.interop.transformers_video import class_names, set_class_names  # noqa: F401
from aptune.models.checkpoints import arch_from_hf_config
from aptune.models.vit import IMAGENET_MEAN, IMAGENET_STD, ViTConfig


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


def insert_token_prompts(model: nn.Module, token_prompts: nn.Module) -> None:
    """VPT: the encoder becomes a :class:`PromptedVideoMAEEncoder` over the same layers."""
    base = model.base_model
    model.token_prompts = token_prompts
    base.encoder = PromptedVideoMAEEncoder(base.encoder, token_prompts)


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
