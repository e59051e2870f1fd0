"""The attentive probe: a classifier head that learns *which* tokens to pool.

V-JEPA (Bardes et al., 2024, https://arxiv.org/abs/2404.08471) and V-JEPA 2 (Assran et al.,
2025, https://arxiv.org/abs/2506.09985) evaluate frozen video features with it instead of
mean pooling.  What this module follows from their probe:

* one learned query (``num_queries=1``), started from a truncated normal of std 0.02;
* one cross-attention *block*: the tokens are LayerNorm-ed, the query attends to them
  with multi-head attention (separate q and kv projections with biases, an output
  projection), a residual add, then a pre-norm GELU MLP of ratio 4 with its residual
  add.  The query itself is not normalised before attending;
* linear layers start from a truncated normal of std 0.02 with zero biases, LayerNorms
  at one/zero, and the two projections that end a residual branch (``proj``, ``fc2``)
  are divided by sqrt(2) (V-JEPA's rescaling of a depth-1 probe);
* a linear classifier on the pooled vector.

Simplifications: V-JEPA 2's probe runs three self-attention blocks over the tokens before
the cross-attention block (four "probe blocks"); this one has the cross-attention block
only, as V-JEPA's.  With several queries (``num_queries > 1``) their outputs are averaged,
so the pooled vector keeps the backbone's width D and everything downstream of pooling
(aptune's ``fc_norm``, the classifier, adapter shapes) is the same for both heads.

:class:`AttentiveProbe` maps tokens (B, N, D) to pooled features (B, D) and knows nothing of
aptune's ViT, so a wrapper of another backbone can reuse it; its tensors are ``queries``,
``token_norm.*``, ``q.*``, ``kv.*``, ``proj.*``, ``mlp_norm.*``, ``fc1.*``, ``fc2.*``.
:class:`AttentiveHead` is the classifier that owns one: an ``nn.Linear`` (``weight``,
``bias``: the linear head's own tensors and meaning) plus ``probe.*``.  Inside a model it is
``head``, so its tensors are ``head.weight``, ``head.bias`` and ``head.probe.*``: every
tuning method trains them (they all train ``head.``), adapter files hold them, and code
that reads the classifier as ``head.weight`` works for both heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aptune.errors import ConfigError

#: what ``model.head`` may be: mean pooling + linear (VideoMAE, the APT paper), or the probe + linear
HEADS = ("linear", "attentive")
MAX_QUERIES = 1024  # a typo guard for recipes and adapter headers, far beyond any probe


def check_readout(config) -> None:
    """One-line errors for a config's head options (``head``, ``attentive_queries``, ``attentive_heads``)."""
    if config.head not in HEADS:
        raise ConfigError(f"head={config.head!r} is not one of: {', '.join(HEADS)}")
    if config.head != "attentive":
        return
    queries, heads = config.attentive_queries, config.attentive_heads
    if isinstance(queries, bool) or not isinstance(queries, int) or not 1 <= queries <= MAX_QUERIES:
        raise ConfigError(f"attentive_queries must be an integer in [1, {MAX_QUERIES}], got {queries!r}")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or config.embed_dim % heads:
        raise ConfigError(f"attentive_heads={heads!r} must be a positive integer dividing embed_dim={config.embed_dim}")


PROBE_MLP_RATIO = 4.0  # V-JEPA's


class AttentiveProbe(nn.Module):
    """``num_queries`` learned queries cross-attend to tokens (B, N, D) and give pooled (B, D).

    ``num_heads`` must divide ``dim``.  Attention runs through
    ``scaled_dot_product_attention`` over Q x N scores: no N x N matrix exists.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_queries: int = 1,
        mlp_ratio: float = PROBE_MLP_RATIO,
        eps: float = 1e-6,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"the attentive probe's num_heads={num_heads} does not divide its width {dim}")
        if num_queries < 1:
            raise ValueError(f"the attentive probe needs at least one query, got num_queries={num_queries}")
        self.num_heads = num_heads
        self.init_std = init_std
        self.queries = nn.Parameter(torch.empty(num_queries, dim))
        self.token_norm = nn.LayerNorm(dim, eps=eps)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.reset_parameters()

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.queries, std=self.init_std)
        for linear in (self.q, self.kv, self.proj, self.fc1, self.fc2):
            nn.init.trunc_normal_(linear.weight, std=self.init_std)
            nn.init.zeros_(linear.bias)
        for norm in (self.token_norm, self.mlp_norm):
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)
        for linear in (self.proj, self.fc2):  # the ends of the two residual branches
            linear.weight.div_(math.sqrt(2.0))

    def forward(self, tokens: Tensor) -> Tensor:
        """Pooled features (B, D): the mean of the queries' outputs."""
        return self.forward_queries(tokens).mean(dim=1)

    def forward_queries(self, tokens: Tensor) -> Tensor:
        """Every query's output (B, Q, D), before they are averaged."""
        batch, length, dim = tokens.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        queries = self.queries.to(tokens.dtype).expand(batch, -1, -1)
        q = self.q(queries).view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, Q, d)
        kv = self.kv(self.token_norm(tokens)).view(batch, length, 2, heads, head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, dim)
        out = queries + self.proj(attended)
        return out + self.fc2(F.gelu(self.fc1(self.mlp_norm(out))))


class AttentiveHead(nn.Linear):
    """A linear classifier whose input an :class:`AttentiveProbe` pools from the tokens.

    It *is* the linear head -- ``weight`` (classes, D), ``bias``, ``forward(pooled)`` -- so
    a model's ``head.weight`` and ``head.bias`` mean the same with either head; the probe
    is its child ``probe``, which the model calls on the tokens (``head.probe(tokens)``) in
    place of the mean.
    """

    def __init__(self, dim: int, num_classes: int, num_heads: int, num_queries: int = 1, **probe_options) -> None:
        super().__init__(dim, num_classes)
        self.probe = AttentiveProbe(dim, num_heads, num_queries, **probe_options)
