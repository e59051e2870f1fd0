"""Multiply-add counts of a model: measured by PyTorch's FLOP counter, and in closed form.

Convention (VideoMAE, Tong et al. 2022; APT, Bandara & Patel 2024,
https://arxiv.org/abs/2403.06978): one multiply-add (MAC) per weight per token for
every linear layer and the patch-embedding Conv3d, plus the two attention matmuls
(q k^T and softmax(.) v).  Biases, LayerNorm, softmax, GELU, residual adds and
the mean pooling are not counted -- nor does ``FlopCounterMode`` count them.
``FlopCounterMode`` reports FLOPs at 2 per multiply-add; :func:`count_macs`
divides by two.

Closed form per view, with N patch tokens, width D, MLP width H, depth L, P prompts::

    backbone     L * (4 N D^2 + 2 N D H + 2 N^2 D) + N D (C t p^2) + D * classes
    APT          + (layers with prompts) * 2 N P D
    VPT          + (layers the prompt tokens pass through) * (4 P D^2 + 2 P D H + 2 D (2 N P + P^2))
    LoRA         + (adapted layers) * N (D r + r 3D)      (unmerged; merged: + 0)
    AdaptFormer  + (adapted layers) * 2 N D d
    attentive head  + 2 N D^2 + 2 Q D^2 + 2 Q N D + 2 Q D H   (Q queries, MLP width H = 4 D)

The attentive head (``head="attentive"``, :mod:`aptune.models.heads`) projects every
patch token to a key and a value (2 N D^2), its Q queries through q and the output
projection (2 Q D^2), attends (2 Q N D) and runs its MLP on the Q outputs (2 Q D H),
whatever the method.

H is 4 D in ViT-S/B/L/H (so a block is 12 N D^2 + 2 N^2 D); VideoMAE V2's ViT-g/14 has
D = 1408 and H = 6144 (``ViTConfig.mlp_width``: the exact width, never the float ratio).
VPT's prompt tokens go through qkv, proj and the MLP (4 P D^2 + 2 P D H) and attention
grows from N^2 to (N + P)^2 pairs; APT's prompts only add P keys and values that
the N queries attend to.  VideoMAE ViT-B at 16x224 is 180.3 GMACs; APT with
P = 400 is 191.9 and VPT-deep 240.4.  ViT-g/14 at 16x224 (N = 2048) is 2,542.8
GMACs without the head.

LoRA of rank r on the fused qkv projection runs x -> x A^T (D r) -> (.) B^T (r 3D)
beside the frozen weight while training (and in the unmerged model); once
merged (``aptune merge``, :func:`aptune.methods.lora.merge_lora`) it costs
exactly the backbone.  AdaptFormer's bottleneck (D -> d -> D) cannot be merged:
it sits behind a ReLU.  Their scalings, biases and the ReLU are not counted.

On CPU, ``scaled_dot_product_attention`` runs the fused kernel
``aten._scaled_dot_product_flash_attention_for_cpu`` (and its backward), which
``FlopCounterMode`` in current PyTorch does not know.  :func:`flop_counter`
adds formulas for both through ``custom_mapping`` -- per counter instance, so
no global registry is modified and an op that PyTorch learns to count later is
counted once, by our formula.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from aptune.errors import ConfigError
from aptune.methods import method_names, methods_that
from aptune.methods.apt import resolve_layer_range
from aptune.models.heads import PROBE_MLP_RATIO
from aptune.models.vit import ViTConfig

aten = torch.ops.aten

PROMPTED_METHODS = methods_that("prompted")
#: methods whose size is a rank / bottleneck width instead of a prompt count
ADAPTER_METHODS = methods_that("adapter")
UNPROMPTED_METHODS = tuple(name for name in method_names() if name not in PROMPTED_METHODS + ADAPTER_METHODS)


# ------------------------------------------------------------------ counter
def _attention_flops(query_shape, key_shape, value_shape) -> int:
    """FLOPs (2 per MAC) of q k^T and weights v; query heads may be a multiple of key heads."""
    *batch_q, q_len, head_dim = query_shape
    *_, k_len, v_dim = value_shape
    if key_shape[-2] != k_len or key_shape[-1] != head_dim:
        shapes = f"q={query_shape} k={key_shape} v={value_shape}"
        raise ValueError(f"incompatible attention shapes {shapes}")
    batch_heads = 1
    for size in batch_q:
        batch_heads *= size
    scores = batch_heads * q_len * k_len * head_dim
    weighted = batch_heads * q_len * k_len * v_dim
    return 2 * (scores + weighted)


def _cpu_flash_forward_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query, key, value)


def _cpu_flash_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # grad of (q k^T): dq and dk, one matmul each; grad of (weights v): d(weights) and dv.
    # Twice the forward: the gradient matmuls only, as the math path counts on meta tensors.
    # The fused kernel also recomputes q k^T (PyTorch's own formula for the CUDA kernels
    # counts that fifth matmul); docs/bench.md adds it where it matters.
    return 2 * _attention_flops(query, key, value)


CPU_ATTENTION_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the fused CPU attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FORMULAS)


def _stand_ins(model: nn.Module, *, meta: bool, keep_grad: bool) -> dict[str, Tensor]:
    """Every parameter and buffer as a meta tensor (shape only) or a detached alias.

    Without ``keep_grad`` nothing requires grad: PyTorch's module tracker (used by
    the counter) fails on tensors that require grad but were made where autograd
    is off, such as APT's per-layer prompt slices under ``no_grad``.
    """
    tensors: dict[str, Tensor] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        stand_in = torch.empty_like(tensor, device="meta") if meta else tensor.detach()
        if keep_grad and tensor.requires_grad:
            stand_in.requires_grad_(True)
        tensors[name] = stand_in
    return tensors


def count_flops(model: nn.Module, inputs: Tensor | Sequence[int], *, backward: bool = False, meta: bool = True) -> int:
    """FLOPs (2 per multiply-add) of one forward pass, plus the backward if ``backward``.

    ``inputs`` is a clip tensor (B, C, T, H, W) or just its shape.  The model runs
    through ``torch.func.functional_call`` on stand-ins for its tensors, so the
    model itself (its ``.grad``s included) is never touched.  With ``meta`` (the
    default) they are shape-only meta tensors: nothing is computed and ViT-B
    counts in a fraction of a second.  Otherwise the real weights run on their
    device, through the kernels (e.g. fused CPU attention) a real run uses.  The
    backward starts from ``output.sum()`` and reaches what requires grad, which
    is what a training step of the model's method computes.
    """
    shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else tuple(int(s) for s in inputs)
    if len(shape) != 5:
        raise ConfigError(f"expected a clip shape (batch, channels, frames, height, width), got {shape}")
    tensors = _stand_ins(model, meta=meta, keep_grad=backward)
    if meta:
        clip = torch.empty(shape, device="meta")
    else:
        device = next(iter(tensors.values())).device
        clip = inputs.detach() if isinstance(inputs, Tensor) else torch.randn(shape)
        clip = clip.to(device)

    counter = flop_counter()
    with counter, torch.set_grad_enabled(backward):
        output = functional_call(model, tensors, (clip,))
        if backward:
            output.float().sum().backward()
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, inputs: Tensor | Sequence[int], *, backward: bool = False, meta: bool = True) -> int:
    """Multiply-adds of one pass (FLOPs / 2); divide by the batch size for a per-view number."""
    return count_flops(model, inputs, backward=backward, meta=meta) // 2


# --------------------------------------------------------------- closed form
def closed_form_macs(
    config: ViTConfig,
    method: str = "linear",
    num_prompts: int = 0,
    *,
    prompt_start: int = 0,
    prompt_end: int | None = None,
    num_classes: int | None = None,
    lora_rank: int = 8,
    adapter_dim: int = 64,
    merged: bool = False,
) -> int:
    """Multiply-adds of one view through ``config`` tuned by ``method``, in the papers' convention.

    ``prompt_start``/``prompt_end`` follow the methods' options: APT adds keys and
    values in blocks [start, end]; VPT's tokens join before block ``start`` and,
    deep or shallow, pass through every later block (deep only replaces them);
    LoRA and AdaptFormer adapt blocks [start, end].  ``lora_rank`` and
    ``adapter_dim`` size those two (``num_prompts`` is ignored for them).
    ``merged`` gives LoRA's cost after its update is folded into the qkv
    weights, which is the backbone's; methods that cannot be merged (prompts,
    AdaptFormer) raise.
    """
    known = PROMPTED_METHODS + UNPROMPTED_METHODS + ADAPTER_METHODS
    if method not in known:
        raise ConfigError(f"unknown method '{method}' (valid: {', '.join(known)})")
    if merged and method not in methods_that("mergeable"):
        raise ConfigError(
            f"method '{method}' cannot be merged into the backbone weights "
            f"(mergeable: {', '.join(methods_that('mergeable'))})"
        )
    depth, dim = config.depth, config.embed_dim
    tokens = config.num_patches
    hidden = config.mlp_width
    classes = config.num_classes if num_classes is None else num_classes

    def block_macs(queries: int, keys: int) -> int:
        # qkv (3 D^2) + proj (D^2) + MLP (2 D hidden) per token; q k^T and weights v
        return queries * (4 * dim * dim + 2 * dim * hidden) + 2 * queries * keys * dim

    patch_embed = tokens * dim * config.in_chans * config.tubelet_size * config.patch_size**2
    head = head_macs(config, classes)
    prompts = num_prompts if method in PROMPTED_METHODS else 0
    end = depth - 1 if prompt_end is None else prompt_end
    total = patch_embed + head
    if method in ADAPTER_METHODS:
        return (
            total
            + depth * block_macs(tokens, tokens)
            + _adapter_macs(method, tokens, dim, depth, prompt_start, prompt_end, lora_rank, adapter_dim, merged)
        )
    for layer in range(depth):
        if prompts and method == "apt" and prompt_start <= layer <= end:
            total += block_macs(tokens, tokens + prompts)
        elif prompts and method != "apt" and layer >= prompt_start:
            total += block_macs(tokens + prompts, tokens + prompts)
        else:
            total += block_macs(tokens, tokens)
    return total


def head_macs(config: ViTConfig, num_classes: int) -> int:
    """Multiply-adds of the head per view: the classifier (D * classes) and an attentive probe."""
    dim = config.embed_dim
    macs = dim * num_classes
    if config.head == "attentive":
        queries, tokens, hidden = config.attentive_queries, config.num_patches, int(dim * PROBE_MLP_RATIO)
        macs += (
            2 * tokens * dim * dim + 2 * queries * dim * dim + 2 * queries * tokens * dim + 2 * queries * dim * hidden
        )
    return macs


def _adapter_macs(
    method: str,
    tokens: int,
    dim: int,
    depth: int,
    start: int,
    end: int | None,
    lora_rank: int,
    adapter_dim: int,
    merged: bool,
) -> int:
    """LoRA / AdaptFormer's extra multiply-adds per view, over blocks [start, end]."""
    start, end = resolve_layer_range(start, end, depth)
    layers = end - start + 1
    if method == "lora":
        # x A^T: D -> r, then (x A^T) B^T: r -> 3D, for every token; nothing once merged
        return 0 if merged else layers * tokens * (dim * lora_rank + lora_rank * 3 * dim)
    # down D -> d and up d -> D, for every token (biases and the ReLU not counted)
    return layers * tokens * 2 * dim * adapter_dim
