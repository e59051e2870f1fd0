"""VideoMAE pre-training: tube masking, per-patch targets, and checkpoints create_model reads."""

import torch
from helpers import TINY, tiny_clip

import aptune
from aptune.models.pretrain import VideoMAEPretrainer, target_patches
from aptune.models.vit import arch_config


def tiny_pretrainer(**kwargs):
    return VideoMAEPretrainer(arch_config(None, **TINY), decoder_dim=16, decoder_depth=1, decoder_heads=2, **kwargs)


def test_tube_mask_hides_the_same_patches_in_every_frame():
    model = tiny_pretrainer(mask_ratio=0.75)
    mask = model.tube_mask(3, "cpu", torch.Generator().manual_seed(0))
    frames, height, width = model.config.grid
    per_frame = mask.view(3, frames, height * width)
    assert torch.equal(per_frame[:, 0], per_frame[:, 1])
    assert (per_frame[:, 0].sum(dim=1) == 3).all()  # 75 % of 4 spatial patches
    assert not torch.equal(per_frame[0, 0], per_frame[1, 0]) or not torch.equal(per_frame[1, 0], per_frame[2, 0])


def test_targets_are_normalised_per_patch():
    config = arch_config(None, **TINY)
    target = target_patches(tiny_clip(), config).view(2, config.num_patches, -1, 3)
    torch.testing.assert_close(target.mean(dim=2), torch.zeros(2, config.num_patches, 3), atol=1e-4, rtol=0)


def test_loss_decreases_and_checkpoint_loads_into_create_model(tmp_path):
    torch.manual_seed(0)
    model = tiny_pretrainer(mask_ratio=0.5)
    clips = tiny_clip(batch=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    mask = model.tube_mask(4, "cpu", torch.Generator().manual_seed(1))
    losses = []
    for _ in range(30):
        loss = model(clips, mask)  # fixed mask: the decoder can learn these clips' hidden patches
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]

    from safetensors.torch import save_file

    path = tmp_path / "pretrain.safetensors"
    save_file(model.encoder_state_dict(), path)
    tuned = aptune.create_model(None, num_classes=3, method="apt", num_prompts=2, pretrained=path, **TINY)
    torch.testing.assert_close(tuned.blocks[0].attn.qkv.weight, model.encoder.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(tuned.patch_embed.proj.weight, model.encoder.patch_embed.proj.weight)


def test_raw_pixel_targets_are_the_clip_pixels():
    config = arch_config(None, **TINY)
    clip = tiny_clip(batch=1)
    target = target_patches(clip, config, normalize=False)
    mean = torch.tensor(config.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1, 1)
    pixels = clip * std + mean
    # first tubelet: frames 0-1, rows 0-15, cols 0-15, channels last
    first = pixels[0, :, 0:2, 0:16, 0:16].permute(1, 2, 3, 0).reshape(-1)
    torch.testing.assert_close(target[0, 0], first)


def test_pretrain_refuses_classifier_options_instead_of_ignoring_them():
    import pytest

    from aptune.config import Config
    from aptune.engine.pretrainer import refuse_classifier_options
    from aptune.errors import ConfigError

    refuse_classifier_options(Config())  # defaults pass
    for section, key, value in (
        ("optim", "head_lr", 0.01),
        ("train", "standardize_features", True),
        ("train", "cache_features", True),
        ("model", "head", "attentive"),
    ):
        config = Config()
        setattr(getattr(config, section), key, value)
        with pytest.raises(ConfigError, match=f"{section}.{key} is a classifier option"):
            refuse_classifier_options(config)
