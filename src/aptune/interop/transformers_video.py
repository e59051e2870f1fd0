"""The ``transformers`` video models aptune can prompt, and ``aptune.inject`` for them.

One mechanism serves them all (:mod:`aptune.interop.interface`); what differs per model
is a row of :data:`FAMILIES`: where the video encoder sits, what its forward takes, and
how its config names frames, size and patches.  Adding a model whose attention goes
through transformers' attention interface is one row.

Layers are the encoder's attention modules in forward order.  For VideoPrism, whose
encoder is factorised, that is the spatial layers and then the temporal ones: APT appends
the same prompts to every frame's spatial attention and every position's temporal one.

Which tensors train: the prompts and scales, and everything of the model that is not the
backbone (``model.base_model``): ``classifier``, V-JEPA 2's attentive ``pooler``,
VideoPrism's pooling ``head``, VideoMAE's ``fc_norm``.  Their adapter names are their own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from torch import nn

from aptune.errors import ConfigError
from aptune.interop.inject import Injection, build_prompt_modules
from aptune.interop.interface import interface_attentions, register_interface, route_through_prompts
from aptune.models.vit import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class VideoFamily:
    """How one transformers video model presents its encoder to aptune."""

    model_type: str  # config.model_type
    encoder: str  # dotted path under model.base_model to the module holding the prompted layers ('' = itself)
    pixel_argument: str  # the encoder's keyword for (B, T, C, H, W) clips
    frames_key: str  # config key of the clip length
    size_key: str  # config key of the input height/width
    class_tokens: int = 0  # leading output tokens that are not patches (ViViT's [CLS])
    # the image processor's defaults, as mean/std on [0, 1] pixels (aptune's convention)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    rescale_offset: bool = False  # the processor maps x to x * rescale_factor - 1 (ViViT), not x * rescale_factor


FAMILIES: dict[str, VideoFamily] = {
    family.model_type: family
    for family in (
        VideoFamily("videomae", "", "pixel_values", "num_frames", "image_size"),
        VideoFamily("vjepa2", "encoder", "pixel_values_videos", "frames_per_clip", "crop_size"),
        # ViViT's processor maps x/255 to 2x-1, then normalises with mean 0.5, std 0.5: 4x-3
        VideoFamily("vivit", "", "pixel_values", "num_frames", "image_size", 1, (0.75,) * 3, (0.25,) * 3, True),
        # VideoPrism's processor only rescales to [0, 1]
        VideoFamily(
            "videoprism_vision_model", "", "pixel_values_videos", "num_frames", "image_size", 0, (0.0,) * 3, (1.0,) * 3
        ),
    )
}


def is_transformers_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "base_model")


def family_of(model: nn.Module) -> VideoFamily:
    """The model's row of :data:`FAMILIES`, or one line saying why it has none."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        interface_attentions(model, type(model).__name__)  # a model that bypasses the interface says so
        raise ConfigError(
            f"cannot inject into {type(model).__name__} (model_type '{model_type}'): supported transformers "
            f"video models are {', '.join(FAMILIES)}"
        )
    return family


def encoder_of(model: nn.Module, family: VideoFamily) -> nn.Module:
    module = model.base_model
    for part in filter(None, family.encoder.split(".")):
        module = getattr(module, part)
    return module


def inject_transformers(model: nn.Module, tuning) -> Injection:
    """Add ``tuning`` (APT, VPT on VideoMAE, or the linear probe) to a transformers video model in place."""
    family = family_of(model)
    is_videomae = family.model_type == "videomae"
    if tuning.name.startswith("vpt") and not is_videomae:
        raise ConfigError(
            f"inject: {tuning.name} on {type(model).__name__} is not supported (VPT inserts tokens, "
            "which needs the encoder's own loop: VideoMAE only); use method='apt'"
        )
    attentions = interface_attentions(encoder_of(model, family), type(model).__name__)
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_prompts, token_prompts = build_prompt_modules(
        tuning,
        depth=len(attentions),
        embed_dim=heads * head_dim,
        num_heads=heads,
        patch_size=spatial_patch(config),
        device=next(model.parameters()).device,
    )
    if tuning.name == "apt":
        # every layer goes through the interface (prompts are appended only in the range):
        # with zero prompts the model is exactly itself, which the tests check
        register_interface()
        if kv_prompts is not None:
            model.kv_prompts = kv_prompts
        for index, attention in enumerate(attentions):
            route_through_prompts(attention, kv_prompts, index)
    describer = sys.modules[__name__]
    if is_videomae:
        from aptune.interop import hf  # local: it imports transformers' VideoMAE classes

        if token_prompts is not None:
            hf.insert_token_prompts(model, token_prompts)
        describer = hf  # VideoMAE describes itself as aptune's own backbone: its adapters load into either
    injection = Injection.from_family_module(family.model_type, tuning, name_map(model), describer)
    injection.fingerprint_prefix = encoder_prefix(model, family)
    return injection


def encoder_prefix(model: nn.Module, family: VideoFamily) -> str:
    """The state-dict prefix of the video encoder inside ``model`` (``vjepa2.encoder.`` ...)."""
    base = model.base_model
    parts = [] if base is model else [model.base_model_prefix]
    parts += [part for part in family.encoder.split(".") if part]
    return "".join(f"{part}." for part in parts)


def name_map(model: nn.Module) -> dict[str, str]:
    """Trained prefixes -> adapter prefixes: the prompts, and every module outside the backbone."""
    names = {"kv_prompts.": "kv_prompts.", "token_prompts.": "token_prompts."}
    base = model.base_model
    if base is not model:
        for child_name, child in model.named_children():
            if child is not base and child_name not in ("kv_prompts", "token_prompts"):
                names[f"{child_name}."] = f"{child_name}."
    if model.config.model_type == "videomae" and "classifier." in names:
        names["classifier."] = "head."  # shared with aptune's own backbone (interop/hf.py)
    return names


def spatial_patch(config) -> int:
    patch = getattr(config, "patch_size", None)
    if patch is None:
        patch = config.tubelet_size[1]  # ViViT, VideoPrism: [time, height, width]
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch)


def describe_arch(model: nn.Module) -> dict[str, Any]:
    """What an adapter must share with the model it loads into."""
    family = family_of(model)
    config = model.config
    heads = [name for name in name_map(model) if name not in ("kv_prompts.", "token_prompts.")]
    classifier = getattr(model, "classifier", None)
    return {
        "model_type": family.model_type,
        "architecture": type(model).__name__,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "depth": len(interface_attentions(encoder_of(model, family), type(model).__name__)),
        "trained_modules": [name.rstrip(".") for name in heads],
        "num_classes": classifier.out_features if isinstance(classifier, nn.Linear) else None,
    }


def describe_preprocess(model: nn.Module) -> dict[str, Any]:
    family = family_of(model)
    config = model.config
    size = getattr(config, family.size_key)
    return {
        "mean": list(family.mean),
        "std": list(family.std),
        "num_frames": int(getattr(config, family.frames_key)),
        "input_size": int(size[0] if isinstance(size, (list, tuple)) else size),
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
