"""The registry of tuning methods and the small interface every method implements.

A method is a dataclass of its options with two methods:

* ``attach(model)`` adds the method's modules to a :class:`VisionTransformer` as
  :class:`~aptune.models.vit.BlockExtension` s (``model.add_extension(name, module)``: the
  name is the state-dict prefix of its tensors), or adds nothing (BitFit);
* ``trainable_prefixes()`` names the parameters it trains, by state-dict prefix, or, for a
  method that trains by another rule (BitFit: every bias), an optional ``trains(name)``
  decides (:func:`method_trains`);
* optionally ``init_from_clips(model, clips, generator)``, which the trainer calls once
  with a batch of training clips before the first step (prompts started from data);
* optionally ``LOAD_IGNORES``, the options that do not change what a trained adapter
  computes (dropout, how prompts were started), so loading an adapter does not compare
  them (:func:`options_compared_on_load`); every other option must match the model's;
* class-level capabilities (:data:`CAPABILITIES`), so that no other module keeps its own
  list of method names: :func:`methods_that` derives every such list from the registry;
* optionally ``NO_WEIGHT_DECAY`` (tensor names never weight-decayed, beyond the official
  rule's biases and 1-D tensors) and ``DECAY_OPTIONAL`` (names the official recipe decays
  and ``optim.decay_prompt_scales: false`` exempts: APT's prompt scales);
* a ``mergeable`` method with modules of its own folds them into the backbone weights with
  ``merge(model)`` (LoRA); one that cannot be merged may say why in ``NOT_MERGEABLE_BECAUSE``.

:func:`apply_method` attaches a method and freezes everything else, so which
tensors train is decided in exactly one place per method.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

from torch import nn

from aptune.errors import CheckpointError, ConfigError
from aptune.methods.prompt_init import PROMPT_INITS


class TuningMethod(Protocol):
    name: str

    def attach(self, model: nn.Module) -> None: ...

    def trainable_prefixes(self) -> tuple[str, ...]: ...


METHODS: dict[str, type] = {}

# What a method class may declare it can do (class attributes, False when not declared).
CAPABILITIES = {
    "prompted": "learns prompts (takes num_prompts and prompt_init)",
    "adapter": "adds small trained modules whose size is a rank or a width, not a prompt count",
    "trains_backbone": "trains the backbone's own weights",
    "injectable": "can be added by aptune.inject to a transformers or timm model",
    "mergeable": "can be folded into the backbone by aptune merge",
    "shareable": "leaves the backbone pass per-task only in attention, so tasks share one batch",
}


def register(name: str):
    """Class decorator adding a method to the registry; a duplicate name is a bug."""

    def wrap(cls: type) -> type:
        if name in METHODS:
            raise ValueError(f"tuning method '{name}' is already registered by {METHODS[name]}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def methods_that(capability: str) -> tuple[str, ...]:
    """Names of the registered methods declaring ``capability``, in registration order."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown method capability '{capability}' (valid: {', '.join(CAPABILITIES)})")
    return tuple(name for name, cls in METHODS.items() if getattr(cls, capability, False))


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def method_options(name: str) -> tuple[str, ...]:
    """The option names a method accepts."""
    return tuple(f.name for f in dataclasses.fields(_method_class(name)))


def build_method(name: str, **options: Any) -> TuningMethod:
    cls = _method_class(name)
    valid = method_options(name)
    for key in options:
        if key not in valid:
            raise ConfigError(f"method '{name}' takes no option '{key}' (valid: {', '.join(valid) or 'none'})")
    return cls(**options)


def method_to_dict(method: TuningMethod) -> dict[str, Any]:
    return {"name": method.name, **dataclasses.asdict(method)}


def method_from_dict(values: dict[str, Any], where: str = "method") -> TuningMethod:
    """The method a stored dict describes (an adapter header); types are checked first.

    Options this version does not know (a newer file's) are dropped, and an unknown
    ``prompt_init`` reads as ``uniform``: training-time choices must not block loading.
    """
    values = dict(check_method_dict(values, where))
    name = values.pop("name")
    valid = method_options(name)
    if values.get("prompt_init", "uniform") not in PROMPT_INITS:
        values["prompt_init"] = "uniform"  # a training-time choice: a newer file's value must not block loading
    return build_method(name, **{k: v for k, v in values.items() if k in valid})


# Ranges of stored options; a crafted file must not ask for a billion prompts before any check.
_OPTION_RANGES = {
    "num_prompts": (0, 65536),
    "prompt_start": (0, 255),
    "prompt_end": (0, 255),
    "lora_rank": (1, 65536),
    "adapter_dim": (1, 65536),
}


def check_method_dict(values: Any, where: str = "method") -> dict[str, Any]:
    """Check a stored method dict's name and option types; raises CheckpointError naming ``where``."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{where} is {_short(values)}, expected a JSON object with a 'name'")
    name = values.get("name")
    if not isinstance(name, str) or name not in METHODS:
        raise CheckpointError(
            f"{where} names method {_short(name)}, which this aptune does not have (valid: {', '.join(METHODS)})"
        )
    for field in dataclasses.fields(METHODS[name]):
        if field.name not in values:
            continue
        value, kind = values[field.name], str(field.type)
        if value is None and "None" in kind:
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if kind.startswith("int"):
            low, high = _OPTION_RANGES.get(field.name, (0, None))
            ok = is_int and value >= low and (high is None or value <= high)
            wanted = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        elif kind.startswith("float"):
            ok = (is_int or isinstance(value, float)) and math.isfinite(value)
            wanted = "a finite number"
            if ok and field.name.endswith("dropout"):
                ok, wanted = 0 <= value < 1, "a number in [0, 1)"
        elif kind.startswith("bool"):
            ok, wanted = isinstance(value, bool), "true or false"
        else:
            ok, wanted = isinstance(value, str), "a string"
        if not ok:
            raise CheckpointError(f"{where} option '{field.name}' is {_short(value)}, expected {wanted}")
    return values


def options_compared_on_load(method: TuningMethod) -> tuple[str, ...]:
    """The options an adapter must share with the model it loads into: all but ``LOAD_IGNORES``."""
    ignored = getattr(method, "LOAD_IGNORES", ())
    return tuple(f.name for f in dataclasses.fields(method) if f.name not in ignored)


def _short(value: Any) -> str:
    text = repr(value)  # control characters escaped
    return text if len(text) <= 80 else text[:77] + "..."


def apply_method(model: nn.Module, method: TuningMethod) -> nn.Module:
    """Attach ``method`` to ``model`` and freeze every parameter it does not train."""
    method.attach(model)
    for name, param in model.named_parameters():
        param.requires_grad_(method_trains(method, name))
    model.tuning_method = method
    return model


def trainable_state_dict(model: nn.Module) -> dict:
    """The tensors the model's method trains: exactly what an adapter file holds."""
    method = model.tuning_method
    return {k: v for k, v in model.state_dict().items() if method_trains(method, k)}


def method_trains(method: TuningMethod, name: str) -> bool:
    """Whether ``method`` trains the tensor called ``name``: its ``trains`` rule, else its prefixes."""
    rule = getattr(method, "trains", None)
    return rule(name) if rule is not None else name.startswith(method.trainable_prefixes())


def _method_class(name: str) -> type:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}' (valid: {', '.join(METHODS)})")
    return METHODS[name]
