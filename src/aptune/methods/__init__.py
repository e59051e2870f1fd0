"""Tuning methods: one module each, one small interface, one registry.

A method is a dataclass of its options with two methods:

* ``attach(model)`` adds the method's modules to a :class:`VisionTransformer`
  (through its ``kv_prompts`` / ``token_prompts`` slots, or its own submodules);
* ``trainable_prefixes()`` names the parameters it trains, by state-dict prefix;
* optionally ``init_from_clips(model, clips, generator)``, which the trainer calls once
  with a batch of training clips before the first step (prompts started from data).

:func:`apply_method` attaches a method and freezes everything else, so which
tensors train is decided in exactly one place per method.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from torch import nn

from aptune.config import PROMPT_INITS
from aptune.errors import ConfigError


class TuningMethod(Protocol):
    name: str

    def attach(self, model: nn.Module) -> None: ...

    def trainable_prefixes(self) -> tuple[str, ...]: ...


METHODS: dict[str, type] = {}


def register(name: str):
    """Class decorator adding a method to the registry; a duplicate name is a bug."""

    def wrap(cls: type) -> type:
        if name in METHODS:
            raise ValueError(f"tuning method '{name}' is already registered by {METHODS[name]}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def method_options(name: str) -> tuple[str, ...]:
    """The option names a method accepts."""
    return tuple(f.name for f in dataclasses.fields(_method_class(name)))


def build_method(name: str, **options: Any) -> TuningMethod:
    cls = _method_class(name)
    valid = method_options(name)
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"method '{name}' takes no option '{key}' (valid: {', '.join(valid) or 'none'})"
            )
    return cls(**options)


def method_to_dict(method: TuningMethod) -> dict[str, Any]:
    return {"name": method.name, **dataclasses.asdict(method)}


def method_from_dict(values: dict[str, Any]) -> TuningMethod:
    values = dict(values)
    name = values.pop("name")
    valid = method_options(name)
    if values.get("prompt_init", "uniform") not in PROMPT_INITS:
        values["prompt_init"] = "uniform"  # a training-time choice: a newer file's value must not block loading
    return build_method(name, **{k: v for k, v in values.items() if k in valid})


def apply_method(model: nn.Module, method: TuningMethod) -> nn.Module:
    """Attach ``method`` to ``model`` and freeze every parameter it does not train."""
    method.attach(model)
    prefixes = method.trainable_prefixes()
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
    model.tuning_method = method
    return model


def trainable_state_dict(model: nn.Module) -> dict:
    """The tensors the model's method trains: exactly what an adapter file holds."""
    prefixes = model.tuning_method.trainable_prefixes()
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


def _method_class(name: str) -> type:
    _import_builtin_methods()
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}' (valid: {', '.join(METHODS)})")
    return METHODS[name]


def _import_builtin_methods() -> None:
    # imported lazily so that each method module can import this registry
    from aptune.methods import adaptformer, apt, full, linear, lora, vpt  # noqa: F401
