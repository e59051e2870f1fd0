"""VideoMAE masked auto-encoding (Tong et al., NeurIPS 2022, https://arxiv.org/abs/2203.12602).

Tube masking hides the same spatial patches in every frame (ratio 0.9 by
default), so a masked patch cannot be copied from its temporal neighbours.  The
encoder sees only the visible tokens; a light decoder gets them back with a
shared mask token at every hidden position and predicts each masked tubelet's
pixels, normalised per patch.  The loss is the mean squared error over the
masked tubelets only.

State-dict names follow the original pre-training code (``encoder.*``,
``encoder_to_decoder``, ``mask_token``, ``decoder.*``), so the checkpoints this
writes load through ``create_model(pretrained=...)`` like any VideoMAE one.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from aptune.models.vit import Block, PatchEmbed, ViTConfig, drop_path_rates, sincos_position_table


class Encoder(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.patch_size, config.tubelet_size, config.in_chans, config.embed_dim)
        self.register_buffer(
            "pos_embed", sincos_position_table(config.num_patches, config.embed_dim)[None], persistent=False
        )
        self.blocks = nn.ModuleList(Block(config, rate) for rate in drop_path_rates(config))
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, visible: Tensor) -> Tensor:
        """Encode only the visible tokens; ``visible`` is (B, N_visible) token indices."""
        tokens, _ = self.patch_embed(x)
        tokens = tokens + self.pos_embed.to(tokens.dtype)
        tokens = torch.gather(tokens, 1, visible[..., None].expand(-1, -1, tokens.shape[-1]))
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class Decoder(nn.Module):
    def __init__(self, config: ViTConfig, out_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.embed_dim, out_dim)

    def forward(self, tokens: Tensor, num_masked: int) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, -num_masked:]))


class VideoMAEPretrainer(nn.Module):
    """Encoder + decoder; ``forward(clips)`` returns the reconstruction loss."""

    def __init__(
        self,
        config: ViTConfig,
        decoder_dim: int = 96,
        decoder_depth: int = 2,
        decoder_heads: int = 3,
        mask_ratio: float = 0.9,
        normalize_target: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.config = config
        self.mask_ratio = mask_ratio
        self.normalize_target = normalize_target
        patch_dim = config.tubelet_size * config.patch_size**2 * config.in_chans
        decoder_config = replace(
            config, embed_dim=decoder_dim, depth=decoder_depth, num_heads=decoder_heads, drop_path_rate=0.0
        )
        self.encoder = Encoder(config)
        self.encoder_to_decoder = nn.Linear(config.embed_dim, decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_position_table(config.num_patches, decoder_dim)[None], persistent=False
        )
        self.decoder = Decoder(decoder_config, patch_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def tube_mask(self, batch: int, device, generator: torch.Generator | None = None) -> Tensor:
        """(B, N) bool, True = hidden; the same spatial patches in every time slot."""
        frames, height, width = self.config.grid
        spatial = height * width
        num_masked = int(round(self.mask_ratio * spatial))
        scores = torch.rand(batch, spatial, generator=generator, device=device)
        hidden = torch.zeros(batch, spatial, dtype=torch.bool, device=device)
        hidden.scatter_(1, scores.argsort(dim=1)[:, :num_masked], True)
        return hidden[:, None, :].expand(batch, frames, spatial).reshape(batch, -1)

    def forward(self, clips: Tensor, mask: Tensor | None = None) -> Tensor:
        batch = clips.shape[0]
        mask = self.tube_mask(batch, clips.device) if mask is None else mask
        order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible first, then hidden
        num_visible = int((~mask[0]).sum())
        visible, hidden = order[:, :num_visible], order[:, num_visible:]
        encoded = self.encoder_to_decoder(self.encoder(clips, visible))
        pos = self.decoder_pos_embed.expand(batch, -1, -1).to(encoded.dtype)
        pos_visible = torch.gather(pos, 1, visible[..., None].expand(-1, -1, pos.shape[-1]))
        pos_hidden = torch.gather(pos, 1, hidden[..., None].expand(-1, -1, pos.shape[-1]))
        tokens = torch.cat([encoded + pos_visible, self.mask_token.to(encoded.dtype) + pos_hidden], dim=1)
        prediction = self.decoder(tokens, hidden.shape[1])
        target = target_patches(clips, self.config, self.normalize_target)
        target = torch.gather(target, 1, hidden[..., None].expand(-1, -1, target.shape[-1]))
        return ((prediction.float() - target) ** 2).mean()

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The original pre-training layout: what ``create_model(pretrained=...)`` reads."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}


def target_patches(clips: Tensor, config: ViTConfig, normalize: bool = True) -> Tensor:
    """(B, C, T, H, W) normalised clips -> (B, N, t*p*p*C) pixels in [0, 1], or (``normalize``,
    VideoMAE's default) each tubelet normalised per channel to zero mean and unit variance."""
    mean = torch.tensor(config.mean, device=clips.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.std, device=clips.device).view(1, -1, 1, 1, 1)
    pixels = clips.float() * std + mean  # back to [0, 1]: the target is pixels, not the model's input
    batch, channels, frames, height, width = pixels.shape
    t, p = config.tubelet_size, config.patch_size
    pixels = pixels.view(batch, channels, frames // t, t, height // p, p, width // p, p)
    pixels = pixels.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(batch, -1, t * p * p, channels)
    if not normalize:
        return pixels.flatten(2)
    mean = pixels.mean(dim=-2, keepdim=True)
    var = pixels.var(dim=-2, unbiased=True, keepdim=True)
    return ((pixels - mean) / (var.sqrt() + 1e-6)).flatten(2)
