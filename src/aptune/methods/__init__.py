"""Tuning methods: one module each, behind one small interface, in one registry.

:mod:`aptune.methods.registry` holds the registry and the interface; each method lives in
a module of its own and registers itself on import.  The built-in methods are imported
here, in the order their names are listed to users.
"""

# the import order is the order method names are listed to users
# isort: off
from aptune.methods import apt, vpt, linear, full, lora, adaptformer  # noqa: F401  (registers them)
# isort: on

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
    methods_that,
    options_compared_on_load,
    register,
    trainable_state_dict,
)

__all__ = [
    "CAPABILITIES",
    "METHODS",
    "TuningMethod",
    "apply_method",
    "build_method",
    "check_method_dict",
    "method_from_dict",
    "method_names",
    "method_options",
    "method_to_dict",
    "methods_that",
    "options_compared_on_load",
    "register",
    "trainable_state_dict",
]
