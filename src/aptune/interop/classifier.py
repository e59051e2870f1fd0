"""A transformers video encoder as an aptune classifier: what ``aptune train/eval/predict/bench`` run.

When ``model.pretrained`` names a Hugging Face folder of a model in
:data:`~aptune.interop.transformers_video.FAMILIES` other than VideoMAE (VideoMAE folders
become aptune's own backbone), :func:`create_transformers_classifier` builds a
:class:`TransformersVideoClassifier`: the folder's encoder, frozen, read the way the APT
paper reads VideoMAE (mean of the patch tokens, ``fc_norm``, a linear ``head``), and a
tuning method:

* ``apt``: prompts appended to the keys and values of the encoder's attention layers
  through transformers' attention interface (:mod:`aptune.interop.interface`);
* ``linear``: the head on the frozen features; ``full``: everything trains.

The classifier takes aptune's clips, (B, C, T, H, W) normalised with ImageNet statistics
like every aptune pipeline, and turns them into what the encoder was trained on (its
processor's mean and standard deviation, frames first) with one per-channel affine map:
the data pipeline stays the same for every backbone.  ``config`` is a
:class:`~aptune.models.vit.ViTConfig` summary of the shapes the engine reads (width,
number of attention layers, clip length and size); the encoder's own configuration is
``model.backbone.config``.  Adapters record the encoder's architecture (``model_type``,
width, heads, layers) and load back only onto it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aptune.errors import CheckpointError, ConfigError
from aptune.interop.inject import Injection
from aptune.interop.interface import interface_attentions, register_interface, route_through_prompts, site_of
from aptune.interop.transformers_video import FAMILIES, VideoFamily, encoder_of, encoder_prefix, spatial_patch
from aptune.methods import apply_method, build_method
from aptune.methods.apt import AttentionPrompts
from aptune.models.checkpoints import read_json_object
from aptune.models.heads import check_readout
from aptune.models.vit import ATTENTIVE_HEAD_KEYS, IMAGENET_MEAN, IMAGENET_STD, ViTConfig, classifier_head

log = logging.getLogger(__name__)

METHODS_ON_TRANSFORMERS = ("apt", "linear", "full")
MINIMUM_TRANSFORMERS = (5, 18)  # 5.5-5.17 load VideoMAE's q/v biases as zeros without a word


class TransformersVideoClassifier(nn.Module):
    """A frozen transformers video encoder, mean-pooled, with aptune's ``fc_norm`` and ``head``."""

    def __init__(
        self,
        backbone: nn.Module,
        family: VideoFamily,
        num_classes: int,
        readout: dict[str, Any] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        """``readout``: aptune's classifier options (``head``, ``attentive_queries``,
        ``attentive_heads``, ``head_dropout``), as for its own backbone."""
        super().__init__()
        self.backbone = backbone
        self.family = family
        width = backbone.config.hidden_size
        attentions = interface_attentions(encoder_of(backbone, family), type(backbone).__name__)
        self.config = _shape_summary(backbone, family, num_classes, len(attentions), readout or {})
        check_readout(self.config)
        self.fc_norm = nn.LayerNorm(width, eps=1e-6)
        self.head_dropout = nn.Dropout(self.config.head_dropout)
        self.reset_head(num_classes)
        # ImageNet-normalised clips -> the encoder's own normalisation: x * scale + shift per channel
        own_mean = torch.tensor(mean or family.mean)
        own_std = torch.tensor(std or family.std)
        imagenet_mean, imagenet_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("input_scale", (imagenet_std / own_std).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer(
            "input_shift", ((imagenet_mean - own_mean) / own_std).view(1, 3, 1, 1, 1), persistent=False
        )
        self.class_names: list[str] | None = None
        self.grad_checkpointing = False
        self._extension_names: list[str] = []
        # every attention layer goes through the interface from the start; prompts come and go
        register_interface()
        self._attentions = attentions
        for index, attention in enumerate(attentions):
            route_through_prompts(attention, None, index)

    # ---------------------------------------------- the extension protocol, for what it can honour
    @property
    def blocks(self) -> range:
        """What a method reads of the layers: how many there are (the encoder's attention layers)."""
        return range(self.config.depth)

    def add_extension(self, name: str, extension: nn.Module) -> None:
        """Register a method's module; only APT's prompts have a place in a transformers encoder."""
        if not isinstance(extension, AttentionPrompts):
            raise ConfigError(
                f"a transformers {type(self.backbone).__name__} backbone takes prompts appended to keys and values "
                f"(apt) only, not a {type(extension).__name__}: available methods are "
                f"{', '.join(METHODS_ON_TRANSFORMERS)}"
            )
        if name in self._extension_names or hasattr(self, name):
            raise ValueError(f"the model already has an attribute or extension called '{name}'")
        self.add_module(name, extension)
        self._extension_names.append(name)
        for attention in self._attentions:
            site_of(attention).prompts = extension

    def named_extensions(self):
        for name in list(self._extension_names):
            yield name, getattr(self, name)

    def extension(self, name: str) -> nn.Module | None:
        return getattr(self, name) if name in self._extension_names else None

    def set_extensions(self, extensions: dict[str, nn.Module]) -> None:
        """Replace every extension (a benchmark switching methods on one backbone)."""
        for name in list(self._extension_names):
            self._extension_names.remove(name)
            delattr(self, name)
        for attention in self._attentions:
            site_of(attention).prompts = None
        for name, extension in extensions.items():
            self.add_extension(name, extension)

    def reset_head(self, num_classes: int) -> None:
        """A fresh classifier, initialised as aptune's own backbone does (small, so early logits are)."""
        head = classifier_head(self.config, num_classes)
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        with torch.no_grad():
            head.weight.mul_(self.config.head_init_scale)
        self.head = head.to(self.fc_norm.weight.device)
        self.config.num_classes = num_classes

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def encoder(self) -> nn.Module:
        return encoder_of(self.backbone, self.family)

    def forward_tokens(self, clips: Tensor) -> Tensor:
        """(B, C, T, H, W) aptune clips -> the encoder's last hidden states (B, N, D)."""
        pixels = (clips * self.input_scale.to(clips.dtype) + self.input_shift.to(clips.dtype)).transpose(1, 2)
        return self.encoder()(**{self.family.pixel_argument: pixels}).last_hidden_state

    def forward_pooled(self, clips: Tensor) -> Tensor:
        """The patch tokens (a [CLS] token, where the encoder has one, left out) pooled: their mean,
        or the attentive head's probe."""
        tokens = self.forward_tokens(clips)[:, self.family.class_tokens :]
        probe = getattr(self.head, "probe", None)
        return tokens.mean(dim=1) if probe is None else probe(tokens)

    def forward_features(self, clips: Tensor) -> Tensor:
        return self.fc_norm(self.forward_pooled(clips))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(self.head_dropout(features))

    def forward(self, clips: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(clips))


def _shape_summary(backbone: nn.Module, family: VideoFamily, num_classes: int, depth: int, readout: dict) -> ViTConfig:
    config = backbone.config
    size = getattr(config, family.size_key)
    tubelet = getattr(config, "tubelet_size", 1)
    hidden = getattr(config, "intermediate_size", None) or int(config.hidden_size * config.mlp_ratio)
    return ViTConfig(
        embed_dim=config.hidden_size,
        depth=depth,
        mlp_hidden_dim=hidden,
        num_heads=config.num_attention_heads,
        patch_size=spatial_patch(config),
        tubelet_size=int(tubelet[0] if isinstance(tubelet, (list, tuple)) else tubelet),
        num_frames=int(getattr(config, family.frames_key)),
        img_size=int(size[0] if isinstance(size, (list, tuple)) else size),
        num_classes=num_classes,
        name=f"transformers:{family.model_type}",
        **readout,
    )


# ------------------------------------------------------------------ methods
def apply_method_to_classifier(model: TransformersVideoClassifier, tuning) -> None:
    """Attach ``tuning`` (apt, linear or full) as on aptune's own backbone, freeze the rest."""
    if tuning.name not in METHODS_ON_TRANSFORMERS:
        raise ConfigError(
            f"method '{tuning.name}' is not available on a transformers {type(model.backbone).__name__} "
            f"backbone (available: {', '.join(METHODS_ON_TRANSFORMERS)})"
        )
    apply_method(model, tuning)
    prefixes = tuning.trainable_prefixes()
    injection = Injection.from_family_module(
        model.family.model_type, tuning, {prefix: prefix for prefix in prefixes}, sys.modules[__name__]
    )
    injection.fingerprint_prefix = "backbone." + encoder_prefix(model.backbone, model.family)
    injection.model_ref.append(model)
    model.aptune_injection = injection


# The Injection's view of the classifier (adapters read and write through it).
def describe_arch(model: TransformersVideoClassifier) -> dict[str, Any]:
    backbone = model.backbone
    return {
        "model_type": model.family.model_type,
        "architecture": f"aptune.{type(model).__name__}({type(backbone).__name__})",
        "hidden_size": backbone.config.hidden_size,
        "num_attention_heads": backbone.config.num_attention_heads,
        "depth": model.config.depth,
        "trained_modules": ["fc_norm", "head"],
        "num_classes": model.num_classes,
        **{key: getattr(model.config, key) for key in ATTENTIVE_HEAD_KEYS},
    }


def describe_preprocess(model: TransformersVideoClassifier) -> dict[str, Any]:
    config = model.config
    # the classifier's own input: ImageNet-normalised clips, channels first (it converts them)
    return {
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "num_frames": config.num_frames,
        "input_size": config.img_size,
        "layout": "BCTHW",
    }


def class_names(model: TransformersVideoClassifier) -> list[str] | None:
    return model.class_names


def set_class_names(model: TransformersVideoClassifier, names: list[str]) -> None:
    model.class_names = list(names)


# ------------------------------------------------------------------ building
# Published shapes with random weights, for ``aptune bench`` (nothing is loaded or downloaded):
# model type -> config keys.  V-JEPA 2 ViT-L/16 at 64 frames of 256x256 is transformers'
# VJEPA2Config default; its predictor (unused by a classifier) is shrunk to one layer.
BENCH_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "vjepa2_vitl_fpc64_256": (
        "vjepa2",
        dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            mlp_ratio=4.0,
            patch_size=16,
            tubelet_size=2,
            crop_size=256,
            frames_per_clip=64,
            pred_num_hidden_layers=1,
        ),
    ),
}


def random_transformers_classifier(preset: str, num_classes: int) -> TransformersVideoClassifier:
    """A classifier on an encoder of a published shape with random weights (``method: full``)."""
    transformers = require_transformers()
    model_type, values = BENCH_PRESETS[preset]
    config = transformers.AutoConfig.for_model(model_type, **values)
    backbone = transformers.AutoModel.from_config(config).eval()
    model = TransformersVideoClassifier(backbone, FAMILIES[model_type], num_classes)
    apply_method_to_classifier(model, build_method("full"))
    model.config.name = preset
    return model


def transformers_model_type(path: str | Path) -> str | None:
    """The ``model_type`` of a Hugging Face folder that aptune runs through transformers, else None."""
    folder = Path(path)
    config_path = folder / "config.json"
    if not folder.is_dir() or not config_path.is_file():
        return None
    model_type = read_json_object(config_path).get("model_type")
    known = isinstance(model_type, str) and model_type in FAMILIES
    return model_type if known and model_type != "videomae" else None


def create_transformers_classifier(
    folder: str | Path,
    *,
    num_classes: int | None,
    method: str,
    class_names: list[str] | None = None,
    method_options: dict[str, Any] | None = None,
    readout: dict[str, Any] | None = None,
) -> TransformersVideoClassifier:
    """The folder's encoder (no download: local files only) as a classifier tuned by ``method``."""
    folder = Path(folder)
    family = FAMILIES[transformers_model_type(folder)]
    backbone = _load_encoder(folder)
    if num_classes is None:
        num_classes = len(class_names) if class_names else None
    if num_classes is None:
        raise ConfigError(f"{folder}: give num_classes (or class_names): the head is new for a transformers backbone")
    mean, std = processor_statistics(folder, family)
    model = TransformersVideoClassifier(backbone, family, num_classes, readout, mean, std)
    model.class_names = list(class_names) if class_names else None
    apply_method_to_classifier(model, build_method(method, **(method_options or {})))
    log.info("loaded transformers %s from %s", type(backbone).__name__, folder)
    return model


def _load_encoder(folder: Path) -> nn.Module:
    transformers = require_transformers()
    try:
        backbone = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: transformers could not load it ({_first_line(exc)})") from None
    return backbone.eval()


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("a transformers backbone needs transformers >= 5.18: pip install 'aptune[hf]'") from None
    version = tuple(int(part) for part in transformers.__version__.split(".")[:2] if part.isdigit())
    if version < MINIMUM_TRANSFORMERS:
        raise ConfigError(
            f"transformers {transformers.__version__} is too old for aptune's transformers backbones "
            "(5.5-5.17 load VideoMAE's biases as zeros): pip install 'transformers>=5.18'"
        )
    return transformers


def processor_statistics(folder: Path, family: VideoFamily) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std on [0, 1] pixels that the folder's image/video processor applies, else the family's.

    A processor maps a uint8 pixel x to ((x * rescale_factor - offset) - mean) / std, where
    ViViT's ``offset`` subtracts 1; on p = x / 255 that is (p - m) / s with
    m = (mean + offset) / (255 * rescale_factor) and s = std / (255 * rescale_factor).
    """
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        path = folder / name
        if path.is_file():
            return _statistics_from(read_json_object(path), path, family)
    return family.mean, family.std


def _statistics_from(config: dict[str, Any], path: Path, family: VideoFamily):
    scale = 255.0 * float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
    offset = 1.0 if config.get("offset", family.rescale_offset) else 0.0
    if config.get("do_normalize", True):
        mean = _triple(config.get("image_mean", family.mean), path, "image_mean")
        std = _triple(config.get("image_std", family.std), path, "image_std")
    else:
        mean, std = (0.0,) * 3, (1.0,) * 3
    if scale <= 0 or any(s <= 0 for s in std):
        raise CheckpointError(f"{path}: rescale_factor and image_std must be positive")
    return tuple((m + offset) / scale for m in mean), tuple(s / scale for s in std)


def _triple(value: Any, path: Path, key: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
        raise CheckpointError(f"{path}: '{key}' must be a number or a list of 3 numbers")
    return tuple(float(v) for v in value)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
