"""APT in any ``transformers`` model whose attention goes through the attention-function interface.

From transformers 5 on, an attention layer computes its queries, keys and values in the
model's own code (its projections, its biases, V-JEPA 2's 3-D rotary embedding) and then
hands them to a function it looks up by name, ``config._attn_implementation``, in
``ALL_ATTENTION_FUNCTIONS`` (sdpa, eager, flash ...).  That call is the one place where
every such model holds finished keys and values, after its positional treatment, so it is
where APT's prompts go:

* ``ATTENTION_NAME`` is registered once in the interface; it appends the layer's prompt
  keys and values after the tokens' own (prompts carry no position and are never
  rotated), extends the model's attention mask with "attend" columns, and calls the
  function the model used before, with the model's own scaling, dropout and soft-capping.
  The softmax is the model's; what APT adds is :func:`aptune.models.attention.append_kv`
  and :func:`~aptune.models.attention.extend_mask`, the native backbone's own code.
* Only the prompted attention modules look it up: each gets a shallow copy of its config
  naming ``ATTENTION_NAME`` and a :class:`PromptSite` (its prompts, layer index and the
  function it used before).  Every other module of the model (V-JEPA 2's predictor and
  pooler, layers outside the prompted range) is untouched.

Whether a module goes through the interface is read from its class's ``forward`` source,
as transformers itself decides whether a model may switch implementations; a model whose
attention computes the softmax itself (TimeSformer) cannot be prompted this way, and
:func:`interface_attentions` says so in one line.
"""

from __future__ import annotations

import copy
import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from aptune.errors import ConfigError
from aptune.methods.prompt_init import layer_prompts
from aptune.models.attention import append_kv, extend_mask

ATTENTION_NAME = "aptune_prompted"
SITE_ATTRIBUTE = "aptune_prompt_site"


@dataclass
class PromptSite:
    """Where one attention module of a foreign model takes APT's prompts."""

    prompts: nn.Module | None  # the model's AttentionPrompts, registered once at its top as kv_prompts
    layer: int
    inner: Callable  # the attention function the module used before (the model's softmax)


def prompted_interface_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs
):
    """The interface function: the model's own attention over [keys; prompt keys], [values; prompt values]."""
    site: PromptSite | None = module.__dict__.get(SITE_ATTRIBUTE)
    if site is None:
        raise RuntimeError(
            f"{type(module).__name__} names attention '{ATTENTION_NAME}' but was not prompted by aptune.inject"
        )
    extra = None if site.prompts is None else layer_prompts(site.prompts, site.layer, key, value)
    if extra is not None:
        key, value = append_kv(key, value, extra)
        if attention_mask is not None:
            attention_mask = extend_mask(attention_mask, extra[0].shape[-2])
    return site.inner(module, query, key, value, attention_mask, **kwargs)


def register_interface() -> None:
    from transformers import AttentionInterface  # local: transformers is optional

    AttentionInterface.register(ATTENTION_NAME, prompted_interface_attention)


@functools.cache
def calls_attention_interface(module_class: type) -> bool:
    """Whether ``module_class.forward`` looks its attention function up in ``ALL_ATTENTION_FUNCTIONS``."""
    try:
        source = inspect.getsource(module_class.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS.get_interface(" in source


def interface_attentions(root: nn.Module, model_name: str) -> list[nn.Module]:
    """The attention modules under ``root`` that go through the interface, in forward order.

    A module that looks like attention (its class name says so and it holds projections)
    but computes its own softmax makes the model unsupported: prompting only some of its
    layers would silently be another method.
    """
    found, bypassing = [], []
    for module in root.modules():
        if calls_attention_interface(type(module)):
            found.append(module)
        elif type(module).__name__.endswith("SelfAttention") and any(
            isinstance(child, nn.Linear) for child in module.children()
        ):
            bypassing.append(type(module).__name__)
    if bypassing or not found:
        culprit = f"its {bypassing[0]} computes attention itself" if bypassing else "no attention layer was found"
        raise ConfigError(
            f"cannot add APT to {model_name}: {culprit} instead of going through transformers' attention "
            "interface (ALL_ATTENTION_FUNCTIONS), so there is no place to append prompt keys and values"
        )
    return found


def route_through_prompts(module: nn.Module, prompts: nn.Module | None, layer: int) -> None:
    """Make ``module`` call :func:`prompted_interface_attention` with ``prompts`` (None: none) for ``layer``."""
    config = module.config
    module.__dict__[SITE_ATTRIBUTE] = PromptSite(prompts, layer, _current_function(module, config))
    own = copy.copy(config)  # shared by every layer and the model: switch this module alone
    own._attn_implementation_internal = ATTENTION_NAME
    module.config = own


def site_of(module: nn.Module) -> PromptSite:
    return module.__dict__[SITE_ATTRIBUTE]


def _current_function(module: nn.Module, config) -> Callable:
    from transformers import AttentionInterface  # local: transformers is optional

    name = config._attn_implementation
    if name in (None, "eager"):
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise ConfigError(f"{type(module).__name__}: its module defines no eager_attention_forward to fall back on")
        return eager
    if name == ATTENTION_NAME:
        raise ConfigError(f"{type(module).__name__} already has aptune prompts (inject once per model)")
    return AttentionInterface()[name]
