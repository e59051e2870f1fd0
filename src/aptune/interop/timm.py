"""APT for ``timm`` ``VisionTransformer`` image models, changed in place.

Written against timm's public structure, without importing timm: a model with
``blocks`` (an ``nn.Sequential`` of blocks whose ``attn`` has a fused ``qkv``
Linear, ``num_heads``, ``head_dim``, ``scale``, ``q_norm`` / ``k_norm``,
``attn_drop``, an optional ``norm`` and ``proj`` / ``proj_drop``),
``num_prefix_tokens``, ``norm``, ``fc_norm`` and ``head``.

Each ``blocks[i].attn`` is replaced by :class:`PromptedTimmAttention`, which
holds the same submodules (state-dict names unchanged) and appends the layer's
prompt keys/values, shared by all heads as in native APT, after the (optional)
key normalisation: the prompts are learned directly in the space the
normalised keys live in.  The class and register tokens are left as timm
handles them: they are ordinary queries and keys, they attend to the prompts
like the patch tokens do, and timm's own pooling (``token`` / ``avg`` /
``map``) reads the block outputs, whose length is unchanged.  An ``attn_mask``
passed by timm is extended with "attend" entries for the prompts.

Trained: the prompts and scales, ``head``, and the pre-logits LayerNorm:
``fc_norm`` when timm uses it (``global_pool='avg'`` models), otherwise the
final ``norm`` (``global_pool='token'`` models normalise every token before
taking the class token); ``attn_pool`` too when ``global_pool='map'``.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import Tensor, nn

from aptune.errors import ConfigError
from aptune.interop.inject import Injection, build_prompt_modules
from aptune.methods.prompt_init import layer_prompts
from aptune.models.attention import prompted_attention


class PromptedTimmAttention(nn.Module):
    """timm ``Attention`` with the layer's prompts appended to its keys and values."""

    def __init__(self, original: nn.Module, prompts: nn.Module, layer_index: int) -> None:
        super().__init__()
        self.num_heads = original.num_heads
        self.head_dim = getattr(original, "head_dim", original.qkv.out_features // (3 * original.num_heads))
        self.scale = getattr(original, "scale", self.head_dim**-0.5)
        self.qkv = original.qkv
        self.q_norm = _submodule(original, "q_norm", nn.Identity())
        self.k_norm = _submodule(original, "k_norm", nn.Identity())
        self.attn_drop = _submodule(original, "attn_drop", nn.Dropout(0.0))
        self.norm = _submodule(original, "norm", nn.Identity())
        self.proj = original.proj
        self.proj_drop = _submodule(original, "proj_drop", nn.Dropout(0.0))
        self.training = original.training
        self.layer_index = layer_index
        object.__setattr__(self, "prompts", prompts)  # registered once, as the model's kv_prompts

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False, **kwargs: Any) -> Tensor:
        if is_causal:
            raise ValueError("APT prompts are not defined for causal attention")
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        extra_kv = layer_prompts(self.prompts, self.layer_index, k, v)
        dropout = self.attn_drop.p if self.training else 0.0
        out = prompted_attention(q, k, v, extra_kv, attn_mask=attn_mask, dropout_p=dropout, scale=self.scale)
        out = out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(self.norm(out)))


def _submodule(module: nn.Module, name: str, default: nn.Module) -> nn.Module:
    found = getattr(module, name, None)
    return default if found is None else found


def inject_timm(model: nn.Module, tuning) -> Injection:
    if tuning.name.startswith("vpt"):
        raise ConfigError("inject: VPT on timm models is not supported yet; use method='apt'")
    blocks = model.blocks
    for index, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if type(attn).__name__ != "Attention" or not isinstance(getattr(attn, "qkv", None), nn.Linear):
            raise ConfigError(
                f"inject: blocks[{index}].attn is {type(attn).__name__}, expected timm's Attention "
                "with a fused qkv Linear (parallel, differential and RoPE attention are not supported)"
            )
    embed_dim = blocks[0].attn.qkv.in_features
    num_heads = blocks[0].attn.num_heads
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", 16)
    device = next(model.parameters()).device
    kv_prompts, _ = build_prompt_modules(
        tuning,
        depth=len(blocks),
        embed_dim=embed_dim,
        num_heads=num_heads,
        patch_size=int(patch[0] if isinstance(patch, (list, tuple)) else patch),
        device=device,
    )
    if kv_prompts is not None:
        if kv_prompts.keys.shape[-1] != blocks[0].attn.head_dim:
            raise ConfigError("inject: timm attention with attn_head_dim != embed_dim / num_heads is not supported")
        model.kv_prompts = kv_prompts
        for index, block in enumerate(blocks):
            block.attn = PromptedTimmAttention(block.attn, kv_prompts, index)

    name_map = {"kv_prompts.": "kv_prompts."}
    for name in _trained_head_modules(model):
        name_map[f"{name}."] = f"{name}."
    return Injection.from_family_module("timm-vit", tuning, name_map, sys.modules[__name__])


def _has_parameters(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


def _trained_head_modules(model: nn.Module) -> list[str]:
    names = ["head"]
    if _has_parameters(getattr(model, "fc_norm", None)):
        names.append("fc_norm")
    elif _has_parameters(getattr(model, "norm", None)):
        names.append("norm")
    if getattr(model, "global_pool", None) == "map" and _has_parameters(getattr(model, "attn_pool", None)):
        names.append("attn_pool")
    return names


def describe_arch(model: nn.Module) -> dict[str, Any]:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    blocks = model.blocks
    head = getattr(model, "head", None)
    return {
        "family": "timm-vit",
        "architecture": cfg.get("architecture", type(model).__name__),
        "embed_dim": blocks[0].attn.qkv.in_features,
        "depth": len(blocks),
        "num_heads": blocks[0].attn.num_heads,
        "num_prefix_tokens": int(getattr(model, "num_prefix_tokens", 1)),
        "global_pool": getattr(model, "global_pool", None),
        "num_classes": head.out_features if isinstance(head, nn.Linear) else 0,
    }


def describe_preprocess(model: nn.Module) -> dict[str, Any]:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    out = {"layout": "BCHW"}
    for key in ("mean", "std", "input_size", "crop_pct", "interpolation"):
        if key in cfg:
            value = cfg[key]
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def class_names(model: nn.Module) -> list[str] | None:
    names = getattr(model, "class_names", None)
    return list(names) if names else None


def set_class_names(model: nn.Module, names: list[str]) -> None:
    model.class_names = list(names)
