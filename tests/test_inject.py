"""aptune.inject on transformers VideoMAE and timm-style ViTs: parity with the native model,
the exact trainable set, and adapters that move between native and injected models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import reference_apt_logits, tiny_clip, tiny_hf_model
from torch import nn

import aptune
from aptune.errors import CheckpointError, ConfigError

transformers = pytest.importorskip("transformers")


def randomize_trainable_(model, seed: int = 1) -> None:
    """Non-trivial prompts, scales (some above one) and heads."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name.endswith("scales"):
                param.copy_(torch.rand(param.shape, generator=generator) * 1.7 + 0.3)
            else:
                offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3 + offset)


def hf_logits(model, clip):
    with torch.no_grad():
        return model(pixel_values=clip.permute(0, 2, 1, 3, 4)).logits


@pytest.fixture
def hf_dir(tmp_path):
    folder = tmp_path / "hf"
    tiny_hf_model().save_pretrained(folder)
    return folder


def load_hf(folder):
    return transformers.VideoMAEForVideoClassification.from_pretrained(folder).eval()


APT_OPTIONS = dict(num_prompts=3, prompt_start=1, prompt_end=2, reparam=True)


def test_injected_apt_matches_native_and_the_reference(hf_dir, tmp_path):
    native = aptune.create_model(pretrained=hf_dir, method="apt", **APT_OPTIONS).eval()
    randomize_trainable_(native)
    path = aptune.save_adapter(native, tmp_path / "native.safetensors")

    hf = aptune.inject(load_hf(hf_dir), "apt", **APT_OPTIONS)
    assert hf.kv_prompts.keys.shape == native.kv_prompts.keys.shape == (2, 3, 8)
    aptune.load_adapter(hf, path)
    clip = tiny_clip()
    with torch.no_grad():
        expected = native(clip)
    torch.testing.assert_close(hf_logits(hf, clip), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hf_logits(hf, clip), reference_apt_logits(native, clip).detach(), rtol=1e-4, atol=1e-5)
    # the prompts matter: without them the logits differ
    plain = load_hf(hf_dir)
    plain.classifier.load_state_dict(hf.classifier.state_dict())
    plain.fc_norm.load_state_dict(hf.fc_norm.state_dict())
    assert not torch.allclose(hf_logits(plain, clip), expected, atol=1e-3)


def test_adapter_trained_on_the_injected_model_loads_into_the_native_one(hf_dir, tmp_path):
    hf = aptune.inject(load_hf(hf_dir), "apt", **APT_OPTIONS)
    randomize_trainable_(hf, seed=3)
    path = aptune.save_adapter(hf, tmp_path / "hf.safetensors")
    tensors, meta = aptune.read_adapter(path)
    assert set(tensors) == {
        "kv_prompts.keys",
        "kv_prompts.values",
        "kv_prompts.scales",
        "fc_norm.weight",
        "fc_norm.bias",
        "head.weight",
        "head.bias",
    }
    assert meta["class_names"] == [f"action_{i}" for i in range(5)]
    assert meta["arch"]["embed_dim"] == 32 and meta["arch"]["num_classes"] == 5

    native = aptune.model_from_adapter(path, pretrained=hf_dir).eval()
    clip = tiny_clip(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(native(clip), hf_logits(hf, clip), rtol=1e-4, atol=1e-5)
    # and back again into a fresh injected model
    again = aptune.inject(load_hf(hf_dir), "apt", **APT_OPTIONS)
    aptune.load_adapter(again, aptune.save_adapter(native, tmp_path / "back.safetensors"))
    torch.testing.assert_close(hf_logits(again, clip), hf_logits(hf, clip), rtol=1e-5, atol=1e-6)


def test_only_prompts_scales_and_classifier_train(hf_dir):
    hf = aptune.inject(load_hf(hf_dir), "apt", num_prompts=2)
    hf.train()
    trainable = {name for name, p in hf.named_parameters() if p.requires_grad}
    assert trainable == {
        "kv_prompts.keys",
        "kv_prompts.values",
        "kv_prompts.scales",
        "classifier.weight",
        "classifier.bias",
        "fc_norm.weight",
        "fc_norm.bias",
    }
    out = hf(pixel_values=tiny_clip().permute(0, 2, 1, 3, 4), labels=torch.tensor([1, 3]))
    out.loss.backward()
    for name, param in hf.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    # state-dict names of the backbone are untouched, so save_pretrained still round-trips
    names = set(hf.state_dict())
    assert "videomae.encoder.layer.0.attention.attention.query.weight" in names


def test_injected_vpt_deep_matches_native(hf_dir, tmp_path):
    options = dict(num_prompts=2, prompt_start=0, prompt_end=1)  # the last layer carries layer 1's prompts
    native = aptune.create_model(pretrained=hf_dir, method="vpt-deep", **options).eval()
    randomize_trainable_(native, seed=5)
    path = aptune.save_adapter(native, tmp_path / "vpt.safetensors")
    hf = aptune.inject(load_hf(hf_dir), "vpt-deep", **options)
    aptune.load_adapter(hf, path)
    clip = tiny_clip(seed=6)
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(hf, clip), native(clip), rtol=1e-4, atol=1e-5)
        hidden = hf.videomae(clip.permute(0, 2, 1, 3, 4)).last_hidden_state
    assert hidden.shape[1] == 8  # 2 x 2 x 2 patches: the prompt tokens were stripped


def test_bare_videomae_model_and_errors(hf_dir, tmp_path):
    bare = transformers.VideoMAEModel.from_pretrained(hf_dir).eval()
    aptune.inject(bare, "apt", num_prompts=2)
    assert {n for n, p in bare.named_parameters() if p.requires_grad} == {
        "kv_prompts.keys",
        "kv_prompts.values",
        "kv_prompts.scales",
    }
    assert bare(tiny_clip().permute(0, 2, 1, 3, 4)).last_hidden_state.shape == (2, 8, 32)
    with pytest.raises(ConfigError, match="already"):
        aptune.inject(bare, "apt")
    with pytest.raises(ConfigError, match="inject supports"):
        aptune.inject(load_hf(hf_dir), "lora")
    with pytest.raises(ConfigError, match="cannot inject"):
        aptune.inject(nn.Linear(2, 2))
    # an adapter of another method is refused by name
    linear = aptune.create_model(pretrained=hf_dir, method="linear")
    path = aptune.save_adapter(linear, tmp_path / "linear.safetensors")
    with pytest.raises(CheckpointError, match="method 'linear'"):
        aptune.load_adapter(aptune.inject(load_hf(hf_dir), "apt", num_prompts=2), path)


@pytest.mark.slow
def test_huggingface_trainer_step(hf_dir, tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    hf = aptune.inject(load_hf(hf_dir), "apt", num_prompts=2)
    frozen = hf.videomae.encoder.layer[0].attention.attention.query.weight.detach().clone()
    before = hf.kv_prompts.keys.detach().clone()
    data = [{"pixel_values": torch.randn(4, 3, 32, 32), "labels": i % 5} for i in range(4)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4, report_to=[], use_cpu=True
    )
    transformers.Trainer(model=hf, args=args, train_dataset=data).train()
    assert not torch.equal(hf.kv_prompts.keys, before)
    assert torch.equal(hf.videomae.encoder.layer[0].attention.attention.query.weight, frozen)


# --------------------------------------------------------------------- timm
class _Attention(nn.Module):
    """The attribute layout of timm's ``Attention`` (public structure, written here)."""

    def __init__(self, dim, num_heads, qk_norm=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)


_Attention.__name__ = "Attention"


class _Block(nn.Module):
    def __init__(self, dim, num_heads, qk_norm):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads, qk_norm)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTimmViT(nn.Module):
    """A class-token image ViT with timm's attribute names, for when timm is not installed."""

    def __init__(self, dim=32, depth=3, num_heads=4, num_classes=5, qk_norm=True):
        super().__init__()
        self.num_prefix_tokens, self.global_pool = 1, "token"
        self.patch_embed = nn.Conv2d(3, dim, 8, 8)
        self.patch_embed.patch_size = (8, 8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.Sequential(*[_Block(dim, num_heads, qk_norm) for _ in range(depth)])
        self.norm, self.fc_norm = nn.LayerNorm(dim), nn.Identity()
        self.head = nn.Linear(dim, num_classes)

        self.norm_pre = nn.Identity()

    def _pos_embed(self, x):
        return torch.cat((self.cls_token.expand(len(x), -1, -1), x), 1)

    def forward_features(self, x):
        x = self.norm_pre(self._pos_embed(self.patch_embed(x).flatten(2).transpose(1, 2)))
        return self.norm(self.blocks(x))

    def forward_head(self, x):
        return self.head(self.fc_norm(x[:, 0]))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def reference_timm_apt(model, images):
    """Explicit softmax over [k; Pk] with the prompts after k_norm, read from raw parameters."""
    x = model.patch_embed(images)
    if x.ndim == 4:  # the stand-in's bare Conv2d
        x = x.flatten(2).transpose(1, 2)
    x = model.norm_pre(model._pos_embed(x))
    prompts = model.kv_prompts
    identity = nn.Identity()
    for index, block in enumerate(model.blocks):
        attn = block.attn
        b, n, d = x.shape
        qkv = attn.qkv(block.norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
        if prompts.first_layer <= index <= prompts.last_layer:
            j = index - prompts.first_layer
            pk = prompts.keys[j] * prompts.scales[j, 0].clamp(min=1)[:, None]
            pv = prompts.values[j] * prompts.scales[j, 1].clamp(min=1)[:, None]
            k = torch.cat((k, pk.expand(b, attn.num_heads, -1, -1)), 2)
            v = torch.cat((v, pv.expand(b, attn.num_heads, -1, -1)), 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim), -1)
        out = attn.proj((weights @ v).transpose(1, 2).reshape(b, n, d))
        x = x + getattr(block, "ls1", identity)(out)
        x = x + getattr(block, "ls2", identity)(block.mlp(block.norm2(x)))
    return model.forward_head(model.norm(x))


def test_timm_structure_apt_matches_the_reference(tmp_path):
    torch.manual_seed(0)
    model = aptune.inject(TinyTimmViT().eval(), "apt", num_prompts=3, prompt_start=1)
    randomize_trainable_(model, seed=7)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_timm_apt(model, images), rtol=1e-4, atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "kv_prompts.keys",
        "kv_prompts.values",
        "kv_prompts.scales",
        "head.weight",
        "head.bias",
        "norm.weight",
        "norm.bias",
    }
    path = aptune.save_adapter(model, tmp_path / "timm.safetensors")
    torch.manual_seed(1)
    other = TinyTimmViT().eval()
    other.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("kv_")}, strict=False)
    aptune.inject(other, "apt", num_prompts=3, prompt_start=1)
    aptune.load_adapter(other, path)
    with torch.no_grad():
        torch.testing.assert_close(other(images), model(images))
    with pytest.raises(CheckpointError, match="timm-vit"):
        aptune.model_from_adapter(path)
    native = aptune.create_model(
        None,
        num_classes=5,
        method="apt",
        num_prompts=3,
        embed_dim=32,
        depth=3,
        num_heads=4,
        num_frames=4,
        img_size=32,
        patch_size=16,
    )
    with pytest.raises(CheckpointError, match="timm-vit"):
        aptune.load_adapter(native, path)


def test_timm_attention_mask_is_extended():
    from aptune.models.attention import extend_mask as _extend_mask

    mask = torch.zeros(2, 1, 5, 5)
    assert _extend_mask(mask, 3).shape == (2, 1, 5, 8)
    boolean = _extend_mask(torch.ones(5, 5, dtype=torch.bool), 2)
    assert boolean.dtype == torch.bool and boolean[:, 5:].all()


def test_real_timm_vit():
    timm = pytest.importorskip("timm", reason="timm is not installed (it would replace the CPU torch build)")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).eval()
    aptune.inject(model, "apt", num_prompts=2, prompt_start=1)
    randomize_trainable_(model, seed=8)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_timm_apt(model, images), rtol=1e-4, atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"kv_prompts.keys", "kv_prompts.scales", "head.weight"} <= trainable
    assert all(n.startswith(("kv_prompts.", "head.", "norm.", "fc_norm.")) for n in trainable)
    F.cross_entropy(model(images), torch.tensor([0, 2])).backward()
    assert model.kv_prompts.scales.grad is not None


# ------------------------------------------------------- prompts started from real tokens
def _heads(rows: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H*d) projections -> every (clip, head, token) row, as (B*H*N, d)."""
    batch, tokens, width = rows.shape
    return rows.view(batch, tokens, num_heads, width // num_heads).transpose(1, 2).reshape(-1, width // num_heads)


def _row_indices(prompt_rows: torch.Tensor, real_rows: torch.Tensor) -> torch.Tensor:
    """Index of the real row each prompt row copies; fails if one is not a copy."""
    distance, index = torch.cdist(prompt_rows, real_rows, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
    assert distance.max() < 1e-5, "a prompt is not a copy of a real token"
    return index


def test_injected_hf_prompts_start_as_copies_of_each_layers_keys_and_values(hf_dir, tmp_path):
    pixel_values = tiny_clip(batch=2).permute(0, 2, 1, 3, 4)
    plain = load_hf(hf_dir)
    inputs = {}
    for index, layer in enumerate(plain.videomae.encoder.layer):
        layer.attention.attention.register_forward_pre_hook(
            lambda module, args, index=index: inputs.__setitem__(index, args[0])
        )
    with torch.no_grad():
        plain(pixel_values=pixel_values)

    model = aptune.inject(load_hf(hf_dir), "apt", **APT_OPTIONS).train()
    model.videomae.eval()  # a mix of modes, given back as it was
    aptune.init_prompts_from_clips(model, pixel_values, seed=3)
    assert model.training and not model.videomae.training and not model.videomae.encoder.training
    prompts = model.kv_prompts
    assert not hasattr(prompts, "sampler")  # later passes use the prompts again
    model.eval()
    assert not torch.allclose(hf_logits(model, tiny_clip(batch=2)), hf_logits(plain, tiny_clip(batch=2)), atol=1e-4)
    for layer in (1, 2):  # the prompted range of APT_OPTIONS
        attention = model.videomae.encoder.layer[layer].attention.attention
        with torch.no_grad():
            keys = _heads(attention.key(inputs[layer]), 4)
            values = attention.value(inputs[layer])
        picked = _row_indices(prompts.keys[layer - 1], keys)
        # each prompt's value is the value of the very token (and head) its key came from
        torch.testing.assert_close(prompts.values[layer - 1], _heads(values, 4)[picked])

    again = aptune.inject(load_hf(hf_dir), "apt", **APT_OPTIONS)
    aptune.init_prompts_from_clips(again, pixel_values, seed=3)
    assert torch.equal(again.kv_prompts.keys, prompts.keys)
    _, meta = aptune.read_adapter(aptune.save_adapter(model, tmp_path / "tokens.safetensors"))
    assert meta["method"]["prompt_init"] == "tokens"

    vpt = aptune.inject(load_hf(hf_dir), "vpt-deep", num_prompts=2)
    with pytest.raises(ConfigError, match="supports 'apt', not 'vpt-deep'"):
        aptune.init_prompts_from_clips(vpt, pixel_values)
    assert vpt.aptune_injection.method.prompt_init == "uniform"

    failed = aptune.inject(load_hf(hf_dir), "apt", **APT_OPTIONS)
    uniform = failed.kv_prompts.keys.clone()
    with pytest.raises(ValueError):  # transformers checks the channel count
        aptune.init_prompts_from_clips(failed, pixel_values[:, :, :2])  # two colour channels
    assert not hasattr(failed.kv_prompts, "sampler") and torch.equal(failed.kv_prompts.keys, uniform)
    _, meta = aptune.read_adapter(aptune.save_adapter(failed, tmp_path / "failed.safetensors"))
    assert meta["method"]["prompt_init"] == "uniform"
    with pytest.raises(ConfigError, match="needs a model with prompts"):
        aptune.init_prompts_from_clips(load_hf(hf_dir), pixel_values)


def test_injected_timm_prompt_keys_are_copied_after_k_norm():
    torch.manual_seed(0)
    model = aptune.inject(TinyTimmViT(qk_norm=True).eval(), "apt", num_prompts=3, prompt_start=1)
    captured = {}
    model.blocks[1].attn.register_forward_pre_hook(lambda module, args: captured.__setitem__("x", args[0]))
    images = torch.randn(2, 3, 32, 32)
    aptune.init_prompts_from_clips(model, images, seed=0)
    attention = model.blocks[1].attn
    with torch.no_grad():  # block 1's input does not depend on any prompt (block 0 has none)
        qkv = attention.qkv(captured["x"]).reshape(2, -1, 3, 4, 8).permute(2, 0, 3, 1, 4)
        normed_keys = attention.k_norm(qkv[1]).reshape(-1, 8)
    _row_indices(model.kv_prompts.keys[0], normed_keys)
    assert torch.cdist(model.kv_prompts.keys[0], qkv[1].reshape(-1, 8)).min(dim=1).values.max() > 1e-3


def test_native_model_takes_the_same_call():
    from helpers import tiny_model

    from aptune.methods.prompt_init import sample_block_tokens

    model = tiny_model("apt", num_prompts=2)
    with pytest.raises(RuntimeError):  # the patch embedding expects 3 channels
        aptune.init_prompts_from_clips(model, tiny_clip()[:, :2])  # two colour channels
    assert model.tuning_method.prompt_init == "uniform"
    aptune.init_prompts_from_clips(model, tiny_clip(), seed=0)
    assert model.tuning_method.prompt_init == "tokens"
    expected = sample_block_tokens(model, tiny_clip(), 2, torch.Generator().manual_seed(0))
    for layer, sample in enumerate(expected):  # the same draw as the trainer's prompt_init: tokens
        assert torch.equal(model.kv_prompts.keys[layer], sample.keys)


# --------------------------------------------------- a key bias, fingerprints, options
def _with_key_bias(model, seed=11):
    """Give every layer's key projection a non-zero bias (some VideoMAE checkpoints have one)."""
    generator = torch.Generator().manual_seed(seed)
    for layer in model.videomae.encoder.layer:
        attention = layer.attention.attention
        key = nn.Linear(attention.key.in_features, attention.key.out_features, bias=True)
        with torch.no_grad():
            key.weight.copy_(attention.key.weight)
            key.bias.copy_(torch.randn(key.out_features, generator=generator))
        attention.key = key
    return model


def test_a_non_zero_key_bias_is_kept_so_native_equals_injected_with_prompts(tmp_path):
    from safetensors.torch import load_file

    hf = _with_key_bias(tiny_hf_model())
    folder = tmp_path / "hf_key_bias"
    hf.save_pretrained(folder)
    assert "videomae.encoder.layer.0.attention.attention.key.bias" in load_file(folder / "model.safetensors")

    native = aptune.create_model(pretrained=folder, method="apt", **APT_OPTIONS).eval()
    assert native.blocks[0].attn.k_bias is not None and not native.blocks[0].attn.k_bias.requires_grad
    randomize_trainable_(native, seed=12)
    with torch.no_grad():  # prompts the size of real keys, so the key bias has an effect on their share
        native.kv_prompts.keys.mul_(20)
    injected = aptune.inject(hf, "apt", **APT_OPTIONS)
    aptune.load_adapter(injected, aptune.save_adapter(native, tmp_path / "adapter.safetensors"))
    clip = tiny_clip(seed=13)
    with torch.no_grad():
        expected = native(clip)
    torch.testing.assert_close(hf_logits(injected, clip), expected, rtol=1e-4, atol=1e-5)

    # with prompts the bias is not exact to drop: the model without it computes something else
    without = aptune.create_model(pretrained=folder, method="apt", **APT_OPTIONS).eval()
    for block in without.blocks:
        block.attn.k_bias = None
    without.load_state_dict({k: v for k, v in native.state_dict().items() if "k_bias" not in k}, strict=False)
    with torch.no_grad():
        assert not torch.allclose(without(clip), expected, atol=1e-4)
    # the fingerprint covers it, so adapters of the biased and unbiased backbones do not mix
    assert aptune.adapters.backbone_fingerprint(without) != aptune.adapters.backbone_fingerprint(native)


def test_a_zero_key_bias_is_dropped_exactly(tmp_path):
    hf = _with_key_bias(tiny_hf_model())
    for layer in hf.videomae.encoder.layer:
        nn.init.zeros_(layer.attention.attention.key.bias)
    hf.save_pretrained(tmp_path / "zero")
    native = aptune.create_model(pretrained=tmp_path / "zero", method="linear")
    assert all(block.attn.k_bias is None for block in native.blocks)


def test_injected_and_native_models_of_the_same_weights_share_a_fingerprint(hf_dir, tmp_path):
    from aptune.adapters import backbone_fingerprint

    native = aptune.create_model(pretrained=hf_dir, method="apt", **APT_OPTIONS)
    injected = aptune.inject(load_hf(hf_dir), "apt", **APT_OPTIONS)
    assert backbone_fingerprint(native) == backbone_fingerprint(injected)
    bare = aptune.inject(transformers.VideoMAEModel.from_pretrained(hf_dir), "apt", num_prompts=2)
    assert backbone_fingerprint(bare) == backbone_fingerprint(native)

    # an adapter of these weights refuses other weights of the same shape
    path = aptune.save_adapter(native, tmp_path / "native.safetensors")
    other = aptune.inject(tiny_hf_model(seed=5), "apt", **APT_OPTIONS)
    with pytest.raises(CheckpointError, match="fingerprint"):
        aptune.load_adapter(other, path)
    aptune.load_adapter(other, path, allow_backbone_mismatch=True)
    torch.testing.assert_close(other.kv_prompts.keys, native.kv_prompts.keys)


@pytest.mark.parametrize(
    "method, theirs, mine, words",
    [
        (
            "apt",
            dict(num_prompts=3, prompt_start=0, prompt_end=1),
            dict(num_prompts=3, prompt_start=1, prompt_end=2),
            ["blocks 0-1", "blocks 1-2"],
        ),
        ("apt", dict(num_prompts=3), dict(num_prompts=2), ["num_prompts=3", "num_prompts=2"]),
        (
            "apt",
            dict(num_prompts=3, reparam=False),
            dict(num_prompts=3, reparam=True),
            ["reparam=False", "reparam=True"],
        ),
        ("vpt-deep", dict(num_prompts=2, prompt_end=1), dict(num_prompts=2), ["blocks 0-1", "blocks 0-2"]),
    ],
)
def test_an_injected_model_refuses_another_methods_options(hf_dir, tmp_path, method, theirs, mine, words):
    native = aptune.create_model(pretrained=hf_dir, method=method, **theirs)
    path = aptune.save_adapter(native, tmp_path / "adapter.safetensors")
    with pytest.raises(CheckpointError) as caught:
        aptune.load_adapter(aptune.inject(load_hf(hf_dir), method, **mine), path)
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_an_injected_model_refuses_other_class_names(hf_dir, tmp_path):
    native = aptune.create_model(pretrained=hf_dir, method="apt", num_prompts=2)
    native.class_names = ["walk", "run", "jump", "sit", "stand"]
    path = aptune.save_adapter(native, tmp_path / "adapter.safetensors")
    with pytest.raises(CheckpointError, match="class 0 is 'walk' in the adapter but 'action_0' in the model"):
        aptune.load_adapter(aptune.inject(load_hf(hf_dir), "apt", num_prompts=2), path)
    # transformers' placeholder labels (LABEL_0, ...) name nothing: the adapter's names are taken
    plain = load_hf(hf_dir)
    plain.config.id2label = {i: f"LABEL_{i}" for i in range(5)}
    aptune.load_adapter(aptune.inject(plain, "apt", num_prompts=2), path)
    assert plain.config.id2label[0] == "walk"


def test_timm_adapters_check_options_and_the_backbone():
    import tempfile
    from pathlib import Path

    torch.manual_seed(0)
    model = aptune.inject(TinyTimmViT().eval(), "apt", num_prompts=3, prompt_start=1)
    with tempfile.TemporaryDirectory() as folder:
        path = aptune.save_adapter(model, Path(folder) / "timm.safetensors")
        same_weights = TinyTimmViT().eval()
        same_weights.load_state_dict(
            {k: v for k, v in model.state_dict().items() if not k.startswith("kv_")}, strict=False
        )
        with pytest.raises(CheckpointError, match="blocks 1-2"):
            aptune.load_adapter(aptune.inject(same_weights, "apt", num_prompts=3, prompt_start=0), path)
        torch.manual_seed(1)
        with pytest.raises(CheckpointError, match="fingerprint"):
            aptune.load_adapter(aptune.inject(TinyTimmViT().eval(), "apt", num_prompts=3, prompt_start=1), path)
