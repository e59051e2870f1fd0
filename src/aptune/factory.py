"""``create_model``: a backbone preset or checkpoint, a tuning method, frozen accordingly."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from aptune.errors import ConfigError
from aptune.interop.classifier import create_transformers_classifier, transformers_model_type
from aptune.methods import apply_method, build_method
from aptune.models.checkpoints import LoadedCheckpoint, load_checkpoint, load_into_model
from aptune.models.heads import check_readout
from aptune.models.vit import PRESETS, VisionTransformer, ViTConfig, arch_config

log = logging.getLogger(__name__)

# every ViTConfig field but the ones create_model takes as arguments of their own
ARCH_KEYS = {f.name for f in dataclasses.fields(ViTConfig)} - {"num_classes", "name"}


def create_model(
    arch: str | None = None,
    *,
    num_classes: int | None = None,
    method: str = "apt",
    pretrained: str | Path | None = None,
    class_names: list[str] | None = None,
    num_prompts: int | None = None,
    prompt_start: int | None = None,
    prompt_end: int | None = None,
    prompt_dropout: float | None = None,
    reparam: bool | None = None,
    prompt_init: str | None = None,
    method_options: dict[str, Any] | None = None,
    **arch_overrides: Any,
) -> VisionTransformer:
    """Build a VideoMAE ViT, load ``pretrained`` weights and attach a tuning method.

    ``arch`` is a preset name (``vit_small_patch16_224`` ...) and may be omitted
    when ``pretrained`` is a Hugging Face directory or an ``aptune merge`` output,
    whose ``config.json`` or header then gives the architecture.  Prompt options left as None take the method's
    defaults, or the values found in an APT checkpoint.  Everything the method
    does not train is frozen.
    """
    unknown = set(arch_overrides) - ARCH_KEYS
    if unknown:
        raise ConfigError(f"unknown architecture option '{sorted(unknown)[0]}' (valid: {', '.join(sorted(ARCH_KEYS))})")
    options = {
        "num_prompts": num_prompts,
        "prompt_start": prompt_start,
        "prompt_end": prompt_end,
        "prompt_dropout": prompt_dropout,
        "reparam": reparam,
        "prompt_init": prompt_init,
    }
    options = {k: v for k, v in options.items() if v is not None}
    options.update(method_options or {})
    if pretrained is not None and transformers_model_type(pretrained) is not None:
        return _transformers_classifier(arch, pretrained, num_classes, method, class_names, options, arch_overrides)
    if arch is not None and arch not in PRESETS:
        raise ConfigError(f"unknown arch '{arch}' (valid: {', '.join(PRESETS)})")
    checkpoint = load_checkpoint(pretrained) if pretrained is not None else None
    arch_given = arch is not None or {"embed_dim", "depth", "num_heads"} <= set(arch_overrides)
    if not arch_given and (checkpoint is None or checkpoint.arch is None):
        raise ConfigError(
            "arch is required (a preset name, or embed_dim/depth/num_heads overrides) unless "
            "pretrained is a Hugging Face directory with a config.json or an aptune-merged file"
        )

    config = _resolve_arch(arch, checkpoint, arch_overrides, num_classes, class_names)
    model = VisionTransformer(config)
    model.class_names = list(class_names) if class_names else _checkpoint_class_names(checkpoint, config)
    if checkpoint is not None and checkpoint.prompts and method == "apt":
        _fill_prompt_options_from_checkpoint(options, checkpoint)
    apply_method(model, build_method(method, **options))

    if checkpoint is not None:
        load_into_model(model, checkpoint)
        log.info("loaded %s weights from %s", checkpoint.kind, checkpoint.source)
    return model


def _transformers_classifier(arch, folder, num_classes, method, class_names, options, arch_overrides):
    """A Hugging Face folder of another video model (V-JEPA 2, ViViT, ...): the encoder is transformers'."""
    readout = {k: v for k, v in arch_overrides.items() if k in READOUT_KEYS}
    fixed = set(arch_overrides) - set(readout) - {"drop_path_rate"}
    if arch is not None or fixed:
        given = f"arch '{arch}'" if arch is not None else f"'{sorted(fixed)[0]}'"
        raise ConfigError(f"{folder}: a transformers backbone brings its own architecture; {given} cannot change it")
    return create_transformers_classifier(
        folder,
        num_classes=num_classes,
        method=method,
        class_names=class_names,
        method_options=options,
        readout=readout,
    )


# what may change on a transformers backbone: aptune's classifier on top of it
READOUT_KEYS = ("head", "attentive_queries", "attentive_heads", "head_dropout")


def _resolve_arch(arch, checkpoint: LoadedCheckpoint | None, overrides: dict, num_classes, class_names) -> ViTConfig:
    values: dict[str, Any] = {}
    if checkpoint is not None and checkpoint.arch is not None:
        if arch is not None:
            preset = arch_config(arch)
            for key in ("embed_dim", "depth", "num_heads", "patch_size", "tubelet_size"):
                if key in checkpoint.arch and checkpoint.arch[key] != getattr(preset, key):
                    raise ConfigError(
                        f"{checkpoint.source}: the weights have {key}={checkpoint.arch[key]} but arch "
                        f"'{arch}' has {getattr(preset, key)}; pass arch=None to use the file's own"
                    )
        values.update(checkpoint.arch)  # the file's own config (frames, size, eps) beats the preset's
    values.update(overrides)
    if num_classes is None:
        if class_names:
            num_classes = len(class_names)
        elif checkpoint is not None and checkpoint.num_classes is not None:
            num_classes = checkpoint.num_classes
    if class_names and num_classes != len(class_names):
        raise ConfigError(f"num_classes={num_classes} but {len(class_names)} class names were given")
    if num_classes is not None:
        values["num_classes"] = num_classes
    try:
        config = arch_config(arch, **values)
    except (KeyError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    if config.embed_dim % config.num_heads:
        raise ConfigError(f"embed_dim={config.embed_dim} is not divisible by num_heads={config.num_heads}")
    check_readout(config)
    if config.num_frames % config.tubelet_size or config.img_size % config.patch_size:
        raise ConfigError(
            f"num_frames={config.num_frames} must be a multiple of tubelet_size={config.tubelet_size} "
            f"and img_size={config.img_size} of patch_size={config.patch_size}"
        )
    return config


def _checkpoint_class_names(checkpoint: LoadedCheckpoint | None, config: ViTConfig) -> list[str] | None:
    if checkpoint is not None and checkpoint.class_names and len(checkpoint.class_names) == config.num_classes:
        return list(checkpoint.class_names)
    return None


def _fill_prompt_options_from_checkpoint(options: dict, checkpoint: LoadedCheckpoint) -> None:
    found = checkpoint.prompts
    options.setdefault("num_prompts", found["num_prompts"])
    options.setdefault("reparam", found["reparam"])
    start = options.setdefault("prompt_start", 0)
    options.setdefault("prompt_end", start + found["layers"] - 1)
