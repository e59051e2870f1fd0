"""aptune: Attention Prompt Tuning for frozen, pretrained video transformers.

APT (Bandara & Patel, FG 2024, https://arxiv.org/abs/2403.06978) keeps a VideoMAE
ViT frozen and learns a few prompt vectors appended to the keys and values of
each attention layer, plus the classifier.
"""

__version__ = "0.1.0"
