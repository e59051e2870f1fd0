"""aptune: Attention Prompt Tuning for frozen, pretrained video transformers.

APT (Bandara & Patel, FG 2024, https://arxiv.org/abs/2403.06978) keeps a VideoMAE
ViT frozen and learns a few prompt vectors appended to the keys and values of
each attention layer, plus the classifier.

    import aptune
    model = aptune.create_model("vit_small_patch16_224", num_classes=101, method="apt",
                                num_prompts=8, pretrained="videomae_vits_k400.pth")
    aptune.count_parameters(model)          # (trainable, total)
    aptune.save_adapter(model, "ucf101.safetensors")
"""

from aptune._version import __version__ as __version__
from aptune.adapters import (
    backbone_fingerprint,
    load_adapter,
    model_from_adapter,
    read_adapter,
    save_adapter,
)
from aptune.factory import create_model
from aptune.interop import init_prompts_from_clips, inject
from aptune.methods import METHODS, build_method
from aptune.models.vit import PRESETS, VisionTransformer, ViTConfig, count_parameters
from aptune.multitask import MultiAdapterModel

__all__ = [
    "METHODS",
    "MultiAdapterModel",
    "PRESETS",
    "VisionTransformer",
    "ViTConfig",
    "backbone_fingerprint",
    "build_method",
    "count_parameters",
    "create_model",
    "init_prompts_from_clips",
    "inject",
    "load_adapter",
    "model_from_adapter",
    "read_adapter",
    "save_adapter",
]
