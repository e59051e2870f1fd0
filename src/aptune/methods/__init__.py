"""Tuning methods: one module each, behind one small interface, in one registry.

:mod:`aptune.methods.registry` holds the registry and the interface; each method lives in
a module of its own and registers itself on import.  Every module of this package is
imported here, the long-standing methods first, in the order their names are listed to users.
"""

import importlib
import pkgutil

from aptune.methods.registry import (
    CAPABILITIES,
    METHODS,
    TuningMethod,
    apply_method,
    build_method,
    check_method_dict,
    method_from_dict,
    method_names,
    method_options,
    method_to_dict,
    method_trains,
    methods_that,
    options_compared_on_load,
    register,
    trainable_state_dict,
)

# the built-in methods in the order their names are listed to users; any other module of this
# package (a method added later) is imported after them, so adding one needs no edit here
_LISTED_FIRST = ("apt", "vpt", "linear", "full", "lora", "adaptformer")
_NOT_METHODS = ("registry", "prompt_init")


def _import_method_modules() -> None:
    found = sorted(info.name for info in pkgutil.iter_modules(__path__) if info.name not in _NOT_METHODS)
    for name in [*_LISTED_FIRST, *(n for n in found if n not in _LISTED_FIRST)]:
        importlib.import_module(f"{__name__}.{name}")


_import_method_modules()

__all__ = [
    "CAPABILITIES",
    "METHODS",
    "TuningMethod",
    "apply_method",
    "build_method",
    "check_method_dict",
    "method_from_dict",
    "method_trains",
    "method_names",
    "method_options",
    "method_to_dict",
    "methods_that",
    "options_compared_on_load",
    "register",
    "trainable_state_dict",
]
