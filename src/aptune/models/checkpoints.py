"""Reading pretrained weights safely, in every layout users arrive with.

Accepted without any conversion step:

1. original VideoMAE pre-training checkpoints (``.pth``; top-level ``model`` or
   ``module``; ``encoder.`` prefix; decoder, ``mask_token``, ``encoder_to_decoder``
   and ``encoder.norm`` ignored);
2. VideoMAE fine-tuned checkpoints (same names as our backbone);
3. VideoMAE V2 checkpoints (Wang et al., CVPR 2023): the pre-trained ViT-g/14 as in 1,
   the fine-tuned ViT-g/14 and the distilled ViT-S/B as in 2.  The official V2 code keeps
   VideoMAE's names (fused ``qkv`` with ``q_bias``/``v_bias``, ``fc_norm`` after mean
   pooling, no class token, a fixed sin-cos table that is not saved, a learned
   ``pos_embed`` only with its ``use_learnable_pos_emb`` option, which loads as any table
   does); its fine-tuning loader also strips ``backbone.`` and ``_orig_mod.`` prefixes, and
   so does this one.  ViT-g's 14-pixel patches and 6144-wide MLP are checked against the
   model (a one-line error names the file and key), and a classifier trained without
   mean pooling (V2's ``--use_cls``: ``norm`` and no ``fc_norm``) is refused rather than
   computed differently;
4. checkpoints of the official APT code (``prompt_embeddings_k/v`` of shape
   (layers, P, head_dim), ``prompt_scale`` (layers, 2, P), ``head_norm`` = ``fc_norm``);
5. Hugging Face ``transformers`` VideoMAE directories (``config.json`` plus
   ``model.safetensors``, sharded safetensors or ``pytorch_model.bin``), read
   directly: ``transformers`` is not needed.

Pickles are only ever opened with ``weights_only=True``.  Every failure is a
:class:`CheckpointError` naming the file and, where there is one, the key: a state
dict with non-string keys, a ``config.json`` that is not UTF-8 JSON or not an
object, a size that is not a positive integer, an ``id2label`` that is not a map
of class indices to names, an index whose shards are missing, and so on.

A key projection with a non-zero bias (possible in Hugging Face checkpoints) is
kept as ``blocks.N.attn.k_bias``: with prompts it is not exact to drop it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aptune.errors import CheckpointError
from aptune.models.heads import HEADS, MAX_QUERIES
from aptune.models.vit import ATTENTIVE_HEAD_KEYS, ViTConfig, resize_position_table

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("model", "module", "state_dict", "model_state")
PRETRAIN_IGNORED = ("decoder.", "mask_token", "encoder_to_decoder.", "norm.", "decoder_pos_embed")
BACKBONE_PREFIXES = ("patch_embed.", "blocks.")


@dataclass
class LoadedCheckpoint:
    """A state dict in aptune's names plus what the file told us about itself."""

    state_dict: dict[str, Tensor]
    source: str
    kind: str
    arch: dict[str, Any] | None = None  # from a Hugging Face config.json or an aptune-merged header
    class_names: list[str] | None = None
    prompts: dict[str, Any] | None = None  # APT prompt shapes found in the file
    ignored: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int | None:
        head = self.state_dict.get("head.weight")
        return None if head is None else int(head.shape[0])


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read any supported checkpoint file or Hugging Face directory."""
    path = Path(path)
    if path.is_dir():
        return _load_huggingface_dir(path)
    raw = read_tensor_file(path)
    state_dict, kind, ignored, prompts = convert_state_dict(raw, str(path))
    arch, class_names = _merged_file_header(path) if path.suffix == ".safetensors" else (None, None)
    return LoadedCheckpoint(
        state_dict, str(path), kind, arch=arch, class_names=class_names, prompts=prompts, ignored=ignored
    )


def brings_own_architecture(path: str | Path) -> bool:
    """True for checkpoints that describe their own shape: a Hugging Face folder
    (config.json) or an ``aptune merge`` output (its header)."""
    path = Path(path)
    if path.is_dir():
        return True
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == "aptune-merged"
    except (SafetensorError, OSError):
        return False  # load_checkpoint reports the broken file


def _merged_file_header(path: Path) -> tuple[dict[str, Any] | None, list[str] | None]:
    """Architecture and class names from the header of an ``aptune merge`` output, so such a
    file rebuilds its own model; (None, None) for any other safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if header.get("format") != "aptune-merged":
        return None, None
    arch = _header_json(header, "arch", path, dict, required=True)
    class_names = _header_json(header, "class_names", path, list, required=False)
    # the shape only: the head's size comes from the weights, the name is a label, and
    # regularisation (drop path, dropout, head init) and the readout belong to whoever trains next
    shape = {f.name for f in dataclasses.fields(ViTConfig)} - {
        "num_classes",
        "name",
        "drop_path_rate",
        "head_dropout",
        "head_init_scale",
        *ATTENTIVE_HEAD_KEYS,
    }
    arch = check_arch_values({k: v for k, v in arch.items() if k in shape}, f"{path}: aptune-merged header 'arch'")
    if class_names is not None:
        check_class_names(class_names, f"{path}: aptune-merged header 'class_names'")
    return arch, class_names


def _header_json(header: dict[str, str], key: str, path: Path, kind: type, required: bool):
    if key not in header:
        if required:
            raise CheckpointError(f"{path}: aptune-merged header lacks '{key}'")
        return None
    try:
        value = json.loads(header[key])
    except ValueError:
        raise CheckpointError(f"{path}: aptune-merged header '{key}' is not valid JSON") from None
    if not (isinstance(value, kind) or (value is None and not required)):
        raise CheckpointError(f"{path}: aptune-merged header '{key}' must be a JSON {kind.__name__}")
    return value


# Upper bounds keep a crafted header or config from asking for a model that cannot be built
# (a terabyte of weights) before any tensor is read; every real ViT is far inside them.
ARCH_LIMITS = {
    "embed_dim": 16384,
    "depth": 256,
    "num_heads": 1024,
    "patch_size": 1024,
    "tubelet_size": 1024,
    "num_frames": 4096,
    "img_size": 8192,
    "in_chans": 64,
    "num_classes": 1_000_000,
    "attentive_queries": MAX_QUERIES,
}


def check_arch_values(arch: dict[str, Any], where: str) -> dict[str, Any]:
    """Check the types and ranges of a :class:`ViTConfig`-shaped dict; unknown keys pass.

    ``where`` starts every message ("FILE: adapter header 'arch'").  Returns ``arch``.
    """
    for key, value in arch.items():
        if key in ARCH_LIMITS:
            _check_int(value, where, key, 1, ARCH_LIMITS[key])
        elif key == "mlp_hidden_dim" and value is not None:
            _check_int(value, where, key, 1, 64 * ARCH_LIMITS["embed_dim"])
        elif key in ("mlp_ratio", "layer_norm_eps"):
            _check_number(value, where, key, positive=True, upper=64.0 if key == "mlp_ratio" else 1.0)
        elif key == "fc_norm_eps" and value is not None:
            _check_number(value, where, key, positive=True, upper=1.0)
        elif key == "layer_scale_init":
            _check_number(value, where, key, minimum=0.0)
        elif key in ("drop_path_rate", "head_dropout"):
            _check_number(value, where, key, minimum=0.0, below=1.0)
        elif key == "head_init_scale":
            _check_number(value, where, key)
        elif key == "qkv_bias" and not isinstance(value, bool):
            raise CheckpointError(f"{where} key '{key}' is {value!r}, expected true or false")
        elif key in ("mean", "std"):
            _check_triple(value, where, key, positive=key == "std")
        elif key == "name" and not isinstance(value, str):
            raise CheckpointError(f"{where} key 'name' is {value!r}, expected a string")
        elif key == "head" and value not in HEADS:
            raise CheckpointError(f"{where} key 'head' is {value!r}, expected one of: {', '.join(HEADS)}")
        elif key == "attentive_heads" and value is not None:
            _check_int(value, where, key, 1, ARCH_LIMITS["num_heads"])
    if "embed_dim" in arch and "num_heads" in arch and arch["embed_dim"] % arch["num_heads"]:
        raise CheckpointError(
            f"{where}: embed_dim={arch['embed_dim']} is not divisible by num_heads={arch['num_heads']}"
        )
    if "embed_dim" in arch and arch.get("attentive_heads") and arch["embed_dim"] % arch["attentive_heads"]:
        raise CheckpointError(
            f"{where}: embed_dim={arch['embed_dim']} is not divisible by attentive_heads={arch['attentive_heads']}"
        )
    for size, part in (("num_frames", "tubelet_size"), ("img_size", "patch_size")):
        if size in arch and part in arch and arch[size] % arch[part]:
            raise CheckpointError(f"{where}: {size}={arch[size]} is not a multiple of {part}={arch[part]}")
    return arch


def check_class_names(names: Any, where: str) -> list[str]:
    """A JSON list of strings (any characters: callers escape them for terminals)."""
    if not isinstance(names, list):
        raise CheckpointError(f"{where} is a {_json_type(names)}, expected a list of class names")
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise CheckpointError(f"{where}: entry {index} is {name!r}, expected a string")
    return names


def _check_int(value: Any, where: str, key: str, minimum: int, maximum: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if maximum is not None:
            wanted += f" up to {maximum:,}"
        raise CheckpointError(f"{where} key '{key}' is {_short(value)}, expected {wanted}")
    return value


def _check_number(
    value: Any,
    where: str,
    key: str,
    *,
    positive: bool = False,
    minimum: float | None = None,
    below: float | None = None,
    upper: float | None = None,
) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and not (positive and value <= 0) and not (minimum is not None and value < minimum)
    ok = ok and not (below is not None and value >= below) and not (upper is not None and value > upper)
    if not ok:
        if below is not None:
            wanted = f"a number in [{minimum:g}, {below:g})"
        elif positive:
            wanted = "a positive number" + (f" up to {upper:g}" if upper is not None else "")
        elif minimum is not None:
            wanted = f"a number >= {minimum:g}"
        else:
            wanted = "a finite number"
        raise CheckpointError(f"{where} key '{key}' is {_short(value)}, expected {wanted}")
    return float(value)


def _check_triple(value: Any, where: str, key: str, positive: bool) -> None:
    numbers = (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
            for v in value
        )
    )
    if not numbers:
        wanted = "3 positive numbers" if positive else "3 numbers"
        raise CheckpointError(f"{where} key '{key}' is {_short(value)}, expected a list of {wanted}")


def _short(value: Any) -> str:
    """repr (control characters escaped), cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_type(value: Any) -> str:
    names = {
        dict: "JSON object",
        list: "JSON list",
        str: "string",
        bool: "boolean",
        type(None): "null",
        int: "number",
        float: "number",
    }
    return names.get(type(value), type(value).__name__)


# ------------------------------------------------------------------ raw files
def read_tensor_file(path: Path) -> dict[str, Tensor]:
    """A flat {name: tensor} dict from a .safetensors or a PyTorch pickle, read safely."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a valid safetensors file ({_first_line(exc)})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True ({_first_line(exc)})"
        ) from None
    return _flatten_tensors(obj, path)


def _flatten_tensors(obj: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict) and any(isinstance(v, Tensor) for v in obj[key].values()):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors (keys: {', '.join(_short(k) for k in list(obj)[:5])})")
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise CheckpointError(
                f"{path}: state-dict key {_short(key)} is a {type(key).__name__}, expected a string (a tensor name)"
            )
        if value.layout != torch.strided or value.is_quantized:
            raise CheckpointError(
                f"{path}: '{key}' is a {value.layout} / quantized tensor; only dense "
                "floating-point weights can be loaded"
            )
    return tensors


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------- layout conversion
def convert_state_dict(raw: dict[str, Tensor], source: str):
    """Detect the layout and rename to aptune's keys.

    Returns (state_dict, kind, ignored_keys, prompts_info).
    """
    state = _strip_backbone_prefix(_strip_common_prefix(raw, ("module.", "_orig_mod.")))
    if any(".attention.attention." in k or k.startswith(("videomae.", "embeddings.")) for k in state):
        state, ignored = convert_huggingface(state, source)
        return state, "huggingface", ignored, None
    if any(k.startswith("encoder.") for k in state):
        state, ignored = _convert_videomae_pretrain(state)
        return state, "videomae-pretrain", ignored, None
    if "prompt_embeddings_k" in state:
        state, prompts = _convert_official_apt(state, source)
        return state, "apt-official", [], prompts
    prompts = None
    if "kv_prompts.keys" in state:
        keys = state["kv_prompts.keys"]
        prompts = {"layers": keys.shape[0], "num_prompts": keys.shape[1], "reparam": "kv_prompts.scales" in state}
    return dict(state), "videomae", [], prompts


def _strip_common_prefix(state: dict[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _strip_backbone_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``backbone.blocks.0...`` -> ``blocks.0...``, as VideoMAE V2's fine-tuning loader reads such
    files: key by key, others kept (and reported if unknown); not when the file has plain names."""
    if any(k.startswith(BACKBONE_PREFIXES) for k in state) or not any(k.startswith("backbone.") for k in state):
        return state
    return {k.removeprefix("backbone."): v for k, v in state.items()}


def _convert_videomae_pretrain(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    converted, ignored = {}, []
    for key, value in state.items():
        if not key.startswith("encoder."):
            ignored.append(key)  # decoder, mask token, encoder_to_decoder
            continue
        name = key[len("encoder.") :]
        if name.startswith(PRETRAIN_IGNORED) or name.startswith("head."):
            ignored.append(key)  # the encoder's final norm and (identity) head
            continue
        converted[name] = value
    return converted, ignored


def _convert_official_apt(state: dict[str, Tensor], source: str):
    converted = {}
    for key, value in state.items():
        if key == "prompt_embeddings_k":
            converted["kv_prompts.keys"] = value
        elif key == "prompt_embeddings_v":
            converted["kv_prompts.values"] = value
        elif key == "prompt_scale":
            converted["kv_prompts.scales"] = value
        elif key.startswith("head_norm."):
            converted["fc_norm." + key[len("head_norm.") :]] = value
        else:
            converted[key] = value
    keys, values = converted["kv_prompts.keys"], converted.get("kv_prompts.values")
    if values is None:
        raise CheckpointError(f"{source}: has 'prompt_embeddings_k' but no 'prompt_embeddings_v'")
    if keys.ndim != 3 or values.shape != keys.shape or 0 in keys.shape:
        raise CheckpointError(
            f"{source}: 'prompt_embeddings_k'/'prompt_embeddings_v' must both be (layers, P, head_dim), "
            f"found {tuple(keys.shape)} and {tuple(values.shape)}"
        )
    scales = converted.get("kv_prompts.scales")
    if scales is not None and tuple(scales.shape) != (keys.shape[0], 2, keys.shape[1]):
        raise CheckpointError(
            f"{source}: 'prompt_scale' has shape {tuple(scales.shape)}, expected "
            f"(layers, 2, P) = {(keys.shape[0], 2, keys.shape[1])}"
        )
    prompts = {"layers": keys.shape[0], "num_prompts": keys.shape[1], "reparam": scales is not None}
    return converted, prompts


_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_LAYER_NAMES = {
    "attention.attention.q_bias": "attn.q_bias",
    "attention.attention.v_bias": "attn.v_bias",
    "attention.attention.query.bias": "attn.q_bias",
    "attention.attention.value.bias": "attn.v_bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
}
_HF_TOP_NAMES = {
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.position_embeddings": "pos_embed",
    "fc_norm.weight": "fc_norm.weight",
    "fc_norm.bias": "fc_norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
_HF_IGNORED = ("decoder.", "encoder_to_decoder.", "mask_token", "layernorm.")


def convert_huggingface(state: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a transformers VideoMAE state dict to the original VideoMAE names."""
    converted: dict[str, Tensor] = {}
    ignored: list[str] = []
    qkv: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        name = key[len("videomae.") :] if key.startswith("videomae.") else key
        match = _HF_LAYER.match(name)
        if match:
            index, rest = int(match.group(1)), match.group(2)
            if rest in (
                "attention.attention.query.weight",
                "attention.attention.key.weight",
                "attention.attention.value.weight",
            ):
                qkv.setdefault(index, {})[rest.split(".")[2]] = value
            elif rest == "attention.attention.key.bias":
                if bool((value == 0).all()):
                    ignored.append(key)  # a zero bias is no bias, with or without prompts
                else:
                    # softmax ignores a bias shared by the patch keys, but not next to prompt keys
                    converted[f"blocks.{index}.attn.k_bias"] = value
            elif rest in _HF_LAYER_NAMES:
                converted[f"blocks.{index}.{_HF_LAYER_NAMES[rest]}"] = value
            else:
                converted[key] = value  # reported as unexpected by the loader
        elif name in _HF_TOP_NAMES:
            converted[_HF_TOP_NAMES[name]] = value
        elif name.startswith(_HF_IGNORED):
            ignored.append(key)
        else:
            converted[key] = value
    for index, parts in sorted(qkv.items()):
        missing = [p for p in ("query", "key", "value") if p not in parts]
        if missing:
            raise CheckpointError(f"{source}: layer {index} has no attention.attention.{missing[0]}.weight")
        shapes = {tuple(parts[p].shape) for p in ("query", "key", "value")}
        if len(shapes) != 1 or parts["query"].ndim != 2:
            found = ", ".join(f"{p} {tuple(parts[p].shape)}" for p in ("query", "key", "value"))
            raise CheckpointError(
                f"{source}: layer {index}'s query/key/value weights must have one (hidden, hidden) shape, found {found}"
            )
        converted[f"blocks.{index}.attn.qkv.weight"] = torch.cat((parts["query"], parts["key"], parts["value"]), dim=0)
    return converted, ignored


# ------------------------------------------------------- Hugging Face folders
def _load_huggingface_dir(folder: Path) -> LoadedCheckpoint:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: a directory checkpoint needs a config.json (Hugging Face layout)")
    config = read_json_object(config_path)
    arch, class_names = arch_from_hf_config(config, config_path)
    raw = _read_hf_weights(folder)
    state, ignored = convert_huggingface(raw, str(folder))
    if "head.weight" not in state:
        class_names = None  # a bare VideoMAEModel: its labels describe nothing we load
    elif class_names is not None and len(class_names) != state["head.weight"].shape[0]:
        raise CheckpointError(
            f"{config_path}: 'id2label' names {len(class_names)} classes but the classifier "
            f"has {state['head.weight'].shape[0]}"
        )
    return LoadedCheckpoint(state, str(folder), "huggingface", arch=arch, class_names=class_names, ignored=ignored)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object, with one-line errors for every way it can be broken."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: is not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON (line {exc.lineno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # a number too long to convert, nesting too deep
        raise CheckpointError(f"{path}: invalid JSON ({_first_line(exc)})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: holds a {_json_type(value)}, expected a JSON object")
    return value


def arch_from_hf_config(config: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str] | None]:
    """Our architecture fields from a transformers VideoMAEConfig dict, every value checked."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: holds a {_json_type(config)}, expected a JSON object")
    model_type = config.get("model_type")
    if model_type != "videomae":
        raise CheckpointError(f"{path}: model_type is {_short(model_type)}, expected 'videomae'")
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: hidden_act {_short(config['hidden_act'])} is not supported (only 'gelu')")
    pooling = config.get("use_mean_pooling", True)
    if not isinstance(pooling, bool):
        raise CheckpointError(f"{path}: key 'use_mean_pooling' is {_short(pooling)}, expected true or false")
    if not pooling:
        raise CheckpointError(f"{path}: use_mean_pooling=false is not supported (VideoMAE classifiers pool by mean)")
    where = str(path)
    for required in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if required not in config:
            raise CheckpointError(f"{path}: missing key '{required}'")
    hidden = _check_int(config["hidden_size"], where, "hidden_size", 1, ARCH_LIMITS["embed_dim"])
    intermediate = _check_int(config["intermediate_size"], where, "intermediate_size", 1, 64 * hidden)
    eps = config.get("layer_norm_eps", 1e-12)
    bias = config.get("qv_bias", config.get("qkv_bias", True))
    if not isinstance(bias, bool):
        raise CheckpointError(f"{path}: key 'qv_bias' is {_short(bias)}, expected true or false")
    arch = {
        "embed_dim": hidden,
        "depth": _check_int(config["num_hidden_layers"], where, "num_hidden_layers", 1, ARCH_LIMITS["depth"]),
        "num_heads": _check_int(
            config["num_attention_heads"], where, "num_attention_heads", 1, ARCH_LIMITS["num_heads"]
        ),
        "mlp_ratio": intermediate / hidden,
        "img_size": _hf_side(config, "image_size", 224, where, ARCH_LIMITS["img_size"]),
        "patch_size": _hf_side(config, "patch_size", 16, where, ARCH_LIMITS["patch_size"]),
        "in_chans": _check_int(config.get("num_channels", 3), where, "num_channels", 1, ARCH_LIMITS["in_chans"]),
        "num_frames": _check_int(config.get("num_frames", 16), where, "num_frames", 1, ARCH_LIMITS["num_frames"]),
        "tubelet_size": _check_int(
            config.get("tubelet_size", 2), where, "tubelet_size", 1, ARCH_LIMITS["tubelet_size"]
        ),
        "layer_norm_eps": _check_number(eps, where, "layer_norm_eps", positive=True, upper=1.0),
        "fc_norm_eps": 1e-5,  # transformers builds fc_norm with LayerNorm's default eps
        "qkv_bias": bias,
    }
    if int(hidden * arch["mlp_ratio"]) != intermediate:  # e.g. 44 * (98 / 44) is 97.99...
        arch["mlp_hidden_dim"] = intermediate
    if hidden % arch["num_heads"]:
        raise CheckpointError(
            f"{path}: hidden_size={hidden} is not divisible by num_attention_heads={arch['num_heads']}"
        )
    for size, part, size_key, part_key in (
        ("num_frames", "tubelet_size", "num_frames", "tubelet_size"),
        ("img_size", "patch_size", "image_size", "patch_size"),
    ):
        if arch[size] % arch[part]:
            raise CheckpointError(f"{path}: {size_key}={arch[size]} is not a multiple of {part_key}={arch[part]}")
    class_names = _hf_class_names(config.get("id2label"), path)
    if class_names:
        arch["num_classes"] = len(class_names)
    return arch, class_names


def _hf_side(config: dict[str, Any], key: str, default: int, where: str, maximum: int) -> int:
    """image_size / patch_size: an integer, or a [height, width] pair of equal integers."""
    value = config.get(key, default)
    if isinstance(value, (list, tuple)) and value:
        sides = {_check_int(v, where, key, 1, maximum) for v in value}
        if len(sides) != 1 or len(value) != 2:
            raise CheckpointError(f"{where} key '{key}' is {_short(value)}: only square sizes are supported")
        return sides.pop()
    return _check_int(value, where, key, 1, maximum)


def _hf_class_names(labels: Any, path: Path) -> list[str] | None:
    """``id2label`` as a list: keys must be the class indices 0..n-1 (as JSON strings), values names."""
    if labels is None or labels == {}:
        return None
    if not isinstance(labels, dict):
        raise CheckpointError(
            f"{path}: key 'id2label' is a {_json_type(labels)}, expected a JSON object mapping class indices to names"
        )
    indices = {}
    for key, name in labels.items():
        text = str(key)
        if isinstance(key, bool) or not text.isdigit() or not text.isascii() or len(text) > 9:
            raise CheckpointError(f"{path}: 'id2label' key {_short(key)} is not a class index (0, 1, ...)")
        if not isinstance(name, str):
            raise CheckpointError(f"{path}: 'id2label' entry {_short(key)} is {_short(name)}, expected a string")
        if int(text) in indices:
            raise CheckpointError(f"{path}: 'id2label' lists class {int(text)} twice")
        indices[int(text)] = name
    if sorted(indices) != list(range(len(indices))):
        gap = next(i for i in range(len(indices) + 1) if i not in indices)
        raise CheckpointError(f"{path}: 'id2label' has no class {gap} (indices must be 0..{len(indices) - 1})")
    return [indices[i] for i in range(len(indices))]


def _read_hf_weights(folder: Path) -> dict[str, Tensor]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_tensor_file(folder / name)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = folder / index_name
        if index_path.is_file():
            return _read_sharded(folder, index_path)
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors, pytorch_model.bin or a sharded index)"
    )


def _read_sharded(folder: Path, index_path: Path) -> dict[str, Tensor]:
    """The shards an index names, each checked to exist inside ``folder`` and to hold its tensors."""
    weight_map = read_json_object(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{index_path}: key 'weight_map' is {_short(weight_map)}, expected a non-empty "
            "JSON object mapping tensor names to shard files"
        )
    shards: dict[str, list[str]] = {}
    root = folder.resolve()
    for tensor_name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(
                f"{index_path}: weight_map[{_short(tensor_name)}] is {_short(shard)}, expected a shard file name"
            )
        target = (folder / shard).resolve()
        if Path(shard).is_absolute() or (target != root and root not in target.parents):
            raise CheckpointError(
                f"{index_path}: weight_map[{_short(tensor_name)}] names {_short(shard)}, "
                "which is outside the checkpoint folder"
            )
        if not target.is_file():
            raise CheckpointError(
                f"{index_path}: weight_map[{_short(tensor_name)}] names shard {_short(shard)}, which does not exist"
            )
        shards.setdefault(shard, []).append(tensor_name)
    state: dict[str, Tensor] = {}
    for shard, names in sorted(shards.items()):
        tensors = read_tensor_file(folder / shard)
        absent = [n for n in names if n not in tensors]
        if absent:
            raise CheckpointError(
                f"{index_path}: weight_map puts {_short(absent[0])} in shard {_short(shard)}, which does not hold it"
            )
        state.update(tensors)
    return state


# ------------------------------------------------------------ into the model
def load_into_model(model, checkpoint: LoadedCheckpoint) -> dict[str, list[str]]:
    """Copy a checkpoint's tensors into ``model``; returns {'missing': ..., 'unexpected': ...}.

    A classifier of another size is dropped (a new task); any other shape
    mismatch, or a missing backbone tensor, is an error naming the key.
    """
    state = dict(checkpoint.state_dict)
    source = checkpoint.source
    own = model.state_dict()
    head = state.get("head.weight")
    if head is not None and head.shape != own["head.weight"].shape:
        log.info(
            "%s: classifier has %d classes, model has %d: starting a new head",
            source,
            head.shape[0],
            own["head.weight"].shape[0],
        )
        state.pop("head.weight")
        state.pop("head.bias", None)
    check_videomae_layout(model.config, state, source)
    pos_embed = state.pop("pos_embed", None)
    if pos_embed is not None:
        _load_position_table(model, pos_embed, source)
    add_key_biases(model, state, source)
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: '{key}' has shape {tuple(value.shape)} in the file but "
                f"{tuple(own[key].shape)} in the model (check arch and method options)"
            )
        if key in own and own[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{source}: '{key}' holds {value.dtype} values, expected floating point")
    result = model.load_state_dict(state, strict=False)
    missing_backbone = [k for k in result.missing_keys if k.startswith(BACKBONE_PREFIXES)]
    if missing_backbone:
        raise CheckpointError(
            f"{source}: missing '{missing_backbone[0]}'"
            + (f" and {len(missing_backbone) - 1} more backbone tensors" if len(missing_backbone) > 1 else "")
            + " (is the arch right?)"
        )
    unexpected_backbone = [k for k in result.unexpected_keys if k.startswith(BACKBONE_PREFIXES)]
    if unexpected_backbone:
        raise CheckpointError(f"{source}: unexpected backbone tensor '{unexpected_backbone[0]}' (is the arch right?)")
    if result.unexpected_keys:
        log.warning(
            "%s: ignored %d tensors the model does not have: %s",
            source,
            len(result.unexpected_keys),
            ", ".join(result.unexpected_keys[:5]),
        )
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


_MLP_INPUT = re.compile(r"^blocks\.\d+\.mlp\.fc1\.weight$")


def check_videomae_layout(config: ViTConfig, state: dict[str, Tensor], source: str) -> None:
    """One-line errors that say why a VideoMAE (V1/V2) file does not fit ``config``, where a bare
    shape mismatch would not: its patch size, its MLP width, a class token, a classifier that
    reads a token instead of the mean (``state`` after a mismatched head was dropped)."""
    if "cls_token" in state:
        raise CheckpointError(
            f"{source}: 'cls_token' is a class token, which VideoMAE backbones (V1 and V2) do not have"
        )
    _check_patch_embedding(state.get("patch_embed.proj.weight"), config, source)
    for key, weight in state.items():
        # another embed_dim is the generic shape check's to report; here: the same width, another MLP
        fits = weight.ndim != 2 or weight.shape[1] != config.embed_dim or weight.shape[0] == config.mlp_width
        if _MLP_INPUT.match(key) and not fits:
            raise CheckpointError(
                f"{source}: '{key}' has an MLP hidden width of {weight.shape[0]} but the model's is "
                f"{config.mlp_width} (embed_dim={config.embed_dim}, mlp_ratio={config.mlp_ratio:g}): "
                f"set mlp_hidden_dim={weight.shape[0]} or use the arch of these weights"
            )
    if "norm.weight" in state and "fc_norm.weight" not in state and "head.weight" in state:
        raise CheckpointError(
            f"{source}: has 'norm.weight' but no 'fc_norm.weight': a classifier trained without mean "
            "pooling (VideoMAE's --use_cls reads the first token after a last norm), which aptune's "
            "mean-pooled model would not reproduce; give another num_classes to load only its backbone"
        )


def _check_patch_embedding(weight: Tensor | None, config: ViTConfig, source: str) -> None:
    """The Conv3d kernel is (tubelet, patch, patch): VideoMAE V2's ViT-g uses 14-pixel patches."""
    if weight is None or weight.ndim != 5:
        return  # missing or malformed: the generic checks name it
    frames, height, width = weight.shape[2:]
    if (frames, height, width) == (config.tubelet_size, config.patch_size, config.patch_size):
        return
    raise CheckpointError(
        f"{source}: 'patch_embed.proj.weight' embeds {height}x{width}-pixel patches over {frames} frames, but the "
        f"model has patch_size={config.patch_size}, tubelet_size={config.tubelet_size}: use the arch of these "
        "weights (14-pixel patches: vit_giant_patch14_224) or set patch_size/tubelet_size"
    )


_KEY_BIAS = re.compile(r"^blocks\.(\d+)\.attn\.k_bias$")


def add_key_biases(model, state: dict[str, Tensor], source: str) -> None:
    """Give the blocks whose key projection ``state`` holds a bias for one (see attention.py)."""
    own = dict(model.named_parameters())
    trained = getattr(getattr(model, "tuning_method", None), "trainable_prefixes", lambda: ())()
    for key, value in state.items():
        match = _KEY_BIAS.match(key)
        if match is None or key in own:
            continue
        index = int(match.group(1))
        if index >= len(model.blocks):
            raise CheckpointError(f"{source}: unexpected backbone tensor '{key}' (is the arch right?)")
        try:
            model.blocks[index].attn.add_key_bias(value, requires_grad=key.startswith(tuple(trained)))
        except ValueError as exc:
            raise CheckpointError(f"{source}: '{key}': {exc}") from None


def _load_position_table(model, table: Tensor, source: str) -> None:

    if table.ndim < 2 or table.numel() == 0:
        raise CheckpointError(
            f"{source}: 'pos_embed' has shape {tuple(table.shape)}, expected (1, positions, {model.config.embed_dim})"
        )
    table = table.reshape(-1, table.shape[-1]).float()
    target = model.config.grid
    if table.shape[-1] != model.config.embed_dim:
        raise CheckpointError(f"{source}: 'pos_embed' width {table.shape[-1]} != embed_dim {model.config.embed_dim}")
    source_grid = _guess_grid(table.shape[0], target)
    if source_grid is None:
        raise CheckpointError(f"{source}: 'pos_embed' has {table.shape[0]} positions, which fits no grid near {target}")
    model.pos_embed.copy_(resize_position_table(table, source_grid, target)[None])


def _guess_grid(num_positions: int, target: tuple[int, int, int]) -> tuple[int, int, int] | None:
    t, h, w = target
    if num_positions == t * h * w:
        return target
    if num_positions % t == 0:  # same clip length, other image size (square)
        side = round((num_positions // t) ** 0.5)
        if side * side * t == num_positions:
            return (t, side, side)
    if num_positions % (h * w) == 0:  # same image size, other clip length
        return (num_positions // (h * w), h, w)
    return None
