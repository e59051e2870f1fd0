"""The VideoMAE vision transformer, with one extension protocol for tuning methods.

Architecture (Tong et al., NeurIPS 2022): Conv3d tubelet patch embedding, a fixed
1-D sin-cos position table over the flattened (t, h, w) token grid, pre-norm
blocks with GELU MLPs, mean pooling over tokens, ``fc_norm`` and a linear ``head``.
State-dict names match the original VideoMAE code so its checkpoints load as-is.
``head="attentive"`` (an aptune option, :mod:`aptune.models.heads`) pools with a learned
attentive probe instead of the mean; the classifier stays ``head.weight`` / ``head.bias``.

Tuning methods never patch forward functions and this file names none of them.  A
method adds :class:`BlockExtension` modules with :meth:`VisionTransformer.add_extension`;
once per forward it calls each extension's ``prepare()`` (and ``release()`` when the
blocks are done, so nothing computed for one forward outlives it), and before every
block it asks each extension covering that block for

* ``tokens_before(layer, x, num_patches)`` -- the token sequence entering the block
  (prompt tokens appended or replaced: Visual Prompt Tuning);
* ``block_inputs(layer)`` -- keyword arguments of :meth:`Block.forward`: ``extra_kv``
  (keys/values appended in attention: APT), ``qkv_delta`` (an addition to the fused
  qkv projection: LoRA) or ``mlp_side`` (a branch beside the MLP: AdaptFormer).

Extensions are registered under the names the method chooses, so their tensors keep
stable state-dict names (``kv_prompts.keys`` ...), and each says ``first_layer``, so the
frozen blocks before it run without building an autograd graph.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from aptune.models.attention import Attention, ExtraKV, QKVDelta
from aptune.models.heads import HEADS, AttentiveHead

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ViTConfig:
    """Everything needed to rebuild the backbone; stored in every adapter file."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    # the MLP's hidden width when it is not int(embed_dim * mlp_ratio) exactly: ViT-g/14's 6144
    # is 1408 * 48/11, a ratio no float holds; None: int(embed_dim * mlp_ratio), as VideoMAE sizes it
    mlp_hidden_dim: int | None = None
    patch_size: int = 16
    tubelet_size: int = 2
    num_frames: int = 16
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 400
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    fc_norm_eps: float | None = None  # None: layer_norm_eps (VideoMAE); transformers uses 1e-5
    layer_scale_init: float = 0.0  # > 0 adds VideoMAE's gamma_1 / gamma_2
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0
    head_init_scale: float = 0.001
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    name: str = field(default="custom", compare=False)
    # the readout: "linear" (mean pooling, VideoMAE and the APT paper) or "attentive" (aptune option)
    head: str = "linear"
    attentive_queries: int = 1
    attentive_heads: int | None = None  # None: the backbone's num_heads

    def __post_init__(self) -> None:
        if self.head == "attentive" and self.attentive_heads is None:
            self.attentive_heads = self.num_heads  # recorded as a number, so adapters compare it

    @property
    def grid(self) -> tuple[int, int, int]:
        side = self.img_size // self.patch_size
        return (self.num_frames // self.tubelet_size, side, side)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_width(self) -> int:
        """Hidden units of every block's MLP."""
        return self.mlp_hidden_dim if self.mlp_hidden_dim is not None else int(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        if values["mlp_hidden_dim"] is None:  # left out, so headers of such models read as before the field
            del values["mlp_hidden_dim"]
        if self.head == "linear":  # a linear head's files stay exactly as before the option existed
            for key in ATTENTIVE_HEAD_KEYS:
                values.pop(key)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> ViTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        clean = {k: v for k, v in values.items() if k in known}
        for key in ("mean", "std"):
            if key in clean:
                clean[key] = tuple(clean[key])
        return cls(**clean)


# the ViTConfig fields of the readout, absent from a linear-head model's recorded arch
ATTENTIVE_HEAD_KEYS = ("head", "attentive_queries", "attentive_heads")

PRESETS: dict[str, dict] = {
    "vit_small_patch16_224": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge_patch16_224": dict(embed_dim=1280, depth=32, num_heads=16),
    # VideoMAE V2's ViT-g/14 (Wang et al., CVPR 2023; the ViT-g shape of Zhai et al. 2022): its
    # official model is built with patch 14, width 1408, depth 40, 16 heads, mlp_ratio 48/11,
    # qkv bias (q_bias/v_bias), LayerNorm eps 1e-6, no layer scale (init_values 0), the fixed
    # sin-cos table and mean pooling + fc_norm: the defaults here but for the shape
    "vit_giant_patch14_224": dict(
        embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, mlp_hidden_dim=6144, patch_size=14
    ),
}
# what an explicit MLP width in a preset is tied to: overriding either drops it
_MLP_WIDTH_TIED_TO = ("embed_dim", "mlp_ratio")


def arch_config(arch: str | None = None, **overrides) -> ViTConfig:
    """A preset by name (or the defaults) with keyword overrides applied."""
    values: dict = {}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if arch is not None:
        if arch not in PRESETS:
            raise KeyError(f"unknown arch '{arch}' (valid: {', '.join(PRESETS)})")
        values.update(PRESETS[arch], name=arch)
        if any(k in overrides and overrides[k] != values.get(k) for k in _MLP_WIDTH_TIED_TO):
            values.pop("mlp_hidden_dim", None)  # another width or ratio: the preset's 6144 no longer applies
    values.update(overrides)
    return ViTConfig.from_dict(values)


def sincos_position_table(num_positions: int, dim: int) -> Tensor:
    """VideoMAE's fixed table: position / 10000^(2*(j//2)/dim), sin on even j, cos on odd j."""
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponents = 2.0 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = positions / torch.pow(10000.0, exponents)[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32)


def resize_position_table(table: Tensor, src_grid: tuple[int, int, int], dst_grid: tuple[int, int, int]) -> Tensor:
    """Trilinearly resample a (N, D) table laid out on ``src_grid`` to ``dst_grid``."""
    if tuple(src_grid) == tuple(dst_grid):
        return table
    dim = table.shape[-1]
    volume = table.reshape(1, *src_grid, dim).permute(0, 4, 1, 2, 3)
    volume = F.interpolate(volume, size=tuple(dst_grid), mode="trilinear", align_corners=False)
    return volume.permute(0, 2, 3, 4, 1).reshape(-1, dim)


class PatchEmbed(nn.Module):
    """Non-overlapping tubelets (tubelet x patch x patch) projected to embed_dim by a Conv3d."""

    def __init__(self, patch_size: int, tubelet_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        x = self.proj(x)  # (B, D, T', H', W')
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def hidden(self, x: Tensor) -> Tensor:
        return self.act(self.fc1(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.hidden(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch for a random subset of samples."""

    def __init__(self, prob: float) -> None:
        super().__init__()
        self.prob = prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.prob == 0.0:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    def __init__(self, config: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(dim, config.num_heads, qkv_bias=config.qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, config.mlp_width)
        if config.layer_scale_init > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), config.layer_scale_init))
            self.gamma_2 = nn.Parameter(torch.full((dim,), config.layer_scale_init))
        else:
            self.gamma_1 = self.gamma_2 = None
        # model.recompute_mlp: redo norm2, fc1 and GELU in the backward instead of keeping their outputs
        self.recompute_mlp = False
        # model.recompute_qkv: redo norm1 and the q/k/v projection in the backward (see _attention)
        self.recompute_qkv = False

    def forward(
        self,
        x: Tensor,
        extra_kv: ExtraKV | None = None,
        qkv_delta: QKVDelta | None = None,
        mlp_side: Callable[[Tensor], Tensor] | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        attn = self._attention(x, extra_kv, qkv_delta, attn_mask)
        if self.gamma_1 is not None:
            attn = self.gamma_1 * attn
        x = x + self.drop_path(attn)
        mlp = self.mlp.drop(self.mlp.fc2(self._mlp_hidden(x)))
        if self.gamma_2 is not None:
            mlp = self.gamma_2 * mlp
        out = x + self.drop_path(mlp)
        if mlp_side is not None:
            out = out + mlp_side(x)  # a parallel adapter reads the same stream as the MLP
        return out

    def _attention(self, x: Tensor, extra_kv, qkv_delta, attn_mask) -> Tensor:
        """The attention branch, proj(attend(norm1(x)))."""
        attn = self.attn
        if self.recompute_qkv and torch.is_grad_enabled() and self._qkv_kept_for_backward(x, qkv_delta):
            # Selective recomputation: autograd keeps x (the residual, which it keeps anyway) and
            # the attention kernel's outputs, not norm1's output nor q, k and v (3 N x D, the
            # widest tensors the attention keeps), and redoes norm1, the projection and the
            # prompt append in the backward.  The kernel itself is not redone: its outputs are
            # kept (_keep_attention_outputs), so the cost is one q/k/v product, not a forward.
            heads = checkpoint(
                self._attend_normed,
                x,
                extra_kv,
                qkv_delta,
                attn_mask,
                use_reentrant=False,
                context_fn=_keep_attention_outputs,
            )
        else:
            heads = attn.attend(self.norm1(x), extra_kv, qkv_delta, attn_mask)
        return attn.proj_drop(attn.proj(heads))

    def _qkv_kept_for_backward(self, x: Tensor, qkv_delta) -> bool:
        """Whether autograd keeps this block's q, k and v: not when none of them needs a gradient
        (the first block APT prompts, whose prompts-only backward keeps q and the output only)."""
        attn = self.attn
        sources = (self.norm1.weight, self.norm1.bias, attn.qkv.weight, attn.q_bias, attn.k_bias, attn.v_bias)
        return x.requires_grad or qkv_delta is not None or any(p is not None and p.requires_grad for p in sources)

    def _attend_normed(self, x: Tensor, extra_kv, qkv_delta, attn_mask) -> Tensor:
        return self.attn.attend(self.norm1(x), extra_kv, qkv_delta, attn_mask)

    def _mlp_hidden(self, x: Tensor) -> Tensor:
        """GELU(fc1(norm2(x))), the MLP's 4D-wide hidden activation."""
        if self.recompute_mlp and torch.is_grad_enabled():
            # autograd then keeps only x (D wide, also the residual) and redoes norm2, fc1 and GELU
            # in the backward, instead of keeping norm2's input and GELU's 4D-wide input; with fc2
            # frozen (every method but full and BitFit) nothing else needs the hidden activation
            return checkpoint(self._hidden_of, x, use_reentrant=False)
        return self._hidden_of(x)

    def _hidden_of(self, x: Tensor) -> Tensor:
        return self.mlp.hidden(self.norm2(x))


# The fused attention kernels (CPU flash, CUDA flash, memory-efficient, cuDNN): those a
# recomputation keeps the outputs of; whatever this torch build lacks is left out.
_ATTENTION_KERNELS = frozenset(
    getattr(torch.ops.aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(torch.ops.aten, name)
)


def _attention_kernel_policy(_context, op, *_args, **_kwargs) -> CheckpointPolicy:
    # outputs of the attention kernel kept, everything else (norm, products, concatenation)
    # redone; on a path without a fused kernel (the math fallback) the attention is redone too
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_KERNELS else CheckpointPolicy.PREFER_RECOMPUTE


def _keep_attention_outputs():
    return create_selective_checkpoint_contexts(_attention_kernel_policy)


class BlockExtension(nn.Module):
    """A tuning method's module acting on blocks ``first_layer``..``last_layer`` (inclusive).

    Subclasses override the hooks they need; the defaults change nothing.  The model
    calls them only for the blocks in the range.
    """

    def __init__(self, first_layer: int, num_layers: int) -> None:
        super().__init__()
        self.first_layer = first_layer
        self.last_layer = first_layer + num_layers - 1

    def prepare(self) -> None:
        """Called once per forward, before the first block: work shared by all its layers."""

    def release(self) -> None:
        """Called once per forward after the last block, even on error: drop what ``prepare`` made."""

    def tokens_before(self, layer: int, x: Tensor, num_patches: int) -> Tensor:
        """The (B, N', D) tokens entering block ``layer``; the first ``num_patches`` are the video's."""
        return x

    def block_inputs(self, layer: int) -> dict[str, Any]:
        """Keyword arguments for :meth:`Block.forward` at ``layer`` (extra_kv, qkv_delta, mlp_side)."""
        return {}


class VisionTransformer(nn.Module):
    """VideoMAE ViT classifier.  Input (B, C, T, H, W) normalised float; output logits."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.tubelet_size, config.in_chans, dim)
        # Fixed, not a parameter: rebuilt from the config, never stored in checkpoints.
        self.register_buffer("pos_embed", sincos_position_table(config.num_patches, dim)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(config, rate) for rate in drop_path_rates(config))
        fc_eps = config.fc_norm_eps if config.fc_norm_eps is not None else config.layer_norm_eps
        self.fc_norm = nn.LayerNorm(dim, eps=fc_eps)
        self.head_dropout = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(dim, config.num_classes)
        self._extension_names: list[str] = []  # BlockExtension submodules, in the order they were added
        self.grad_checkpointing = False  # whole blocks recomputed in the backward
        self._init_weights()

    # ----------------------------------------------------------------- set-up
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.reset_head(self.config.num_classes)

    def reset_head(self, num_classes: int) -> None:
        """A fresh classifier; VideoMAE scales its init down so early logits stay small."""
        self.config.num_classes = num_classes
        head = classifier_head(self.config, num_classes).to(self.fc_norm.weight.device)
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        with torch.no_grad():
            head.weight.mul_(self.config.head_init_scale)
        self.head = head

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def recompute_mlp(self) -> bool:
        """Whether every block recomputes its MLP's hidden activation in the backward (less memory)."""
        return all(block.recompute_mlp for block in self.blocks)

    @recompute_mlp.setter
    def recompute_mlp(self, value: bool) -> None:
        for block in self.blocks:
            block.recompute_mlp = bool(value)

    @property
    def recompute_qkv(self) -> bool:
        """Whether every block recomputes norm1 and its q/k/v in the backward (less memory)."""
        return all(block.recompute_qkv for block in self.blocks)

    @recompute_qkv.setter
    def recompute_qkv(self, value: bool) -> None:
        for block in self.blocks:
            block.recompute_qkv = bool(value)

    # ---------------------------------------------------------------- forward
    def position_embedding(self, grid: tuple[int, int, int]) -> Tensor:
        if tuple(grid) == self.config.grid:
            return self.pos_embed
        # a clip of another length or size: resample the table the weights were trained with
        return resize_position_table(self.pos_embed[0], self.config.grid, tuple(grid))[None]

    def first_block_needing_grad(self) -> int:
        """Index of the first block whose output depends on a trainable tensor."""
        if any(p.requires_grad for p in self.patch_embed.parameters()):
            return 0
        candidates = [len(self.blocks)]
        for i, block in enumerate(self.blocks):
            if any(p.requires_grad for p in block.parameters()):
                candidates.append(i)
                break
        for _, extension in self.named_extensions():
            if any(p.requires_grad for p in extension.parameters()):
                candidates.append(extension.first_layer)
        return min(candidates)

    # ------------------------------------------------------------ extensions
    def add_extension(self, name: str, extension: BlockExtension) -> None:
        """Register a method's module under ``name`` (its tensors are saved as ``name.*``)."""
        if not isinstance(extension, BlockExtension):
            raise TypeError(f"extension '{name}' is a {type(extension).__name__}, not a BlockExtension")
        if name in self._extension_names or hasattr(self, name):
            raise ValueError(f"the model already has an attribute or extension called '{name}'")
        self.add_module(name, extension)
        self._extension_names.append(name)

    def remove_extension(self, name: str) -> BlockExtension:
        extension = self.extension(name)
        if extension is None:
            raise KeyError(f"the model has no extension '{name}'")
        self._extension_names.remove(name)
        delattr(self, name)
        return extension

    def extension(self, name: str) -> BlockExtension | None:
        """The extension registered as ``name``, or None."""
        return getattr(self, name) if name in self._extension_names else None

    def named_extensions(self) -> Iterator[tuple[str, BlockExtension]]:
        for name in list(self._extension_names):
            yield name, getattr(self, name)

    def set_extensions(self, extensions: dict[str, BlockExtension]) -> None:
        """Replace every extension by ``extensions`` (a benchmark switching methods on one backbone)."""
        for name in list(self._extension_names):
            self.remove_extension(name)
        for name, extension in extensions.items():
            self.add_extension(name, extension)

    @contextmanager
    def extensions_disabled(self) -> Iterator[None]:
        """Run as the plain backbone for a while (e.g. to read its own keys and values)."""
        saved = dict(self.named_extensions())
        self.set_extensions({})
        try:
            yield
        finally:
            self.set_extensions(saved)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled, normalised features (B, D)."""
        return self.fc_norm(self.forward_pooled(x))

    def forward_pooled(self, x: Tensor) -> Tensor:
        """The patch tokens after the last block pooled (:meth:`pool`), before ``fc_norm`` (B, D)."""
        first_grad = 0
        if torch.is_grad_enabled() and not x.requires_grad:
            first_grad = self.first_block_needing_grad()
        with torch.set_grad_enabled(torch.is_grad_enabled() and first_grad == 0):
            x, grid = self.patch_embed(x)
            x = x + self.position_embedding(grid).to(x.dtype)
        num_patches = x.shape[1]
        extensions = [extension for _, extension in self.named_extensions()]
        try:
            for extension in extensions:
                extension.prepare()
            for index, block in enumerate(self.blocks):
                with torch.set_grad_enabled(torch.is_grad_enabled() and index >= first_grad):
                    x = self._run_block(index, block, x, num_patches)
        finally:
            for extension in extensions:
                extension.release()
        # prompt tokens (VPT) are not part of the video: pool over patch tokens only
        return self.pool(x[:, :num_patches])

    def pool(self, tokens: Tensor) -> Tensor:
        """(B, N, D) tokens to (B, D): their mean, or the attentive head's probe."""
        probe = getattr(self.head, "probe", None)
        return tokens.mean(dim=1) if probe is None else probe(tokens)

    def _run_block(self, index: int, block: Block, x: Tensor, num_patches: int) -> Tensor:
        inputs: dict[str, Any] = {}
        for name, extension in self.named_extensions():
            if not extension.first_layer <= index <= extension.last_layer:
                continue
            x = extension.tokens_before(index, x, num_patches)
            for key, value in extension.block_inputs(index).items():
                if key in inputs:  # two methods on one hook point: a composition nothing defines
                    raise ValueError(f"extension '{name}' sets block input '{key}' that another already sets")
                inputs[key] = value
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False, **inputs)
        return block(x, **inputs)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(self.head_dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def classifier_head(config: ViTConfig, num_classes: int) -> nn.Linear:
    """The classifier ``config.head`` names: a plain linear layer, or one fed by an attentive probe."""
    if config.head not in HEADS:
        raise ValueError(f"unknown head '{config.head}' (valid: {', '.join(HEADS)})")
    if config.head == "attentive":
        heads = config.attentive_heads or config.num_heads
        return AttentiveHead(config.embed_dim, num_classes, heads, config.attentive_queries)
    return nn.Linear(config.embed_dim, num_classes)


def drop_path_rates(config: ViTConfig) -> list[float]:
    """Stochastic depth rising linearly from 0 to drop_path_rate (plain floats: meta-device safe)."""
    if config.depth == 1:
        return [0.0]
    return [config.drop_path_rate * i / (config.depth - 1) for i in range(config.depth)]


def prompt_init_bound(patch_size: int, width: int) -> float:
    """Uniform init bound sqrt(6 / (3*patch*patch + width)) used for APT and VPT prompts."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + width))
