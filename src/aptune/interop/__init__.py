"""Prompts for models users already have (``transformers`` VideoMAE, ``timm`` ViT).

``inject`` lives in :mod:`aptune.interop.inject`; the library-specific halves in
:mod:`aptune.interop.hf` and :mod:`aptune.interop.timm` import their library
only when a model of that library is injected.
"""

from aptune.interop.inject import Injection, init_prompts_from_clips, inject

__all__ = ["Injection", "init_prompts_from_clips", "inject"]
