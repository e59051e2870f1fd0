"""Adapter files: only the trained tensors, plus what is needed to use them again, checked on load.

An adapter is one ``.safetensors`` file.  Its header metadata (strings) holds
``format_version``, ``aptune_version``, ``method`` (JSON), ``arch`` (JSON),
``class_names`` (JSON), ``preprocess`` (JSON), ``backbone_fingerprint`` (format 2 on,
absent for ``full``) and, for adapters of models changed by ``aptune.inject``,
``backbone_family`` (absent = ``videomae``).  Files written by newer versions are
read when their tensors fit; unknown metadata keys and method options are ignored.

Format history: 1 = the first release; 2 adds ``backbone_fingerprint`` (required for
every method but ``full``).  Format 1 files still load, with a warning that their
backbone cannot be checked.

Loading (:func:`load_adapter`, :func:`model_from_adapter`, and
:class:`aptune.MultiAdapterModel`) refuses, in one line naming the option and both
values:

* another backbone family, method, or architecture (width, depth, heads, MLP ratio,
  patch and tubelet size, channels, qkv bias, layer scale, both LayerNorm eps, classes,
  and the head: ``arch`` records ``head``, ``attentive_queries`` and ``attentive_heads``
  for an attentive head only, so an ``arch`` without them is a linear head, as every file
  written before that option);
* another value of any method option that changes what the adapter computes
  (:func:`aptune.methods.options_compared_on_load`): the layer range, the number of
  prompts, ``reparam``, ``lora_rank`` / ``lora_alpha``, ``adapter_dim`` / ``adapter_scale``.
  Training-only options (``prompt_dropout``, ``prompt_init``) are not compared;
* class names that differ from names the model already has;
* a backbone whose fingerprint differs from the one the adapter was trained on, unless
  ``allow_backbone_mismatch=True`` (CLI ``--allow-backbone-mismatch``), which warns instead.

The fingerprint (:func:`backbone_fingerprint`) is a SHA-256 over the frozen backbone's
tensors (aptune's own models: ``patch_embed.*`` and ``blocks.*``, exactly what a
checkpoint or a run's ``backbone.safetensors`` holds; Hugging Face VideoMAE: the same
tensors in aptune's names; timm: every tensor the method does not train), each name,
shape and value as float32.  So it does not depend on the device, nor on a lossless
change of dtype (a bf16 checkpoint loaded into an fp32 model); a model cast to a lower
precision after loading has other values, hence another fingerprint.  The fixed
position table is not covered (it follows from the architecture).  It is computed once
per model and kept on it until a backbone tensor changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from aptune._version import __version__
from aptune.errors import CheckpointError
from aptune.factory import create_model
from aptune.fileio import save_safetensors_atomically
from aptune.methods import (
    method_from_dict,
    method_to_dict,
    method_trains,
    options_compared_on_load,
    trainable_state_dict,
)
from aptune.methods.apt import resolve_layer_range
from aptune.models.checkpoints import BACKBONE_PREFIXES, add_key_biases, check_arch_values, check_class_names
from aptune.models.vit import ATTENTIVE_HEAD_KEYS, PRESETS, ViTConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
FINGERPRINT_KEY = "backbone_fingerprint"
FINGERPRINT_SCHEME = "sha256-f32"
NATIVE_FAMILIES = ("videomae", "timm-vit")
# what an adapter of a transformers video model (V-JEPA 2, ViViT, ...) must share with its model
TRANSFORMERS_ARCH = (
    "model_type",
    "hidden_size",
    "num_attention_heads",
    "depth",
    "trained_modules",
    "num_classes",
    "head",
    "attentive_queries",
    "attentive_heads",
)
JSON_KEYS = ("method", "arch", "class_names", "preprocess")
# architecture fields an adapter must share with the model it loads into (per backbone family)
COMPARED_ARCH = {
    "videomae": (
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_ratio",
        "mlp_hidden_dim",
        "patch_size",
        "tubelet_size",
        "in_chans",
        "qkv_bias",
        "layer_scale_init",
        "layer_norm_eps",
        "fc_norm_eps",
        "num_classes",
        "head",
        "attentive_queries",
        "attentive_heads",
    ),
    "timm-vit": ("architecture", "embed_dim", "depth", "num_heads", "num_prefix_tokens", "global_pool", "num_classes"),
}
# preprocess fields that must be positive integers when present, with upper bounds that keep a
# crafted header from asking predict for millions of views
_PREPROCESS_INTS = {"num_frames": 4096, "sampling_rate": 1 << 16, "short_side_size": 8192, "test_num_segment": 1024}
TEST_CROPS = (1, 3)  # what aptune.data.transforms.crop_positions makes


# ------------------------------------------------------------------ writing
def adapter_metadata(model, preprocess: dict[str, Any] | None = None) -> dict[str, str]:

    config = model.config
    preprocess = {
        "mean": list(config.mean),
        "std": list(config.std),
        "num_frames": config.num_frames,
        "input_size": config.img_size,
        **(preprocess or {}),
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
    method = injection.method if injection else model.tuning_method
    if method.name != "full":  # full fine-tuning trains the backbone: the adapter is the whole model
        metadata[FINGERPRINT_KEY] = backbone_fingerprint(model)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_safetensors_atomically(tensors, path, metadata)
    return path


# --------------------------------------------------------------- fingerprints
def backbone_fingerprint(model) -> str:
    """``sha256-f32:<hex>`` of the frozen backbone's tensors (see the module docstring).

    Cached on the model, keyed by each tensor's storage and version counter, so it is
    computed once per load and again only after a backbone tensor was changed in place
    or replaced.
    """
    injection = _injection(model)
    frozen = injection.frozen_state() if injection else native_backbone_state(model)
    key = tuple((name, t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for name, t in frozen.items())
    cached = getattr(model, "_aptune_fingerprint", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    tensors = injection.backbone_state(frozen) if injection else frozen
    fingerprint = f"{FINGERPRINT_SCHEME}:{digest_tensors(tensors)}"
    object.__setattr__(model, "_aptune_fingerprint", (key, fingerprint))
    return fingerprint


def native_backbone_state(model) -> dict[str, Tensor]:
    """The backbone tensors the fingerprint covers: all of them, less those the model's method
    trains (BitFit's biases), unless it trains the whole backbone (full fine-tuning)."""
    method = getattr(model, "tuning_method", None)
    partly_trained = method is not None and not getattr(method, "trains_backbone", False)
    return {
        k: v
        for k, v in model.state_dict().items()
        if k.startswith(BACKBONE_PREFIXES) and not (partly_trained and method_trains(method, k))
    }


def digest_tensors(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the per-tensor SHA-256s of (name, shape, float32 little-endian bytes), by name.

    Tensors are hashed in a few threads (hashlib and the copies to CPU release the GIL).
    """
    names = sorted(tensors)

    def one(name: str) -> bytes:
        values = tensors[name].detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest = hashlib.sha256(f"{name}\0{tuple(values.shape)}\0".encode())
        array = values.numpy().astype("<f4", copy=False)
        if array.size:
            digest.update(memoryview(array).cast("B"))
        return digest.digest()

    workers = max(1, min(4, os.cpu_count() or 1, len(names)))
    if workers == 1:
        parts = [one(name) for name in names]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(one, names))
    total = hashlib.sha256()
    for part in parts:
        total.update(part)
    return total.hexdigest()


# ------------------------------------------------------------------ reading
def read_adapter(path: str | Path) -> tuple[dict, dict[str, Any]]:
    """(tensors, metadata) of an adapter file, metadata JSON decoded and its types checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such adapter file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a safetensors adapter file ({_first_line(exc)})") from None
    if raw_meta.get("format") != "aptune-adapter":
        raise CheckpointError(f"{path}: not an aptune adapter (no 'format: aptune-adapter' in its header)")
    return tensors, check_header(raw_meta, path)


def check_header(raw_meta: dict[str, str], source: str | Path) -> dict[str, Any]:
    """Decode an adapter header and check every field's type; one CheckpointError per problem."""
    meta: dict[str, Any] = {}
    for key, value in raw_meta.items():
        if key not in JSON_KEYS:
            meta[key] = value
            continue
        try:
            meta[key] = json.loads(value)
        except (ValueError, RecursionError):
            raise CheckpointError(f"{source}: adapter header '{key}' is not valid JSON") from None
    version = meta.get("format_version", "1")
    if not re.fullmatch(r"[0-9]{1,6}", version) or int(version) < 1:
        raise CheckpointError(
            f"{source}: adapter header 'format_version' is {_short(version)}, expected a positive integer"
        )
    meta["format_version"] = version = int(version)
    if version > FORMAT_VERSION:
        log.warning(
            "%s: adapter format %d is newer than this aptune reads (%d); trying anyway", source, version, FORMAT_VERSION
        )
    for key in ("method", "arch"):
        if key not in meta:
            raise CheckpointError(f"{source}: adapter header lacks '{key}'")
    family = meta.get("backbone_family", "videomae")
    families = backbone_families()
    if family not in families:
        raise CheckpointError(
            f"{source}: adapter header 'backbone_family' is {_short(family)}, expected one of: {', '.join(families)}"
        )
    method = method_from_dict(meta["method"], f"{source}: adapter header 'method'")
    _check_arch(meta["arch"], family, source)
    names = meta.get("class_names")
    if names is not None:
        check_class_names(names, f"{source}: adapter header 'class_names'")
        classes = meta["arch"].get("num_classes")
        if family == "videomae" and names and classes is not None and len(names) != classes:
            raise CheckpointError(
                f"{source}: adapter header lists {len(names)} class names but its arch has num_classes={classes}"
            )
    _check_preprocess(meta.get("preprocess"), family, source)
    fingerprint = meta.get(FINGERPRINT_KEY)
    if fingerprint is None and version >= 2 and method.name != "full":
        raise CheckpointError(f"{source}: adapter header (format {version}) lacks '{FINGERPRINT_KEY}'")
    if fingerprint is not None and not re.fullmatch(r"[0-9a-z-]{1,32}:[0-9a-f]{16,128}", fingerprint):
        raise CheckpointError(
            f"{source}: adapter header '{FINGERPRINT_KEY}' is {_short(fingerprint)}, "
            f"expected '{FINGERPRINT_SCHEME}:' and hex digits"
        )
    return meta


def backbone_families() -> tuple[str, ...]:
    """aptune's own ViT (``videomae``), timm ViTs, and every transformers video model aptune prompts."""
    from aptune.interop.transformers_video import FAMILIES  # local: interop imports this module

    return (*NATIVE_FAMILIES, *(name for name in FAMILIES if name not in NATIVE_FAMILIES))


def _check_arch(arch: Any, family: str, source: str | Path) -> None:

    where = f"{source}: adapter header 'arch'"
    if not isinstance(arch, dict):
        raise CheckpointError(f"{where} is {_short(arch)}, expected a JSON object")
    if family == "videomae":
        for key in ("embed_dim", "depth", "num_heads", "num_classes"):
            if key not in arch:
                raise CheckpointError(f"{where} lacks '{key}'")
        check_arch_values(arch, where)
        return
    timm_ints = {k: v for k, v in arch.items() if k in ("embed_dim", "depth", "num_heads")}
    check_arch_values(timm_ints, where)


def _check_preprocess(preprocess: Any, family: str, source: str | Path) -> None:
    where = f"{source}: adapter header 'preprocess'"
    if preprocess is None:
        return
    if not isinstance(preprocess, dict):
        raise CheckpointError(f"{where} is {_short(preprocess)}, expected a JSON object")
    for key, maximum in _PREPROCESS_INTS.items():
        if key in preprocess:
            _positive_int(preprocess[key], where, key, maximum)
    crops = preprocess.get("test_num_crop", 1)
    if isinstance(crops, bool) or crops not in TEST_CROPS:
        raise CheckpointError(f"{where} key 'test_num_crop' is {_short(crops)}, expected 1 or 3")
    size = preprocess.get("input_size")
    if isinstance(size, list) and family != "videomae":  # timm: [channels, height, width]
        for value in size:
            _positive_int(value, where, "input_size", 8192)
    elif size is not None:
        _positive_int(size, where, "input_size", 8192)
    for key in ("mean", "std"):
        value = preprocess.get(key)
        if value is not None and not (
            isinstance(value, list)
            and value
            and all(
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and (key == "mean" or v > 0)
                for v in value
            )
        ):
            wanted = "positive numbers" if key == "std" else "numbers"
            raise CheckpointError(f"{where} key '{key}' is {_short(value)}, expected a list of {wanted}")
    for key in ("sampling", "format", "layout"):
        if key in preprocess and not isinstance(preprocess[key], str):
            raise CheckpointError(f"{where} key '{key}' is {_short(preprocess[key])}, expected a string")
    from aptune.data.sampling import SAMPLINGS  # local: importing aptune.data loads PyAV

    if preprocess.get("sampling", "dense") not in SAMPLINGS:
        raise CheckpointError(
            f"{where} key 'sampling' is {_short(preprocess['sampling'])}, expected one of: {', '.join(SAMPLINGS)}"
        )


def _positive_int(value: Any, where: str, key: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise CheckpointError(f"{where} key '{key}' is {_short(value)}, expected a positive integer up to {maximum:,}")
    return value


# ------------------------------------------------------------------ loading
def load_adapter(model, path: str | Path, *, allow_backbone_mismatch: bool = False) -> dict[str, Any]:
    """Load an adapter's tensors into a model built with the same method; returns its metadata.

    Every stored option that changes what the adapter computes, the architecture, the
    class names and the backbone fingerprint are compared with ``model`` first (see the
    module docstring).  ``allow_backbone_mismatch=True`` turns a fingerprint mismatch into
    a warning: for adapters knowingly moved to other (e.g. re-exported) backbone weights.
    """
    tensors, meta = read_adapter(path)
    load_adapter_tensors(model, tensors, meta, path, allow_backbone_mismatch=allow_backbone_mismatch)
    return meta


def load_adapter_tensors(
    model,
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    source: str | Path,
    *,
    allow_backbone_mismatch: bool = False,
) -> None:
    """:func:`load_adapter` for an adapter already read (:func:`read_adapter`)."""
    injection = _injection(model)
    found_family = meta.get("backbone_family", "videomae")
    own_family = injection.family if injection else "videomae"
    if found_family != own_family:
        raise CheckpointError(
            f"{source}: adapter was trained on a '{found_family}' backbone, this model is '{own_family}'"
        )
    own_method = injection.method if injection else model.tuning_method
    own_arch = own_arch_of(model)
    check_method_matches(meta["method"], own_method, int(own_arch["depth"]), source)
    check_arch_matches(meta["arch"], own_arch, found_family, source)
    own_names = injection.class_names() if injection else getattr(model, "class_names", None)
    if injection and own_names and all(n == f"LABEL_{i}" for i, n in enumerate(own_names)):
        own_names = None  # transformers' placeholder labels name nothing
    check_class_names_match(meta.get("class_names"), own_names, source)
    if not injection:
        add_key_biases(model, tensors, source)  # a 'full' adapter of a backbone with key biases
    own = injection.adapter_state() if injection else trainable_state_dict(model)
    for key, value in tensors.items():
        if key not in own:
            raise CheckpointError(f"{source}: tensor {_short(key)} has no place in this model")
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: '{key}' has shape {tuple(value.shape)} but the model expects {tuple(own[key].shape)}"
            )
        if own[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{source}: '{key}' holds {value.dtype} values, expected floating point")
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise CheckpointError(f"{source}: adapter lacks '{missing[0]}' that the model trains")
    if own_method.name != "full":
        check_backbone_fingerprint(meta, backbone_fingerprint(model), source, allow_backbone_mismatch)
    if injection:
        injection.load_adapter_state(tensors)
        if meta.get("class_names"):
            injection.apply_class_names(meta["class_names"])
        return
    model.load_state_dict(tensors, strict=False)
    if meta.get("class_names"):
        model.class_names = list(meta["class_names"])


def own_arch_of(model) -> dict[str, Any]:
    """The architecture of ``model`` as an adapter header records it."""
    injection = _injection(model)
    if injection:
        return injection.describe_arch(model)
    arch = model.config.to_dict()
    arch["num_classes"] = model.num_classes
    return arch


def check_method_matches(found: dict[str, Any], own, depth: int, source: str | Path) -> None:
    """Refuse an adapter whose method, or any option that changes what it computes, differs."""

    if found.get("name") != own.name:
        raise CheckpointError(
            f"{source}: adapter was trained with method {_short(found.get('name'))}, model uses '{own.name}'"
        )
    stored = method_from_dict(found, f"{source}: adapter header 'method'")
    compared = options_compared_on_load(own)
    if "num_prompts" in compared and stored.num_prompts != own.num_prompts:
        raise CheckpointError(
            f"{source}: adapter was trained with num_prompts={stored.num_prompts}, "
            f"the model has num_prompts={own.num_prompts}"
        )
    if getattr(own, "num_prompts", 1) == 0:
        return  # no prompts: where they would go and how they are scaled does not matter
    for option in compared:
        if option in ("num_prompts", "prompt_end"):
            continue
        if option == "prompt_start":
            ends = (stored.prompt_end, own.prompt_end) if "prompt_end" in compared else (None, None)
            try:
                theirs = resolve_layer_range(stored.prompt_start, ends[0], depth)
            except Exception:
                theirs = (stored.prompt_start, ends[0])
            mine = resolve_layer_range(own.prompt_start, ends[1], depth)
            if "prompt_end" not in compared:
                theirs, mine = theirs[:1], mine[:1]
            if theirs != mine:
                raise CheckpointError(
                    f"{source}: adapter was trained on blocks {_blocks(theirs)} "
                    f"({_range_options(theirs)}), the model's method is on blocks "
                    f"{_blocks(mine)} ({_range_options(mine)})"
                )
            continue
        theirs, mine = getattr(stored, option), getattr(own, option)
        if not _same_value(theirs, mine):
            raise CheckpointError(
                f"{source}: adapter was trained with {option}={theirs!r}, the model has {option}={mine!r}"
            )


def check_arch_matches(found: dict[str, Any], own: dict[str, Any], family: str, source: str | Path) -> None:
    if family == "videomae":  # an arch without 'head' (any file before the option, any linear head) is linear
        found, own = {"head": "linear", **found}, {"head": "linear", **own}
    for key in COMPARED_ARCH.get(family, TRANSFORMERS_ARCH):
        if key == "mlp_hidden_dim":  # absent (every file before the field) or None: from the ratio
            theirs, mine = _mlp_width(found), _mlp_width(own)
            if theirs is None or mine is None:
                continue
        elif key not in found or key not in own:
            continue
        else:
            theirs, mine = found[key], own[key]
        if key == "fc_norm_eps":  # None: the blocks' eps (VideoMAE)
            theirs = found.get("layer_norm_eps") if theirs is None else theirs
            mine = own.get("layer_norm_eps") if mine is None else mine
        if not _same_value(theirs, mine):
            raise CheckpointError(
                f"{source}: adapter was trained with {key}={_short(theirs)}, the model has {key}={_short(mine)}"
            )


def _mlp_width(arch: dict[str, Any]) -> int | None:
    """The MLP width an arch header describes (see ViTConfig.mlp_width); None if it cannot tell."""
    if arch.get("mlp_hidden_dim") is not None:
        return arch["mlp_hidden_dim"]
    if "embed_dim" in arch and "mlp_ratio" in arch:
        return int(arch["embed_dim"] * arch["mlp_ratio"])
    return None


def check_class_names_match(found: list[str] | None, own: list[str] | None, source: str | Path) -> None:
    if not found or not own or list(found) == list(own):
        return
    if len(found) != len(own):
        raise CheckpointError(f"{source}: adapter has {len(found)} class names, the model {len(own)}")
    index = next(i for i, (a, b) in enumerate(zip(found, own)) if a != b)
    raise CheckpointError(
        f"{source}: class {index} is {_short(found[index])} in the adapter but "
        f"{_short(own[index])} in the model (set the model's class_names to None to take "
        "the adapter's)"
    )


def check_backbone_fingerprint(
    meta: dict[str, Any], own: str, source: str | Path, allow_backbone_mismatch: bool
) -> None:
    stored = meta.get(FINGERPRINT_KEY)
    if stored is None:
        log.warning(
            "%s: adapter (format %s) records no backbone fingerprint, so it cannot be checked that "
            "these are the backbone weights it was trained on",
            source,
            meta.get("format_version", 1),
        )
        return
    if stored.split(":")[0] != own.split(":")[0]:
        log.warning(
            "%s: adapter's backbone fingerprint uses scheme %s, which this aptune does not compute; not checked",
            source,
            _short(stored.split(":")[0]),
        )
        return
    if stored == own:
        return
    message = (
        f"{source}: adapter was trained on the backbone with fingerprint {stored}, but this model's backbone has {own}"
    )
    if allow_backbone_mismatch:
        log.warning("%s (allowed by allow_backbone_mismatch)", message)
        return
    raise CheckpointError(
        f"{message}: give the weights it was trained on, or pass allow_backbone_mismatch=True "
        "(--allow-backbone-mismatch) to use it anyway"
    )


def _injection(model):
    """What ``aptune.inject`` recorded on a transformers/timm model; None for aptune's own."""
    return getattr(model, "aptune_injection", None)


def model_from_adapter(
    path: str | Path, pretrained: str | Path | None = None, *, allow_backbone_mismatch: bool = False, **overrides
):
    """Rebuild the tuned model an adapter belongs to: its arch and method, then its tensors.

    ``allow_backbone_mismatch=True`` accepts ``pretrained`` weights other than those the
    adapter was trained on (with a warning); see :func:`load_adapter`.
    """

    tensors, meta = read_adapter(path)
    family = meta.get("backbone_family", "videomae")
    if family != "videomae":
        return _transformers_model_from_adapter(path, tensors, meta, pretrained, allow_backbone_mismatch, overrides)
    arch = ViTConfig.from_dict(meta["arch"])
    _check_head_tensors(tensors, arch, path)  # before building a model of the header's size
    method = method_from_dict(meta["method"])
    options = method_to_dict(method)
    name = options.pop("name")
    arch_values = {k: v for k, v in arch.to_dict().items() if k not in ("name", "num_classes")}
    arch_values.update(overrides)
    model = create_model(
        arch.name if arch.name in PRESETS else None,
        num_classes=arch.num_classes,
        method=name,
        pretrained=pretrained,
        class_names=meta.get("class_names") or None,
        method_options=options,
        **arch_values,
    )
    load_adapter_tensors(model, tensors, meta, path, allow_backbone_mismatch=allow_backbone_mismatch)
    return model


def _transformers_model_from_adapter(path, tensors, meta, pretrained, allow_backbone_mismatch, overrides):
    """An adapter of aptune's classifier on a transformers encoder: that encoder's folder rebuilds it."""
    family, arch = meta["backbone_family"], meta["arch"]
    if not str(arch.get("architecture", "")).startswith("aptune."):
        raise CheckpointError(
            f"{path}: adapter belongs to a '{family}' model of your own ({arch.get('architecture')}); build that "
            "model, aptune.inject it and call aptune.load_adapter"
        )
    if pretrained is None:
        raise CheckpointError(f"{path}: adapter of a transformers '{family}' encoder: pass pretrained=<its folder>")
    method = method_to_dict(method_from_dict(meta["method"]))
    name = method.pop("name")
    readout = {key: arch[key] for key in ATTENTIVE_HEAD_KEYS if arch.get(key) is not None}
    model = create_model(
        None,
        num_classes=arch.get("num_classes"),
        method=name,
        pretrained=pretrained,
        class_names=meta.get("class_names") or None,
        method_options=method,
        **{**readout, **overrides},
    )
    load_adapter_tensors(model, tensors, meta, path, allow_backbone_mismatch=allow_backbone_mismatch)
    return model


def _check_head_tensors(tensors: dict[str, Tensor], arch, source: str | Path) -> None:
    """The classifier in the file must have the header's width and classes."""
    expected = {
        "fc_norm.weight": (arch.embed_dim,),
        "fc_norm.bias": (arch.embed_dim,),
        "head.weight": (arch.num_classes, arch.embed_dim),
        "head.bias": (arch.num_classes,),
    }
    for key, shape in expected.items():
        if key not in tensors:
            raise CheckpointError(f"{source}: adapter lacks '{key}'")
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(
                f"{source}: '{key}' has shape {tuple(tensors[key].shape)} but the header's arch "
                f"(embed_dim={arch.embed_dim}, num_classes={arch.num_classes}) needs {shape}"
            )


# ------------------------------------------------------------------ display
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` safe for a terminal or a log: control and invisible formatting characters
    (ANSI escapes, newlines, bidirectional overrides) written as backslash escapes.

    For display only; files and JSON output keep the exact strings.
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or unicodedata.category(char) == "Zs":
            out.append(char)
        elif char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def _blocks(layers: tuple[int, ...]) -> str:
    return f"{layers[0]}-{layers[1]}" if len(layers) == 2 else f"from {layers[0]}"


def _range_options(layers: tuple) -> str:
    if len(layers) == 2:
        return f"prompt_start={layers[0]}, prompt_end={layers[1]}"
    return f"prompt_start={layers[0]}"


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        return numbers and math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


def _short(value: Any) -> str:
    text = repr(value)  # control characters escaped
    return text if len(text) <= 80 else text[:77] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return printable(text[0][:200]) if text else type(exc).__name__
