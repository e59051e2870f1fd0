"""The backbone (``vit``), its attention (``attention``) and weight loading (``checkpoints``)."""

from aptune.models.vit import PRESETS, VisionTransformer, ViTConfig, arch_config, count_parameters

__all__ = ["PRESETS", "ViTConfig", "VisionTransformer", "arch_config", "count_parameters"]
