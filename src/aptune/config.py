"""Typed run configuration: dataclass sections, YAML files and ``key=value`` overrides.

A config is plain data.  Library functions never take a whole config; the
command line unpacks the sections it needs.  Unknown keys and values of the
wrong type are errors that name the key and list the valid choices, raised
before anything heavy starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aptune.errors import ConfigError
from aptune.fileio import write_text_atomically
from aptune.methods import METHODS, TuningMethod, build_method, method_names, method_to_dict, methods_that
from aptune.methods.prompt_init import PROMPT_INITS
from aptune.models.heads import HEADS, MAX_QUERIES
from aptune.models.vit import PRESETS

DATA_FORMATS = ("list", "ucf101", "hmdb51", "ssv2", "kinetics")
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")
# where training clips are augmented: cpu (loader workers, one clip at a time) or the training device
AUGMENT_PLACES = ("cpu", "device")
DECODERS = ("pyav", "torchcodec")  # torchcodec: an optional extra (pip install aptune[torchcodec])


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
    recompute_mlp: bool = False  # aptune option: recompute each MLP's hidden activation in the backward
    recompute_qkv: bool = False  # aptune option: recompute each block's norm1 and q/k/v in the backward
    head: str = "linear"  # the paper's mean pooling; "attentive" (departure): a learned attentive probe
    attentive_queries: int = 1  # the probe's learned queries (V-JEPA: 1), averaged
    attentive_heads: int | None = None  # the probe's attention heads; None: the backbone's num_heads

    def arch_overrides(self) -> dict[str, Any]:
        """Architecture overrides for ``create_model``: only the keys the user set."""
        keys = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "tubelet_size", "num_frames", "img_size")
        overrides = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.drop_path_rate:
            overrides["drop_path_rate"] = self.drop_path_rate
        if self.head_dropout:
            overrides["head_dropout"] = self.head_dropout
        if self.head != "linear":
            overrides.update(head=self.head, attentive_queries=self.attentive_queries)
            if self.attentive_heads is not None:
                overrides["attentive_heads"] = self.attentive_heads
        return overrides


# model overrides that leave the backbone as it is (regularisation, the readout): a file that brings
# its own architecture (a Hugging Face folder, a merged file) keeps it when only these are set
BESIDE_THE_ARCHITECTURE = ("drop_path_rate", "head_dropout", "head", "attentive_queries", "attentive_heads")


DEFAULT_METHOD = "apt"

# The one flat method section of aptune 0.1.0 and its defaults.  A recipe or run folder of that
# release may hold keys of other methods (config.yaml held them all); they never did anything,
# so one at this default, or in a section holding every one of them, is dropped when read.
LEGACY_METHOD_DEFAULTS: dict[str, Any] = {
    "num_prompts": 400,
    "prompt_start": 0,
    "prompt_end": None,
    "prompt_dropout": 0.0,
    "reparam": True,
    "prompt_init": "uniform",
    "lora_rank": 8,
    "lora_alpha": 16.0,
    "adapter_dim": 64,
    "adapter_scale": 0.1,
}


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
    random_erase: float = 0.0  # VideoMAE full fine-tuning's per-frame random erasing probability
    max_bad_fraction: float = 0.01
    sampling: str = "auto"  # auto: segment (TSN) for ssv2, dense windows otherwise | dense | segment
    decode_threads: int = 0  # decoder threads per worker; 0: cpu cores // max(1, num_workers)
    video_cache_mb: int = 0  # aptune option: keep decoded videos in memory (small sets, num_workers 0); 0: off
    augment_on: str = "cpu"  # aptune option: cpu (workers, per clip) | device (the training device, per batch)
    decoder: str = "pyav"  # aptune option: pyav | torchcodec (an optional extra)


@dataclass
class OptimConfig:
    """The official recipe's rules by default (VideoMAE/APT ``run_class_*.py``, ``optim_factory.py``).

    ``base_lr`` and ``min_lr`` are scaled by total batch / 256 (total batch = ``train.batch_size``
    x ``train.accum_steps`` x ranks; repeated-augmentation samples do not count), the lr warms
    up as ``linspace(0, peak, W)`` over W steps and then follows a half cosine to ``min_lr``, and
    every trainable tensor of more than one dimension that is not a bias is weight-decayed.
    """

    name: str = "adamw"
    lr: float | None = None  # absolute peak lr (an aptune option): then min_lr is absolute too
    base_lr: float = 0.05  # peak lr = base_lr * total batch / 256 when lr is not given
    head_lr: float | None = None  # departure: fc_norm and head's own absolute peak lr (needs lr)
    head_base_lr: float | None = None  # departure: the same, scaled like base_lr (needs base_lr)
    weight_decay: float = 1e-5
    weight_decay_end: float | None = None  # cosine schedule of the decay to this value; None: constant
    decay_prompt_scales: bool = True  # the official code decays APT's (layers, 2, P) scales; false: not
    layer_decay: float = 1.0  # layer-wise lr decay (VideoMAE full fine-tuning); 1.0: off
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
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
    # the method's own dataclass (aptune.methods), parsed from `method: {name: ..., <its options>}`
    method: TuningMethod = field(default_factory=lambda: build_method(DEFAULT_METHOD))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        data["method"] = method_to_dict(self.method)  # the name first, then that method's options
        return data


_CHOICES = {
    ("method", "name"): method_names,  # called: methods registered after import count too
    ("model", "head"): HEADS,
    ("data", "format"): DATA_FORMATS,
    ("data", "sampling"): ("auto", "dense", "segment"),
    ("data", "augment_on"): AUGMENT_PLACES,
    ("data", "decoder"): DECODERS,
    ("train", "precision"): PRECISIONS,
    ("optim", "name"): OPTIMIZERS,
}
# choices and ranges of method options, by option name, for whichever method takes the option
_METHOD_CHOICES = {"prompt_init": PROMPT_INITS}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (optional), apply ``section.key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        raw = read_yaml_mapping(path, what="config file")
    parsed = [_parse_override(item) for item in overrides]
    _forget_options_of_a_replaced_method(raw, parsed)
    for section, key, value in parsed:
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        raw[section][key] = value
    return config_from_dict(raw, source=source)


def _forget_options_of_a_replaced_method(raw: dict[str, Any], overrides: list[tuple[str, str, Any]]) -> None:
    """``--set method.name=X`` on a recipe for another method drops the recipe's options X lacks."""
    names = [value for section, key, value in overrides if (section, key) == ("method", "name")]
    if names and isinstance(raw.get("method"), dict):
        raw["method"] = switch_method(raw["method"], names[-1])


def switch_method(section: dict[str, Any], name: Any) -> dict[str, Any]:
    """A ``method`` section for method ``name``, keeping the options of ``section`` that it takes.

    The others configured the method being replaced (an APT recipe's prompt count has no
    meaning for LoRA); options both methods take carry over.
    """
    if name not in METHODS or section.get("name", DEFAULT_METHOD) == name:
        return {**section, "name": name}
    kept = {f.name for f in dataclasses.fields(METHODS[name])}
    return {"name": name, **{k: v for k, v in section.items() if k in kept}}


def read_yaml_mapping(path: Path, what: str = "file") -> dict[str, Any]:
    """A YAML file that must hold a mapping, with one-line errors for every way it can be unreadable."""
    if not path.exists():
        raise ConfigError(f"{path}: {what} not found")
    if not path.is_file():
        raise ConfigError(f"{path}: {what} is not a regular file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: {what} is binary, not YAML text")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"{path}:{where} is not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{path}: {what} is nested too deeply to be a recipe") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    config = Config()
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for section_name, values in raw.items():
        if section_name not in sections:
            raise ConfigError(f"{source}: unknown section '{section_name}' (valid: {', '.join(sections)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section_name}' must be a mapping of keys")
        if section_name == "method":
            config.method = method_from_section(values, source)
            continue
        section = getattr(config, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        hints = typing.get_type_hints(type(section))
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown key '{section_name}.{key}' (valid: {', '.join(fields)})")
            setattr(section, key, _coerce(value, hints[key], f"{section_name}.{key}", source))
    validate(config, source)
    return config


def method_from_section(values: dict[str, Any], source: str = "config") -> TuningMethod:
    """The method a recipe's ``method`` section describes: ``name`` and that method's options.

    Each option is type-, choice- and range-checked.  A key no method takes is an unknown
    key; one that only other methods take (aptune 0.1.0's flat section) is dropped at its old
    default, or in a section holding every old key (a 0.1.0 run folder's config.yaml), and is
    otherwise an error naming the methods that take it.
    """
    name = _coerce(values.get("name", DEFAULT_METHOD), str, "method.name", source)
    if name not in method_names():
        raise ConfigError(f"{source}: method.name={name!r} is not one of: {', '.join(method_names())}")
    own = [f.name for f in dataclasses.fields(METHODS[name])]  # in declaration order, for the message
    old_release_section = LEGACY_METHOD_DEFAULTS.keys() <= values.keys()
    options = {}
    for key, value in values.items():
        if key == "name":
            continue
        owners = [m for m, cls in METHODS.items() if key in {f.name for f in dataclasses.fields(cls)}]
        if not owners and key not in LEGACY_METHOD_DEFAULTS:
            valid = ", ".join(["name", *own])
            raise ConfigError(f"{source}: unknown key 'method.{key}' for method {name} (valid: {valid})")
        if owners:
            value = _coerce(value, typing.get_type_hints(METHODS[owners[0]])[key], f"method.{key}", source)
            _check_method_option(key, value, source)
        if key in own:
            options[key] = value
        elif not (old_release_section or value == LEGACY_METHOD_DEFAULTS.get(key, object())):
            raise ConfigError(f"{source}: method.{key}={value!r} needs {_describe_methods(owners)}, not {name}")
    return build_method(name, **options)


def _check_method_option(key: str, value: Any, source: str) -> None:
    choices = _METHOD_CHOICES.get(key)
    if choices is not None and value not in choices:
        raise ConfigError(f"{source}: method.{key}={value!r} is not one of: {', '.join(choices)}")
    if key in _METHOD_RANGES:
        _check_range(value, f"method.{key}", _METHOD_RANGES[key], source)


def _describe_methods(names: list[str]) -> str:
    if set(names) == set(methods_that("prompted")):
        return f"a prompt method ({', '.join(names)})"
    return "method " + " or ".join(names) if names else "a method that takes it"


# (section, key): (lowest, highest, lowest allowed?, highest allowed?); None = unbounded.
# Every number a recipe can hold is checked here, once, before anything is built or written.
# The upper bounds are far beyond any real model or machine; they turn a typo (an extra
# zero, 1e9) into a one-line error instead of an allocation that fails or never ends.
_RANGES: dict[tuple[str, str], tuple[float | None, float | None, bool, bool]] = {
    ("model", "num_classes"): (1, 1000000, True, True),
    ("model", "embed_dim"): (1, 16384, True, True),
    ("model", "depth"): (1, 1024, True, True),
    ("model", "num_heads"): (1, 1024, True, True),
    ("model", "mlp_ratio"): (0, 64, False, True),
    ("model", "patch_size"): (1, 1024, True, True),
    ("model", "tubelet_size"): (1, 64, True, True),
    ("model", "num_frames"): (1, 4096, True, True),
    ("model", "img_size"): (1, 8192, True, True),
    ("model", "drop_path_rate"): (0, 1, True, False),
    ("model", "head_dropout"): (0, 1, True, False),
    ("model", "attentive_queries"): (1, MAX_QUERIES, True, True),
    ("model", "attentive_heads"): (1, 1024, True, True),
    ("data", "num_frames"): (1, 4096, True, True),
    ("data", "sampling_rate"): (1, 1000, True, True),
    ("data", "input_size"): (1, 8192, True, True),
    ("data", "short_side_size"): (1, 8192, True, True),
    ("data", "num_workers"): (0, 256, True, True),
    ("data", "num_sample"): (1, 64, True, True),
    ("data", "test_num_segment"): (1, 1000, True, True),
    ("data", "max_bad_fraction"): (0, 1, True, True),
    ("data", "random_erase"): (0, 1, True, True),
    ("data", "decode_threads"): (0, 256, True, True),
    ("data", "video_cache_mb"): (0, 1048576, True, True),
    ("optim", "lr"): (0, None, False, False),
    ("optim", "base_lr"): (0, None, False, False),
    ("optim", "head_lr"): (0, None, False, False),
    ("optim", "head_base_lr"): (0, None, False, False),
    ("optim", "weight_decay"): (0, None, True, False),
    ("optim", "weight_decay_end"): (0, None, True, False),
    ("optim", "layer_decay"): (0, 1, False, True),
    ("optim", "momentum"): (0, 1, True, False),
    ("optim", "eps"): (0, None, False, False),
    ("optim", "warmup_epochs"): (0, 1000000, True, True),
    ("optim", "min_lr"): (0, None, True, False),
    ("optim", "clip_grad"): (0, None, False, False),
    ("train", "epochs"): (1, 1000000, True, True),
    ("train", "batch_size"): (1, 65536, True, True),
    ("train", "accum_steps"): (1, 65536, True, True),
    ("train", "seed"): (0, 2**32 - 1, True, True),
    ("train", "save_every"): (1, 1000000, True, True),
    ("train", "eval_every"): (1, 1000000, True, True),
    ("train", "label_smoothing"): (0, 1, True, False),
    ("train", "mixup"): (0, None, True, False),
    ("train", "cutmix"): (0, None, True, False),
    ("train", "log_every"): (1, 1000000000, True, True),
    ("pretrain", "mask_ratio"): (0, 1, False, False),
    ("pretrain", "decoder_dim"): (1, 16384, True, True),
    ("pretrain", "decoder_depth"): (1, 1024, True, True),
    ("pretrain", "decoder_heads"): (1, 1024, True, True),
}

_METHOD_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "num_prompts": (0, 100000, True, True),
    "prompt_start": (0, 1024, True, True),
    "prompt_end": (0, 1024, True, True),
    "prompt_dropout": (0, 1, True, False),
    "lora_rank": (1, 4096, True, True),
    "lora_alpha": (0, None, False, False),
    "adapter_dim": (1, 65536, True, True),
    "adapter_scale": (None, None, False, False),
}

MAX_BACKBONE_PARAMETERS = 20e9  # ~ViT-g/14 (1 G) x 20: beyond it a recipe is a typo, not a model

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def validate(config: Config, source: str = "config") -> None:
    """Every choice, range and combination of the recipe; the first problem is a ConfigError."""
    for (section, key), choices in _CHOICES.items():
        choices = choices() if callable(choices) else choices
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise ConfigError(f"{source}: {section}.{key}={value!r} is not one of: {', '.join(choices)}")
    for (section, key), bounds in _RANGES.items():
        _check_range(getattr(getattr(config, section), key), f"{section}.{key}", bounds, source)
    for key, value in dataclasses.asdict(config.method).items():
        _check_method_option(key, value, source)
    for index, beta in enumerate(config.optim.betas):
        _check_range(beta, f"optim.betas[{index}]", (0, 1, True, False), source)
    _check_combinations(config, source)


def _check_range(value: Any, key: str, bounds, source: str) -> None:
    if value is None:
        return
    low, high, low_ok, high_ok = bounds
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key} must be a finite number, got {value}")
    too_low = low is not None and (value < low or (value == low and not low_ok))
    too_high = high is not None and (value > high or (value == high and not high_ok))
    if too_low or too_high:
        raise ConfigError(f"{source}: {key} must be {_describe(bounds)}, got {value}")


def _describe(bounds) -> str:
    low, high, low_ok, high_ok = bounds
    if high is None:
        return f"{'>=' if low_ok else '>'} {low:g}"
    if low is None:
        return f"{'<=' if high_ok else '<'} {high:g}"
    return f"in {'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"


def _check_combinations(config: Config, source: str) -> None:
    """Checks that read more than one key; the first problem found is the one reported."""
    _check_data_combinations(config.data, config.model, source)
    _check_method_and_optim_combinations(config.method, config.optim, source)
    _check_train_and_model_combinations(config, source)


def _check_data_combinations(data: DataConfig, model: ModelConfig, source: str) -> None:
    if data.augment_on == "device" and data.random_erase > 0:
        raise ConfigError(
            f"{source}: data.random_erase={data.random_erase:g} is done on the cpu only: "
            "set data.augment_on=cpu or data.random_erase=0"
        )
    if data.test_num_crop not in (1, 3):
        raise ConfigError(f"{source}: data.test_num_crop must be 1 or 3, got {data.test_num_crop}")
    if data.split not in (1, 2, 3):
        raise ConfigError(f"{source}: data.split must be 1, 2 or 3, got {data.split}")
    if data.short_side_size < data.input_size:
        raise ConfigError(
            f"{source}: data.short_side_size={data.short_side_size} is smaller than "
            f"data.input_size={data.input_size}: test crops would not fit"
        )
    patch = model.patch_size or _preset_value(model.arch, "patch_size", 16)
    if data.input_size < patch:
        raise ConfigError(
            f"{source}: data.input_size={data.input_size} is smaller than one patch (model.patch_size={patch})"
        )
    tubelet = model.tubelet_size or 2
    if data.num_frames < tubelet:
        raise ConfigError(
            f"{source}: data.num_frames={data.num_frames} is fewer than one tubelet (model.tubelet_size={tubelet})"
        )
    low, high = data.crop_scale
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"{source}: data.crop_scale must satisfy 0 < min <= max <= 1, got {[low, high]}")
    if data.rand_augment is not None:
        from aptune.data.transforms import parse_rand_augment  # local: aptune.data loads PyAV

        parse_rand_augment(data.rand_augment)


def _check_method_and_optim_combinations(method: TuningMethod, optim: OptimConfig, source: str) -> None:
    start, end = getattr(method, "prompt_start", 0), getattr(method, "prompt_end", None)
    if end is not None and end < start:
        raise ConfigError(f"{source}: method.prompt_end={end} is before method.prompt_start={start}")
    if optim.head_lr is not None and optim.lr is None:
        raise ConfigError(
            f"{source}: optim.head_lr is an absolute lr and needs an absolute optim.lr; with "
            "the scaled optim.base_lr give optim.head_base_lr (scaled the same way)"
        )
    if optim.head_base_lr is not None and optim.lr is not None:
        raise ConfigError(
            f"{source}: optim.head_base_lr is scaled like optim.base_lr, but optim.lr is set "
            "(absolute): give optim.head_lr instead"
        )
    peak_is_absolute = optim.lr is not None
    peak = optim.lr if peak_is_absolute else optim.base_lr
    if optim.min_lr > peak:
        name = "optim.lr" if peak_is_absolute else "optim.base_lr"
        raise ConfigError(f"{source}: optim.min_lr={optim.min_lr:g} is above the peak {name}={peak:g}")


def _check_train_and_model_combinations(config: Config, source: str) -> None:
    model, method, train = config.model, config.method, config.train
    if not DEVICE_PATTERN.match(train.device):
        raise ConfigError(f"{source}: train.device={train.device!r} is not one of: auto, cpu, cuda, cuda:N")
    if train.cache_features and method.name != "linear":
        raise ConfigError(
            f"{source}: train.cache_features needs method.name=linear (the backbone must be frozen whole)"
        )
    if train.cache_features and (train.mixup or train.cutmix):
        raise ConfigError(f"{source}: train.cache_features cannot mix clips (set train.mixup and train.cutmix to 0)")
    if train.cache_features and model.head == "attentive":
        raise ConfigError(
            f"{source}: train.cache_features keeps one pooled vector per clip, but model.head=attentive pools "
            "the tokens itself (set train.cache_features=false: the frozen backbone still runs without gradients)"
        )
    if config.pretrain.decoder_dim % config.pretrain.decoder_heads:
        raise ConfigError(
            f"{source}: pretrain.decoder_heads={config.pretrain.decoder_heads} does not divide "
            f"pretrain.decoder_dim={config.pretrain.decoder_dim}"
        )
    embed, heads = (
        model.embed_dim or _preset_value(model.arch, "embed_dim"),
        model.num_heads or _preset_value(model.arch, "num_heads"),
    )
    if embed and heads and embed % heads:
        raise ConfigError(f"{source}: model.num_heads={heads} does not divide model.embed_dim={embed}")
    _check_head_combinations(model, embed, source)
    depth = model.depth or _preset_value(model.arch, "depth")
    ratio = model.mlp_ratio or 4.0
    if embed and depth and (4 + 2 * ratio) * embed * embed * depth > MAX_BACKBONE_PARAMETERS:
        raise ConfigError(
            f"{source}: model.embed_dim={embed}, depth={depth}, mlp_ratio={ratio:g} make a backbone "
            f"of ~{(4 + 2 * ratio) * embed * embed * depth / 1e9:.0f} G parameters (at most "
            f"{MAX_BACKBONE_PARAMETERS / 1e9:.0f} G): check for a typo"
        )


def _check_head_combinations(model: ModelConfig, embed: int | None, source: str) -> None:
    if model.head != "attentive":
        changed = [
            key
            for key, default in (("attentive_queries", 1), ("attentive_heads", None))
            if getattr(model, key) != default
        ]
        if changed:
            raise ConfigError(f"{source}: model.{changed[0]} needs model.head=attentive, not {model.head}")
        return
    if embed and model.attentive_heads and embed % model.attentive_heads:
        raise ConfigError(
            f"{source}: model.attentive_heads={model.attentive_heads} does not divide model.embed_dim={embed}"
        )


def _preset_value(arch: str | None, key: str, default: Any = None) -> Any:
    return PRESETS.get(arch or "", {}).get(key, default)


def save_config(config: Config, path: str | Path) -> None:
    data = config.to_dict()
    # tuples become lists so the YAML stays plain and loadable by safe_load
    data["optim"]["betas"] = list(data["optim"]["betas"])
    write_text_atomically(path, yaml.safe_dump(data, sort_keys=False))


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
