"""Adapter files: only the trained tensors, plus what is needed to use them again.

An adapter is one ``.safetensors`` file.  Its header metadata (strings) holds
``format_version``, ``aptune_version``, ``method`` (JSON), ``arch`` (JSON),
``class_names`` (JSON), ``preprocess`` (JSON) and, for adapters of models changed by
``aptune.inject``, ``backbone_family`` (absent = ``videomae``).  Files written by newer
versions are read when their tensors fit; unknown metadata keys are ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from aptune.errors import CheckpointError
from aptune.fileio import save_safetensors_atomically
from aptune.methods import method_from_dict, method_to_dict, trainable_state_dict

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def adapter_metadata(model, preprocess: dict[str, Any] | None = None) -> dict[str, str]:
    from aptune import __version__

    config = model.config
    preprocess = {
        "mean": list(config.mean), "std": list(config.std), "num_frames": config.num_frames,
        "input_size": config.img_size, **(preprocess or {}),
    }
    return {
        "format": "aptune-adapter",
        "format_version": str(FORMAT_VERSION),
        "aptune_version": __version__,
        "method": json.dumps(method_to_dict(model.tuning_method)),
        "arch": json.dumps(config.to_dict()),
        "class_names": json.dumps(getattr(model, "class_names", None)),
        "preprocess": json.dumps(preprocess),
    }


def save_adapter(model, path: str | Path, preprocess: dict[str, Any] | None = None) -> Path:
    """Write the method's trained tensors and metadata atomically to ``path``."""
    path = Path(path)
    injection = _injection(model)
    state = injection.adapter_state() if injection else trainable_state_dict(model)
    metadata = injection.adapter_metadata(preprocess) if injection else adapter_metadata(model, preprocess)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_safetensors_atomically(tensors, path, metadata)
    return path


def read_adapter(path: str | Path) -> tuple[dict, dict[str, Any]]:
    """(tensors, metadata) of an adapter file, metadata JSON decoded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such adapter file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors adapter file ({exc})") from None
    if raw_meta.get("format") != "aptune-adapter":
        raise CheckpointError(f"{path}: not an aptune adapter (no 'format: aptune-adapter' in its header)")
    meta: dict[str, Any] = {}
    for key, value in raw_meta.items():
        try:
            meta[key] = json.loads(value) if key in ("method", "arch", "class_names", "preprocess") else value
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: metadata '{key}' is not valid JSON") from None
    version = int(meta.get("format_version", 1))
    if version > FORMAT_VERSION:
        log.warning("%s: adapter format %d is newer than this aptune reads (%d); trying anyway",
                    path, version, FORMAT_VERSION)
    return tensors, meta


def load_adapter(model, path: str | Path) -> dict[str, Any]:
    """Load an adapter's tensors into a model built with the same method; returns its metadata."""
    tensors, meta = read_adapter(path)
    injection = _injection(model)
    found_family = meta.get("backbone_family", "videomae")
    own_family = injection.family if injection else "videomae"
    if found_family != own_family:
        raise CheckpointError(f"{path}: adapter was trained on a '{found_family}' backbone, this model is '{own_family}'")
    method = meta.get("method") or {}
    own_method = method_to_dict(injection.method if injection else model.tuning_method)
    if method.get("name") != own_method["name"]:
        raise CheckpointError(
            f"{path}: adapter was trained with method '{method.get('name')}', model uses '{own_method['name']}'"
        )
    own = injection.adapter_state() if injection else trainable_state_dict(model)
    for key, value in tensors.items():
        if key not in own:
            raise CheckpointError(f"{path}: tensor '{key}' has no place in this model")
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: '{key}' has shape {tuple(value.shape)} but the model expects {tuple(own[key].shape)}"
            )
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise CheckpointError(f"{path}: adapter lacks '{missing[0]}' that the model trains")
    if injection:
        injection.load_adapter_state(tensors)
        if meta.get("class_names"):
            injection.apply_class_names(meta["class_names"])
        return meta
    model.load_state_dict(tensors, strict=False)
    if meta.get("class_names"):
        model.class_names = list(meta["class_names"])
    return meta


def _injection(model):
    """What ``aptune.inject`` recorded on a transformers/timm model; None for aptune's own."""
    return getattr(model, "aptune_injection", None)


def model_from_adapter(path: str | Path, pretrained: str | Path | None = None, **overrides):
    """Rebuild the tuned model an adapter belongs to: its arch and method, then its tensors."""
    from aptune.factory import create_model
    from aptune.models.vit import ViTConfig

    _, meta = read_adapter(path)
    family = meta.get("backbone_family", "videomae")
    if family != "videomae":
        raise CheckpointError(f"{path}: adapter belongs to a '{family}' model; build that model, "
                              "aptune.inject it and call aptune.load_adapter")
    arch = ViTConfig.from_dict(meta["arch"])
    method = method_from_dict(meta["method"])
    options = method_to_dict(method)
    name = options.pop("name")
    arch_values = {k: v for k, v in arch.to_dict().items() if k not in ("name", "num_classes")}
    arch_values.update(overrides)
    model = create_model(None if arch.name == "custom" else arch.name, num_classes=arch.num_classes,
                         method=name, pretrained=pretrained, class_names=meta.get("class_names"),
                         method_options=options, **arch_values)
    load_adapter(model, path)
    return model
