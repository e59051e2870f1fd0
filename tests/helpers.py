"""Small models, tiny recipes, small file systems and an independent reference of the APT
formula, shared by the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import aptune
from aptune.config import switch_method
from aptune.models.vit import _ATTENTION_KERNELS

TINY = dict(embed_dim=32, depth=3, num_heads=4, num_frames=4, img_size=32, patch_size=16)


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str, fill: bool = False):
    """A small RAM file system at ``folder`` (``fill``: with no byte left), unmounted on exit;
    a skip where mounting is not allowed (it needs root and mount(8))."""
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, timeout=30
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        if fill:
            _fill(folder / "filler")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def _fill(path: Path) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError:
        pass  # the file system is full
    finally:
        os.close(descriptor)


def tiny_run_config(**sections) -> dict:
    """A recipe for the tiny model that trains in seconds: no augmentation, one test view.

    ``sections`` update the sections of the same name (e.g. ``train={"epochs": 2}``).
    """
    config = {
        "model": {
            "arch": None,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 4,
            "num_frames": 4,
            "img_size": 32,
            "patch_size": 16,
        },
        "method": {"name": "apt", "num_prompts": 2, "prompt_dropout": 0.0},
        "data": {
            "format": "list",
            "num_frames": 4,
            "sampling_rate": 2,
            "input_size": 32,
            "short_side_size": 32,
            "num_workers": 0,
            "num_sample": 1,
            "test_num_segment": 1,
            "test_num_crop": 1,
            "rand_augment": None,
        },
        "optim": {"lr": 0.01, "warmup_epochs": 0},
        "train": {"epochs": 2, "batch_size": 4, "eval_every": 100, "save_every": 1, "log_every": 1},
    }
    for section, values in sections.items():
        if section == "method" and "name" in values:  # as --set method.name= does
            config["method"] = switch_method(config["method"], values["name"])
        config[section].update(values)
    return config


def tiny_model(method: str = "apt", num_classes: int = 5, **kwargs):
    options = {**TINY, **kwargs}
    return aptune.create_model(None, num_classes=num_classes, method=method, **options)


def tiny_clip(batch: int = 2, seed: int = 0, frames: int = 4, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, size, size, generator=generator)


def randomize_(model, seed: int = 0) -> None:
    """Non-trivial values everywhere (zero biases and unit norms would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + offset)


def randomize_trainables_(model, seed: int = 0) -> None:
    """Trainable tensors drawn at random, large enough to move the logits; APT's prompt scales and
    ``fc_norm``'s weight around 1, so that the scales' max(s, 1) clamps some and passes others."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                offset = 1.0 if name in ("kv_prompts.scales", "fc_norm.weight") else 0.0
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5 + offset)


def reference_apt_logits(model, x: torch.Tensor) -> torch.Tensor:
    """APT written out with an explicit softmax, reading the raw parameters.

    Independent of aptune's attention code: per-head q, k, v from the fused
    weights, prompts scaled by max(s, 1), k' = [k; Pk], v' = [v; Pv],
    softmax(q k'^T / sqrt(d)) v'.  Dropout is off (eval).
    """
    config = model.config
    heads, head_dim = config.num_heads, config.head_dim
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = tokens + model.pos_embed
    prompts = getattr(model, "kv_prompts", None)
    batch, length, dim = tokens.shape
    for index, block in enumerate(model.blocks):
        h = F.layer_norm(tokens, (dim,), block.norm1.weight, block.norm1.bias, config.layer_norm_eps)
        attn = block.attn
        w_q, w_k, w_v = attn.qkv.weight.chunk(3, dim=0)
        q = (h @ w_q.T + attn.q_bias).view(batch, length, heads, head_dim).transpose(1, 2)
        k = (h @ w_k.T).view(batch, length, heads, head_dim).transpose(1, 2)
        v = (h @ w_v.T + attn.v_bias).view(batch, length, heads, head_dim).transpose(1, 2)
        if prompts is not None and prompts.first_layer <= index <= prompts.last_layer:
            j = index - prompts.first_layer
            pk, pv = prompts.keys[j], prompts.values[j]
            if prompts.scales is not None:
                pk = pk * torch.clamp(prompts.scales[j, 0], min=1.0)[:, None]
                pv = pv * torch.clamp(prompts.scales[j, 1], min=1.0)[:, None]
            k = torch.cat([k, pk.expand(batch, heads, -1, -1)], dim=2)
            v = torch.cat([v, pv.expand(batch, heads, -1, -1)], dim=2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, length, dim)
        tokens = tokens + out @ attn.proj.weight.T + attn.proj.bias
        h = F.layer_norm(tokens, (dim,), block.norm2.weight, block.norm2.bias, config.layer_norm_eps)
        tokens = tokens + block.mlp.fc2(F.gelu(block.mlp.fc1(h)))
    pooled = F.layer_norm(tokens.mean(1), (dim,), model.fc_norm.weight, model.fc_norm.bias, config.layer_norm_eps)
    return pooled @ model.head.weight.T + model.head.bias


def tiny_hf_model(num_labels: int = 5, seed: int = 0):
    """A small random transformers VideoMAEForVideoClassification with the TINY shape."""
    import pytest

    transformers = pytest.importorskip("transformers")
    config = transformers.VideoMAEConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=16,
        num_frames=4,
        tubelet_size=2,
        num_labels=num_labels,
        id2label={i: f"action_{i}" for i in range(num_labels)},
        label2id={f"action_{i}": i for i in range(num_labels)},
    )
    model = transformers.VideoMAEForVideoClassification(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + offset)
    return model


def tiny_vjepa2(seed: int = 0):
    """A small random transformers VJEPA2Model: 4 frames at 32x32 in 8 tokens (TINY's clip), 2 layers."""
    import pytest

    transformers = pytest.importorskip("transformers")
    config = transformers.VJEPA2Config(
        crop_size=32,
        frames_per_clip=4,
        patch_size=16,
        tubelet_size=2,
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        mlp_ratio=2.0,
        pred_hidden_size=16,
        pred_num_attention_heads=2,
        pred_num_hidden_layers=1,
        pred_num_mask_tokens=2,
    )
    torch.manual_seed(seed)
    model = transformers.VJEPA2Model(config).eval()
    randomize_(model, seed)
    return model


def smooth_frames(frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) with image-like local correlation (plain noise would hide blur and warps)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(frames * 3, 1, height, width, generator=generator) * 255
    smooth = torch.nn.functional.avg_pool2d(noise, 5, 1, 2) * 3 - 255
    return smooth.clamp(0, 255).round().to(torch.uint8).view(frames, 3, height, width).permute(0, 2, 3, 1).contiguous()


class CountAttentionKernels(TorchDispatchMode):
    """How many times a fused attention kernel (forward) runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _ATTENTION_KERNELS:
            self.calls += 1
        return func(*args, **(kwargs or {}))
