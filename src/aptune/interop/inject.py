"""``aptune.inject``: add APT (or VPT) in place to a model the user already has.

Supported models (detected by their structure, the libraries imported lazily):

* ``transformers`` ``VideoMAEModel`` / ``VideoMAEForVideoClassification``
  (see :mod:`aptune.interop.hf`);
* ``timm`` ``VisionTransformer`` image models (see :mod:`aptune.interop.timm`).

The prompts are built by the same method classes as for our own backbone
(``methods/apt.py``, ``methods/vpt.py``), so initialisation, layer ranges and
the reparameterisation are identical.  They live at the top of the user's
model under our names (``kv_prompts.keys`` ...), everything else is frozen
except the classifier, and the user keeps their own training loop.

What the injection did is recorded as ``model.aptune_injection`` (an
:class:`Injection`); :func:`aptune.save_adapter` / :func:`aptune.load_adapter`
use it to write and read adapters in aptune's tensor names, so an adapter
trained on the native model loads into the injected Hugging Face model of the
same weights, and back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from aptune._version import __version__
from aptune.errors import CheckpointError, ConfigError
from aptune.methods import build_method, method_to_dict, methods_that
from aptune.methods.prompt_init import KeyValueSampler
from aptune.models.checkpoints import BACKBONE_PREFIXES, convert_huggingface

log = logging.getLogger(__name__)

INJECTABLE_METHODS = methods_that("injectable")


@dataclass
class Injection:
    """What :func:`inject` changed in a foreign model, and how its tensors map to adapter names.

    ``name_map`` maps a prefix of the model's own state-dict names to the
    prefix used in adapter files (e.g. ``classifier.`` -> ``head.``).  The
    trained tensors are exactly the model parameters under those prefixes.
    """

    family: str  # "videomae" (shares adapters with the native model) or "timm-vit"
    method: Any  # the method dataclass (APT, VPTDeep, ...)
    name_map: dict[str, str]
    # functions of the model (not closures over it, so a deep copy of the model stays consistent)
    describe_arch: Callable[[nn.Module], dict[str, Any]]
    describe_preprocess: Callable[[nn.Module], dict[str, Any]]
    get_class_names: Callable[[nn.Module], list[str] | None]
    set_class_names: Callable[[nn.Module, list[str]], None]
    model_ref: list = field(default_factory=list, repr=False)  # [model]: no nn.Module cycle
    # the fingerprint covers the frozen tensors under this prefix only (the video encoder: not
    # V-JEPA 2's predictor, which a classification checkpoint may leave randomly initialised)
    fingerprint_prefix: str = ""

    @classmethod
    def from_family_module(cls, family: str, method: Any, name_map: dict[str, str], module: Any) -> Injection:
        """An injection whose model functions are those an interop module defines for its family:
        ``describe_arch``, ``describe_preprocess``, ``class_names`` and ``set_class_names``."""
        return cls(
            family,
            method,
            name_map,
            module.describe_arch,
            module.describe_preprocess,
            module.class_names,
            module.set_class_names,
        )

    @property
    def model(self) -> nn.Module:
        return self.model_ref[0]

    def own_to_adapter(self, name: str) -> str | None:
        for own, adapter in self.name_map.items():
            if name.startswith(own):
                return adapter + name[len(own) :]
        return None

    def adapter_to_own(self, name: str) -> str | None:
        for own, adapter in self.name_map.items():
            if name.startswith(adapter):
                return own + name[len(adapter) :]
        return None

    def trainable_prefixes(self) -> tuple[str, ...]:
        return tuple(self.name_map)

    def adapter_state(self) -> dict[str, Tensor]:
        """The trained tensors under their adapter names."""
        state = {}
        for name, value in self.model.state_dict().items():
            adapter_name = self.own_to_adapter(name)
            if adapter_name is not None:
                state[adapter_name] = value
        return state

    def frozen_state(self) -> dict[str, Tensor]:
        """Every tensor of the model that the method does not train, under the model's own names."""
        return {name: value for name, value in self.model.state_dict().items() if self.own_to_adapter(name) is None}

    def backbone_state(self, frozen: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The frozen backbone under the names its fingerprint is taken over.

        Hugging Face VideoMAE: aptune's own names (``patch_embed.*``, ``blocks.*``, q/k/v fused), so
        the injected model and ``create_model(pretrained=the same folder)`` agree.  timm: timm's names.
        """
        frozen = self.frozen_state() if frozen is None else frozen
        if self.family != "videomae":
            return {name: value for name, value in frozen.items() if name.startswith(self.fingerprint_prefix)}

        converted, _ = convert_huggingface(frozen, "<injected model>")
        return {name: value for name, value in converted.items() if name.startswith(BACKBONE_PREFIXES)}

    def load_adapter_state(self, tensors: dict[str, Tensor]) -> None:
        own = {self.adapter_to_own(k): v for k, v in tensors.items()}
        self.model.load_state_dict(own, strict=False)

    def class_names(self) -> list[str] | None:
        return self.get_class_names(self.model)

    def apply_class_names(self, names: list[str]) -> None:
        self.set_class_names(self.model, list(names))

    def adapter_metadata(self, preprocess: dict[str, Any] | None = None) -> dict[str, str]:
        # local: adapters builds models through the factory, which builds transformers backbones from here
        from aptune.adapters import FORMAT_VERSION

        return {
            "format": "aptune-adapter",
            "format_version": str(FORMAT_VERSION),
            "aptune_version": __version__,
            "method": json.dumps(method_to_dict(self.method)),
            "arch": json.dumps(self.describe_arch(self.model)),
            "class_names": json.dumps(self.get_class_names(self.model)),
            "preprocess": json.dumps({**self.describe_preprocess(self.model), **(preprocess or {})}),
            "backbone_family": self.family,
        }


def inject(
    model: nn.Module,
    method: str = "apt",
    *,
    num_prompts: int | None = None,
    prompt_start: int | None = None,
    prompt_end: int | None = None,
    reparam: bool | None = None,
    prompt_dropout: float | None = None,
    layers: range | list[int] | tuple[int, ...] | None = None,
) -> nn.Module:
    """Add ``method`` in place to a ``transformers`` video model or a ``timm`` VisionTransformer.

    ``method`` is ``"apt"`` (prompts appended to each layer's keys and values),
    ``"vpt-deep"`` / ``"vpt-shallow"`` (prompt tokens; transformers VideoMAE only)
    or ``"linear"``.  ``layers`` (e.g. ``range(4, 12)``) is the consecutive block of
    layers to prompt, another way to give ``prompt_start`` / ``prompt_end``.  Options
    left as None take the method's defaults.  Every parameter is frozen except the
    prompts (and their scales) and the classifier: on a transformers model, every
    module outside ``model.base_model`` (``classifier``, ``fc_norm``, V-JEPA 2's
    attentive ``pooler``, ...); on timm, ``head`` and ``fc_norm``, or ``norm`` when
    ``fc_norm`` is an identity, plus ``attn_pool`` for ``global_pool='map'``.
    Returns the same model.
    """
    if getattr(model, "aptune_injection", None) is not None:
        raise ConfigError("this model already has aptune prompts injected; inject once per model")
    if method not in INJECTABLE_METHODS:
        raise ConfigError(f"inject supports methods {', '.join(INJECTABLE_METHODS)}, not '{method}'")
    if layers is not None:
        if prompt_start is not None or prompt_end is not None:
            raise ConfigError("inject: give layers or prompt_start/prompt_end, not both")
        prompt_start, prompt_end = layer_block(layers)
    options = {
        "num_prompts": num_prompts,
        "prompt_start": prompt_start,
        "prompt_end": prompt_end,
        "reparam": reparam,
        "prompt_dropout": prompt_dropout,
    }
    options = {k: v for k, v in options.items() if v is not None}
    tuning = build_method(method, **options)  # an option the method does not take is an error there

    if _is_transformers_model(model):
        from aptune.interop.transformers_video import inject_transformers

        injection = inject_transformers(model, tuning)
    elif _looks_like_timm_vit(model):
        from aptune.interop.timm import inject_timm

        injection = inject_timm(model, tuning)
    else:
        raise ConfigError(
            f"cannot inject into {type(model).__module__}.{type(model).__name__}: supported are "
            "transformers video models (VideoMAE, V-JEPA 2, ViViT, VideoPrism) and timm VisionTransformer "
            "(for aptune's own backbone use aptune.create_model(..., method=...))"
        )
    injection.model_ref.append(model)
    model.aptune_injection = injection
    prefixes = injection.trainable_prefixes()
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
    return model


def layer_block(layers) -> tuple[int, int]:
    """``range(4, 12)`` or ``[4, 5, ..., 11]`` -> (4, 11): APT prompts one consecutive block of layers."""
    indices = list(layers)
    if not indices or any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
        raise ConfigError(f"inject: layers must be a non-empty range or list of layer indices, not {layers!r}")
    if indices != list(range(indices[0], indices[0] + len(indices))):
        raise ConfigError(
            f"inject: layers {indices} are not consecutive; APT prompts one block of layers, "
            f"e.g. layers=range({min(indices)}, {max(indices) + 1})"
        )
    return indices[0], indices[-1]


@torch.no_grad()
def init_prompts_from_clips(model: nn.Module, inputs: Tensor, seed: int = 0) -> None:
    """Start every prompted layer's prompts from real tokens of ``inputs`` (``prompt_init: tokens``).

    ``inputs`` is one batch as the model's forward takes it: ``pixel_values`` of shape
    (B, T, C, H, W) for a Hugging Face VideoMAE, images or clips for a timm ViT, and
    (B, C, T, H, W) clips for aptune's own model.  The frozen model runs once without prompts;
    each layer's prompt keys and values become copies of keys and values of random tokens of
    that layer (after timm's ``k_norm``), so a backbone with sharp attention attends to them
    from the first step; on timm the class and register tokens are among those drawn.  Only
    when every prompted layer was filled does the adapter record ``prompt_init: tokens``.
    Call it once, before training and before any DistributedDataParallel wrapping; it is
    deterministic for a given ``seed``.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ConfigError(
            "call init_prompts_from_clips before wrapping the model in DistributedDataParallel "
            "(DDP then broadcasts rank 0's prompts to every rank)"
        )
    generator = torch.Generator().manual_seed(seed)
    injection = injection_of(model)
    method = injection.method if injection is not None else getattr(model, "tuning_method", None)
    if method is None or not hasattr(method, "init_from_clips"):
        raise ConfigError(
            "init_prompts_from_clips needs a model with prompts: aptune.create_model(..., "
            "method='apt' or 'vpt-*') or aptune.inject(model, 'apt')"
        )
    if injection is None:
        previous, method.prompt_init = method.prompt_init, "tokens"
        try:
            method.init_from_clips(model, inputs, generator)
        except BaseException:
            method.prompt_init = previous  # the adapter must not claim a start that did not happen
            raise
        return
    if method.name != "apt":
        raise ConfigError(f"init_prompts_from_clips on an injected model supports 'apt', not '{method.name}'")
    prompts = getattr(model, "kv_prompts", None)
    if prompts is None:
        raise ConfigError("init_prompts_from_clips: this model has no prompt keys and values (num_prompts=0)")
    sampler = _sample_without_prompts(model, injection.family, prompts, inputs, generator)
    expected = set(range(prompts.first_layer, prompts.last_layer + 1))
    if set(sampler.samples) != expected:
        raise ConfigError(
            f"init_prompts_from_clips: the forward pass reached prompted layers "
            f"{sorted(sampler.samples)}, not all of {sorted(expected)}"
        )
    for layer, (keys, values) in sampler.samples.items():
        prompts.keys[layer - prompts.first_layer].copy_(keys)
        prompts.values[layer - prompts.first_layer].copy_(values)
    method.prompt_init = "tokens"


def _sample_without_prompts(
    model: nn.Module, family: str, prompts: nn.Module, inputs: Tensor, generator: torch.Generator
) -> KeyValueSampler:
    """One eval-mode forward pass in which the injected attentions hand their keys/values to a sampler."""
    sampler = KeyValueSampler(prompts.keys.shape[1], generator)
    modes = {module: module.training for module in model.modules()}  # the caller's mix, restored as it was
    prompts.sampler = sampler
    try:
        model.eval()
        if family == "timm-vit" or not _is_transformers_model(model):
            model(inputs)  # timm, or aptune's classifier on a transformers encoder: its own clips
        else:
            from aptune.interop.transformers_video import FAMILIES

            model(**{FAMILIES[family].pixel_argument: inputs})
    finally:
        del prompts.sampler
        for module, training in modes.items():
            module.training = training
    return sampler


def build_prompt_modules(
    tuning, depth: int, embed_dim: int, num_heads: int, patch_size: int, device: torch.device
) -> tuple[nn.Module | None, nn.Module | None]:
    """(kv_prompts, token_prompts) exactly as the method builds them for our own backbone.

    The method's ``attach`` only reads the depth, the widths, the patch size and
    the device, so it runs on a small stand-in with those; initialisation and
    layer-range checks are therefore the native ones.
    """
    added: dict[str, nn.Module] = {}
    stand_in = SimpleNamespace(
        blocks=range(depth),
        config=SimpleNamespace(
            embed_dim=embed_dim, head_dim=embed_dim // num_heads, num_heads=num_heads, patch_size=patch_size
        ),
        fc_norm=SimpleNamespace(weight=torch.empty(0, device=device)),
        add_extension=added.__setitem__,
    )
    tuning.attach(stand_in)
    return added.get("kv_prompts"), added.get("token_prompts")


def injection_of(model: nn.Module) -> Injection | None:
    return getattr(model, "aptune_injection", None)


def check_family(meta: dict[str, Any], family: str, source: str) -> None:
    found = meta.get("backbone_family", "videomae")
    if found != family:
        raise CheckpointError(f"{source}: adapter was trained on a '{found}' backbone, this model is '{family}'")


def _is_transformers_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "base_model")


def _looks_like_timm_vit(model: nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    return (
        hasattr(model, "num_prefix_tokens")
        and hasattr(model, "forward_head")
        and isinstance(blocks, nn.Sequential)
        and len(blocks) > 0
        and hasattr(blocks[0], "attn")
        and hasattr(blocks[0].attn, "qkv")
    )
