"""Typed run configuration: dataclass sections, YAML files and ``key=value`` overrides.

A config is plain data.  Library functions never take a whole config; the
command line unpacks the sections it needs.  Unknown keys and values of the
wrong type are errors that name the key and list the valid choices, raised
before anything heavy starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aptune.errors import ConfigError

METHOD_NAMES = ("apt", "vpt-shallow", "vpt-deep", "linear", "full", "lora", "adaptformer")
PROMPT_INITS = ("uniform", "tokens")  # how prompt methods start their prompts (methods/prompt_init.py)
DATA_FORMATS = ("list", "ucf101", "hmdb51", "ssv2", "kinetics")
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class ModelConfig:
    arch: str | None = "vit_small_patch16_224"
    pretrained: str | None = None
    num_classes: int | None = None  # inferred from the data when left out
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    patch_size: int | None = None
    tubelet_size: int | None = None
    num_frames: int | None = None
    img_size: int | None = None
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0
    grad_checkpointing: bool = False

    def arch_overrides(self) -> dict[str, Any]:
        """Architecture overrides for ``create_model``: only the keys the user set."""
        keys = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "tubelet_size",
                "num_frames", "img_size")
        overrides = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.drop_path_rate:
            overrides["drop_path_rate"] = self.drop_path_rate
        if self.head_dropout:
            overrides["head_dropout"] = self.head_dropout
        return overrides


@dataclass
class MethodConfig:
    name: str = "apt"
    num_prompts: int = 400
    prompt_start: int = 0
    prompt_end: int | None = None
    prompt_dropout: float = 0.0
    reparam: bool = True
    prompt_init: str = "uniform"  # apt / vpt: "uniform" (the papers') or "tokens" (copies of real ones)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    adapter_dim: int = 64
    adapter_scale: float = 0.1


@dataclass
class DataConfig:
    format: str = "list"
    root: str = ""
    annotations: str | None = None  # folder of list files / split files when not under root
    split: int = 1
    num_frames: int = 16
    sampling_rate: int = 4
    input_size: int = 224
    short_side_size: int = 224
    num_workers: int = 4
    num_sample: int = 2
    test_num_segment: int = 5
    test_num_crop: int = 3
    rand_augment: str | None = "rand-m4-n2-mstd0.2-inc1"
    horizontal_flip: bool | None = None  # None: on, except for ssv2 whose labels say left/right
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area range of the training random resized crop
    max_bad_fraction: float = 0.01
    sampling: str = "auto"  # auto: segment (TSN) for ssv2, dense windows otherwise | dense | segment
    decode_threads: int = 0  # decoder threads per worker; 0: cpu cores // max(1, num_workers)


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float | None = None  # absolute lr; when None, base_lr * total_batch / 256
    base_lr: float = 0.05
    head_lr: float | None = None  # peak lr of fc_norm and head; None: the same as lr
    weight_decay: float = 1e-5
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 10.0
    min_lr: float = 1e-6
    clip_grad: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 8
    accum_steps: int = 1
    precision: str = "fp32"
    seed: int = 0
    save_every: int = 1
    eval_every: int = 5
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    compile: bool = False
    standardize_features: bool = False  # start fc_norm so features reach the head standardised
    cache_features: bool = False  # linear only: run the frozen backbone once per training clip
    log_every: int = 10
    device: str = "auto"


@dataclass
class PretrainConfig:
    """VideoMAE masked auto-encoding (``aptune pretrain``); ignored by ``train``."""

    mask_ratio: float = 0.9
    decoder_dim: int = 96
    decoder_depth: int = 2
    decoder_heads: int = 3
    normalize_target: bool = True  # per-patch normalised pixels (VideoMAE's default)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    ("method", "name"): METHOD_NAMES,
    ("data", "format"): DATA_FORMATS,
    ("data", "sampling"): ("auto", "dense", "segment"),
    ("train", "precision"): PRECISIONS,
    ("optim", "name"): OPTIMIZERS,
    ("method", "prompt_init"): PROMPT_INITS,
}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (optional), apply ``section.key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        section, key, value = _parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        raw[section][key] = value
    return config_from_dict(raw, source=source)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    config = Config()
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for section_name, values in raw.items():
        if section_name not in sections:
            raise ConfigError(
                f"{source}: unknown section '{section_name}' (valid: {', '.join(sections)})"
            )
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section_name}' must be a mapping of keys")
        section = getattr(config, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        hints = typing.get_type_hints(type(section))
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    f"{source}: unknown key '{section_name}.{key}' (valid: {', '.join(fields)})"
                )
            setattr(section, key, _coerce(value, hints[key], f"{section_name}.{key}", source))
    validate(config, source)
    return config


def validate(config: Config, source: str = "config") -> None:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise ConfigError(
                f"{source}: {section}.{key}={value!r} is not one of: {', '.join(choices)}"
            )
    positive = [
        ("train", "epochs"), ("train", "batch_size"), ("train", "accum_steps"),
        ("data", "num_frames"), ("data", "sampling_rate"), ("data", "input_size"),
        ("data", "short_side_size"), ("data", "num_sample"), ("data", "test_num_segment"),
        ("data", "test_num_crop"), ("train", "save_every"), ("train", "eval_every"),
    ]
    for section, key in positive:
        value = getattr(getattr(config, section), key)
        if value < 1:
            raise ConfigError(f"{source}: {section}.{key} must be >= 1, got {value}")
    if config.data.test_num_crop not in (1, 3):
        raise ConfigError(f"{source}: data.test_num_crop must be 1 or 3, got {config.data.test_num_crop}")
    if config.data.split not in (1, 2, 3):
        raise ConfigError(f"{source}: data.split must be 1, 2 or 3, got {config.data.split}")
    if config.data.num_workers < 0:
        raise ConfigError(f"{source}: data.num_workers must be >= 0")
    if config.train.cache_features and config.method.name != "linear":
        raise ConfigError(f"{source}: train.cache_features needs method.name=linear (the backbone must be frozen whole)")
    if config.train.cache_features and (config.train.mixup or config.train.cutmix):
        raise ConfigError(f"{source}: train.cache_features cannot mix clips (set train.mixup and train.cutmix to 0)")
    low, high = config.data.crop_scale
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"{source}: data.crop_scale must satisfy 0 < min <= max <= 1, got {[low, high]}")
    if not 0.0 <= config.method.prompt_dropout < 1.0:
        raise ConfigError(f"{source}: method.prompt_dropout must be in [0, 1)")
    if config.optim.head_lr is not None and config.optim.head_lr <= 0:
        raise ConfigError(f"{source}: optim.head_lr must be > 0 (or left out to use optim.lr)")
    if config.optim.head_lr is not None and not (config.optim.lr or config.optim.base_lr) > 0:
        raise ConfigError(f"{source}: optim.head_lr needs a positive optim.lr (or base_lr)")
    if config.method.prompt_init != "uniform" and config.method.name not in ("apt", "vpt-shallow", "vpt-deep"):
        raise ConfigError(f"{source}: method.prompt_init={config.method.prompt_init!r} needs a prompt method "
                          f"(apt, vpt-shallow, vpt-deep), not {config.method.name}")
    if config.method.num_prompts < 0:
        raise ConfigError(f"{source}: method.num_prompts must be >= 0")
    if not 0.0 < config.pretrain.mask_ratio < 1.0:
        raise ConfigError(f"{source}: pretrain.mask_ratio must be in (0, 1)")
    if not 0.0 <= config.train.label_smoothing < 1.0:
        raise ConfigError(f"{source}: train.label_smoothing must be in [0, 1)")


def save_config(config: Config, path: str | Path) -> None:
    data = config.to_dict()
    # tuples become lists so the YAML stays plain and loadable by safe_load
    data["optim"]["betas"] = list(data["optim"]["betas"])
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def _parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    dotted, text = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=10")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return parts[0], parts[1], value


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against the dataclass annotation and convert where it is lossless."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: {key} cannot be {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{source}: {key} expects a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{source}: {key} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-5" as a string
            except ValueError:
                pass
        raise ConfigError(f"{source}: {key} expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: {key} expects a string, got {value!r}")
    return value
