"""Reading pretrained weights safely, in every layout users arrive with.

Accepted without any conversion step:

1. original VideoMAE pre-training checkpoints (``.pth``; top-level ``model`` or
   ``module``; ``encoder.`` prefix; decoder, ``mask_token``, ``encoder_to_decoder``
   and ``encoder.norm`` ignored);
2. VideoMAE fine-tuned checkpoints (same names as our backbone);
3. checkpoints of the official APT code (``prompt_embeddings_k/v`` of shape
   (layers, P, head_dim), ``prompt_scale`` (layers, 2, P), ``head_norm`` = ``fc_norm``);
4. Hugging Face ``transformers`` VideoMAE directories (``config.json`` plus
   ``model.safetensors``, sharded safetensors or ``pytorch_model.bin``), read
   directly: ``transformers`` is not needed.

Pickles are only ever opened with ``weights_only=True``.  Every failure is a
:class:`CheckpointError` naming the file and, where there is one, the key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aptune.errors import CheckpointError

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
    return LoadedCheckpoint(state_dict, str(path), kind, arch=arch, class_names=class_names,
                            prompts=prompts, ignored=ignored)


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

    from aptune.models.vit import ViTConfig

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if header.get("format") != "aptune-merged":
        return None, None
    arch = _header_json(header, "arch", path, dict, required=True)
    class_names = _header_json(header, "class_names", path, list, required=False)
    # the shape only: the head's size comes from the weights, the name is a label, and
    # regularisation (drop path, dropout, head init) belongs to whoever trains the model next
    defaults = ViTConfig()
    shape = {f.name for f in dataclasses.fields(ViTConfig)} - {
        "num_classes", "name", "drop_path_rate", "head_dropout", "head_init_scale"}
    arch = {k: v for k, v in arch.items() if k in shape}
    for key, value in arch.items():
        if not _same_kind(value, getattr(defaults, key)):
            raise CheckpointError(f"{path}: aptune-merged header 'arch' key '{key}' is {value!r}, "
                                  f"expected a {type(getattr(defaults, key)).__name__}")
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


def _same_kind(value: Any, default: Any) -> bool:
    if default is None:  # optional floats (fc_norm_eps)
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and len(value) == len(default)
    return isinstance(value, type(default))


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
            f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True "
            f"({_first_line(exc)})"
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
        raise CheckpointError(f"{path}: holds no tensors (keys: {', '.join(list(obj)[:5])})")
    return tensors


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------- layout conversion
def convert_state_dict(raw: dict[str, Tensor], source: str):
    """Detect the layout and rename to aptune's keys.

    Returns (state_dict, kind, ignored_keys, prompts_info).
    """
    state = _strip_common_prefix(raw, ("module.", "_orig_mod."))
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
        prompts = {"layers": keys.shape[0], "num_prompts": keys.shape[1],
                   "reparam": "kv_prompts.scales" in state}
    return dict(state), "videomae", [], prompts


def _strip_common_prefix(state: dict[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _convert_videomae_pretrain(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    converted, ignored = {}, []
    for key, value in state.items():
        if not key.startswith("encoder."):
            ignored.append(key)  # decoder, mask token, encoder_to_decoder
            continue
        name = key[len("encoder."):]
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
            converted["fc_norm." + key[len("head_norm."):]] = value
        else:
            converted[key] = value
    keys = converted["kv_prompts.keys"]
    if keys.ndim != 3 or converted.get("kv_prompts.values", keys).shape != keys.shape:
        raise CheckpointError(
            f"{source}: 'prompt_embeddings_k'/'prompt_embeddings_v' must both be (layers, P, head_dim), "
            f"found {tuple(keys.shape)}"
        )
    prompts = {"layers": keys.shape[0], "num_prompts": keys.shape[1],
               "reparam": "kv_prompts.scales" in converted}
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
        name = key[len("videomae."):] if key.startswith("videomae.") else key
        match = _HF_LAYER.match(name)
        if match:
            index, rest = int(match.group(1)), match.group(2)
            if rest in ("attention.attention.query.weight", "attention.attention.key.weight",
                        "attention.attention.value.weight"):
                qkv.setdefault(index, {})[rest.split(".")[2]] = value
            elif rest == "attention.attention.key.bias":
                # softmax ignores a bias shared by all keys, so dropping it is exact without prompts
                ignored.append(key)
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
            raise CheckpointError(
                f"{source}: layer {index} has no attention.attention.{missing[0]}.weight"
            )
        converted[f"blocks.{index}.attn.qkv.weight"] = torch.cat(
            (parts["query"], parts["key"], parts["value"]), dim=0
        )
    return converted, ignored


# ------------------------------------------------------- Hugging Face folders
def _load_huggingface_dir(folder: Path) -> LoadedCheckpoint:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: a directory checkpoint needs a config.json (Hugging Face layout)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: invalid JSON (line {exc.lineno}: {exc.msg})") from None
    arch, class_names = arch_from_hf_config(config, config_path)
    raw = _read_hf_weights(folder)
    state, ignored = convert_huggingface(raw, str(folder))
    if "head.weight" not in state:
        class_names = None  # a bare VideoMAEModel: its labels describe nothing we load
    return LoadedCheckpoint(state, str(folder), "huggingface", arch=arch,
                            class_names=class_names, ignored=ignored)


def arch_from_hf_config(config: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str] | None]:
    """Our architecture fields from a transformers VideoMAEConfig dict."""
    model_type = config.get("model_type")
    if model_type != "videomae":
        raise CheckpointError(f"{path}: model_type is {model_type!r}, expected 'videomae'")
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: hidden_act {config['hidden_act']!r} is not supported (only 'gelu')")
    if not config.get("use_mean_pooling", True):
        raise CheckpointError(f"{path}: use_mean_pooling=false is not supported (VideoMAE classifiers pool by mean)")
    try:
        hidden = int(config["hidden_size"])
        arch = {
            "embed_dim": hidden,
            "depth": int(config["num_hidden_layers"]),
            "num_heads": int(config["num_attention_heads"]),
            "mlp_ratio": int(config["intermediate_size"]) / hidden,
            "img_size": int(config.get("image_size", 224)),
            "patch_size": int(config.get("patch_size", 16)),
            "in_chans": int(config.get("num_channels", 3)),
            "num_frames": int(config.get("num_frames", 16)),
            "tubelet_size": int(config.get("tubelet_size", 2)),
            "layer_norm_eps": float(config.get("layer_norm_eps", 1e-12)),
            "fc_norm_eps": 1e-5,  # transformers builds fc_norm with LayerNorm's default eps
            "qkv_bias": bool(config.get("qv_bias", config.get("qkv_bias", True))),
        }
    except KeyError as exc:
        raise CheckpointError(f"{path}: missing key {exc.args[0]!r}") from None
    labels = config.get("id2label")
    class_names = None
    if isinstance(labels, dict) and labels:
        class_names = [labels[k] for k in sorted(labels, key=int)]
        arch["num_classes"] = len(class_names)
    return arch, class_names


def _read_hf_weights(folder: Path) -> dict[str, Tensor]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_tensor_file(folder / name)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = folder / index_name
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text()).get("weight_map", {})
            state: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(read_tensor_file(folder / shard))
            return state
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors, pytorch_model.bin or a sharded index)"
    )


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
        log.info("%s: classifier has %d classes, model has %d: starting a new head",
                 source, head.shape[0], own["head.weight"].shape[0])
        state.pop("head.weight")
        state.pop("head.bias", None)
    pos_embed = state.pop("pos_embed", None)
    if pos_embed is not None:
        _load_position_table(model, pos_embed, source)
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: '{key}' has shape {tuple(value.shape)} in the file but "
                f"{tuple(own[key].shape)} in the model (check arch and method options)"
            )
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
        raise CheckpointError(
            f"{source}: unexpected backbone tensor '{unexpected_backbone[0]}' (is the arch right?)"
        )
    if result.unexpected_keys:
        log.warning("%s: ignored %d tensors the model does not have: %s", source,
                    len(result.unexpected_keys), ", ".join(result.unexpected_keys[:5]))
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def _load_position_table(model, table: Tensor, source: str) -> None:
    from aptune.models.vit import resize_position_table

    table = table.reshape(-1, table.shape[-1]).float()
    target = model.config.grid
    if table.shape[-1] != model.config.embed_dim:
        raise CheckpointError(f"{source}: 'pos_embed' width {table.shape[-1]} != embed_dim {model.config.embed_dim}")
    source_grid = _guess_grid(table.shape[0], target)
    if source_grid is None:
        raise CheckpointError(
            f"{source}: 'pos_embed' has {table.shape[0]} positions, which fits no grid near {target}"
        )
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
