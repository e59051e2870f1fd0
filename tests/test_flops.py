"""Multiply-add counts: the FLOP counter against the closed forms, and the papers' numbers."""

import pytest
import torch
from helpers import tiny_clip, tiny_model
from torch.utils.flop_counter import FlopCounterMode

from aptune.errors import ConfigError
from aptune.flops import closed_form_macs, count_macs
from aptune.models.vit import arch_config

PROMPTED = ("apt", "vpt-shallow", "vpt-deep")
ALL = PROMPTED + ("linear", "full")
CLIP_SHAPE = (1, 3, 4, 32, 32)


def gmacs(arch, method="linear", prompts=0, **overrides):
    return closed_form_macs(arch_config(arch, **overrides), method, prompts) / 1e9


def test_closed_form_matches_the_papers():
    # VideoMAE / APT tables: ViT-B 16x224 180.3 G, APT P=400 191.9 G, VPT-deep 240.4 G; ViT-S 56.9 G
    assert gmacs("vit_base_patch16_224") == pytest.approx(180.3, abs=0.05)
    assert gmacs("vit_base_patch16_224", "apt", 400) == pytest.approx(191.9, abs=0.05)
    assert gmacs("vit_base_patch16_224", "vpt-deep", 400) == pytest.approx(240.4, abs=0.05)
    assert gmacs("vit_small_patch16_224") == pytest.approx(56.9, abs=0.05)


def test_closed_form_terms():
    config = arch_config("vit_base_patch16_224")
    layers, tokens, dim, prompts = 12, 1568, 768, 400
    base = layers * (12 * tokens * dim**2 + 2 * tokens**2 * dim) + tokens * dim * 3 * 2 * 16 * 16
    base += dim * config.num_classes
    assert closed_form_macs(config, "linear") == base
    assert closed_form_macs(config, "full") == base
    assert closed_form_macs(config, "apt", prompts) - base == layers * 2 * tokens * prompts * dim
    vpt_extra = layers * (12 * prompts * dim**2 + 2 * dim * (2 * tokens * prompts + prompts**2))
    assert closed_form_macs(config, "vpt-deep", prompts) - base == vpt_extra
    # shallow prompts are carried through every block, so they cost what deep ones do
    assert closed_form_macs(config, "vpt-shallow", prompts) == base + vpt_extra
    # prompts only in blocks 4..7 (APT) / from block 4 on (VPT)
    apt_range = closed_form_macs(config, "apt", prompts, prompt_start=4, prompt_end=7)
    assert apt_range - base == 4 * 2 * tokens * prompts * dim
    vpt_late = closed_form_macs(config, "vpt-deep", prompts, prompt_start=4)
    assert vpt_late - base == vpt_extra * 8 // 12
    with pytest.raises(ConfigError, match="unknown method"):
        closed_form_macs(config, "nope")


def test_closed_form_adapter_terms():
    config = arch_config("vit_base_patch16_224")
    layers, tokens, dim = 12, 1568, 768
    base = closed_form_macs(config, "linear")
    # LoRA r=8 on the fused qkv: x A^T (D r) then (.) B^T (r 3D), every token, every layer
    lora = closed_form_macs(config, "lora", lora_rank=8)
    assert lora - base == layers * tokens * (dim * 8 + 8 * 3 * dim)
    assert closed_form_macs(config, "lora", lora_rank=8, merged=True) == base
    assert closed_form_macs(config, "lora", 400, lora_rank=8) == lora  # prompts do not apply
    # AdaptFormer d=64: down D -> d and up d -> D
    adaptformer = closed_form_macs(config, "adaptformer", adapter_dim=64)
    assert adaptformer - base == layers * tokens * 2 * dim * 64
    late = closed_form_macs(config, "adaptformer", adapter_dim=64, prompt_start=4, prompt_end=7)
    assert late - base == 4 * tokens * 2 * dim * 64
    assert closed_form_macs(config, "full", merged=True) == base
    for method in ("apt", "vpt-deep", "adaptformer"):
        with pytest.raises(ConfigError, match="cannot be merged"):
            closed_form_macs(config, method, 4, merged=True)
    with pytest.raises(ConfigError, match="prompt range"):
        closed_form_macs(config, "lora", prompt_start=5, prompt_end=2)


ADAPTER_CASES = {
    "lora": {"lora_rank": 4},
    "lora-range": {"lora_rank": 3, "prompt_start": 1, "prompt_end": 1},
    "adaptformer": {"adapter_dim": 6},
    "adaptformer-range": {"adapter_dim": 5, "prompt_start": 2},
}


@pytest.mark.parametrize("case", ADAPTER_CASES)
@pytest.mark.parametrize("meta", [True, False], ids=["meta", "cpu"])
def test_counter_matches_closed_form_for_adapters(case, meta):
    method, options = case.split("-")[0], ADAPTER_CASES[case]
    model = tiny_model(method, method_options=options)
    counted = count_macs(model, CLIP_SHAPE, meta=meta)
    assert counted == closed_form_macs(model.config, method, **options)
    assert counted > closed_form_macs(model.config, "linear")


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("meta", [True, False], ids=["meta", "cpu"])
def test_counter_matches_closed_form(method, meta):
    options = {"num_prompts": 5} if method in PROMPTED else {}
    model = tiny_model(method, **options)
    counted = count_macs(model, CLIP_SHAPE, meta=meta)
    assert counted == closed_form_macs(model.config, method, options.get("num_prompts", 0))


@pytest.mark.parametrize("method", PROMPTED)
def test_counter_matches_closed_form_with_a_layer_range(method):
    model = tiny_model(method, num_prompts=3, prompt_start=1, prompt_end=1)
    expected = closed_form_macs(model.config, method, 3, prompt_start=1, prompt_end=1)
    assert count_macs(model, CLIP_SHAPE) == expected
    assert count_macs(model, tiny_clip(batch=1), meta=False) == expected


def test_counter_scales_with_batch_and_accepts_a_clip():
    model = tiny_model("apt", num_prompts=2)
    one = count_macs(model, CLIP_SHAPE)
    assert count_macs(model, (3, *CLIP_SHAPE[1:])) == 3 * one
    assert count_macs(model, tiny_clip(batch=2)) == 2 * one
    with pytest.raises(ConfigError, match="clip shape"):
        count_macs(model, (1, 3, 32, 32))


def test_fused_cpu_attention_is_counted():
    """Plain FlopCounterMode misses the fused CPU attention kernel; count_macs does not."""
    model = tiny_model("apt", num_prompts=2).eval().requires_grad_(False)
    clip = tiny_clip(batch=1)
    with FlopCounterMode(display=False) as plain, torch.inference_mode():
        model(clip)
    config = model.config
    tokens, dim = config.num_patches, config.embed_dim
    attention = config.depth * 2 * tokens * (tokens + 2) * dim
    ours = count_macs(model, clip, meta=False)
    if plain.get_total_flops() // 2 == ours:
        pytest.skip("this torch counts the fused CPU attention kernel itself")
    assert ours - plain.get_total_flops() // 2 == attention


@pytest.mark.parametrize("meta", [True, False], ids=["meta", "cpu"])
def test_backward_counts(meta):
    # full fine-tuning: every linear's backward is two matmuls (input and weight grads), the
    # attention backward twice its forward, and the patch embedding needs no input grad
    model = tiny_model("full")
    config = model.config
    forward = count_macs(model, CLIP_SHAPE, meta=meta)
    patch_embed = config.num_patches * config.embed_dim * 3 * config.tubelet_size * 16 * 16
    assert count_macs(model, CLIP_SHAPE, backward=True, meta=meta) == 3 * forward - patch_embed
    # linear probing: the backward stops at the head (input grad for fc_norm + weight grad)
    linear = tiny_model("linear")
    head = config.embed_dim * config.num_classes
    assert count_macs(linear, CLIP_SHAPE, backward=True, meta=meta) == forward + 2 * head
    assert all(p.grad is None for p in model.parameters())  # the model itself is untouched
