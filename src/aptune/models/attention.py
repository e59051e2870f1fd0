"""Multi-head self-attention with an explicit slot for extra keys and values.

This is the extension point Attention Prompt Tuning uses: prompts enter as
``extra_kv`` and are concatenated to the keys and values along the token axis,
so queries (and therefore the block's output length) are unchanged.  The
attention itself always goes through ``scaled_dot_product_attention``, which
never materialises an N x N matrix on the fused/flash paths.

State-dict names follow the original VideoMAE code: a fused ``qkv`` Linear
without bias plus separate ``q_bias`` and ``v_bias``.  The key has no bias in
VideoMAE; without prompts a bias shared by every key cancels in the softmax, but
with prompts it does not (the prompt keys do not get it).  So a checkpoint whose
key projection has a non-zero bias (some Hugging Face models) keeps it as an
optional, frozen ``k_bias`` (:meth:`Attention.add_key_bias`), and native and
injected models compute the same thing.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Keys and values to append, each broadcastable to (batch, heads, P, head_dim): a pair, or
# one tensor (2, ..., P, head_dim) holding both, which the native attention appends in one copy.
ExtraKV = tuple[Tensor, Tensor] | Tensor
# A function of the block input (B, N, D) returning an addition to the fused qkv output (B, N, 3D).
QKVDelta = Callable[[Tensor], Tensor]


class Attention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.register_parameter("k_bias", None)  # only for checkpoints that have one (add_key_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def add_key_bias(self, bias: Tensor, requires_grad: bool = False) -> None:
        """Give the key projection a bias (VideoMAE has none; some Hugging Face checkpoints do)."""
        dim = self.qkv.in_features
        if tuple(bias.shape) != (dim,):
            raise ValueError(f"a key bias must have shape ({dim},), not {tuple(bias.shape)}")
        weight = self.qkv.weight
        self.k_bias = nn.Parameter(bias.detach().to(weight.device, weight.dtype).clone(), requires_grad=requires_grad)

    def qkv_bias(self) -> Tensor | None:
        if self.q_bias is None and self.k_bias is None:
            return None
        parts = (self.q_bias, self.k_bias, self.v_bias)
        reference = next(p for p in parts if p is not None)
        # a missing part is zero: VideoMAE fixes the key bias at zero
        return torch.cat([torch.zeros_like(reference) if p is None else p for p in parts])

    def project_qkv(self, x: Tensor, qkv_delta: QKVDelta | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v each (B, heads, N, head_dim)."""
        # unbind, not qkv[0], qkv[1], qkv[2]: each indexing op's backward zero-fills and copies the
        # whole qkv gradient, which cost ~10 % of an APT training step on CPU
        q, k, v = self.split_heads(self.fused_projection(x, qkv_delta), 3).unbind(0)
        return q, k, v

    def fused_projection(self, x: Tensor, qkv_delta: QKVDelta | None = None) -> Tensor:
        """The (B, N, 3D) output of the fused q/k/v projection."""
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        if qkv_delta is not None:
            qkv = qkv + qkv_delta(x)  # a low-rank update (LoRA) of the frozen projection
        return qkv

    def split_heads(self, projected: Tensor, parts: int) -> Tensor:
        """(B, N, parts * D) -> (parts, B, heads, N, head_dim), a view."""
        batch, tokens, _ = projected.shape
        return projected.view(batch, tokens, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def project_q_and_kv(self, x: Tensor, qkv_delta: QKVDelta | None = None) -> tuple[Tensor, Tensor]:
        """q (B, heads, N, head_dim) and k, v stacked (2, B, heads, N, head_dim), from two products.

        For training with prompts: SDPA keeps q for the backward, and a q that is a view of
        the fused output keeps all of it (3·N·D per block) alive although k and v are
        copied anyway when the prompts are appended.  Two products leave N·D.
        """
        dim = self.qkv.in_features
        weight, bias = self.qkv.weight, self.qkv_bias()
        q = F.linear(x, weight[:dim], None if bias is None else bias[:dim])
        kv = F.linear(x, weight[dim:], None if bias is None else bias[dim:])
        if qkv_delta is not None:
            delta = qkv_delta(x)
            q, kv = q + delta[..., :dim], kv + delta[..., dim:]
        return self.split_heads(q, 1)[0], self.split_heads(kv, 2)

    def forward(
        self,
        x: Tensor,
        extra_kv: ExtraKV | None = None,
        qkv_delta: QKVDelta | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        return self.proj_drop(self.proj(self.attend(x, extra_kv, qkv_delta, attn_mask)))

    def attend(
        self,
        x: Tensor,
        extra_kv: ExtraKV | None = None,
        qkv_delta: QKVDelta | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """The heads' outputs, (B, N, D), before the output projection."""
        batch, tokens, dim = x.shape
        dropout = self.attn_drop if self.training else 0.0
        if isinstance(extra_kv, Tensor) and attn_mask is None:
            out = self._attend_with_stacked_prompts(x, extra_kv, qkv_delta, dropout)
        else:
            q, k, v = self.project_qkv(x, qkv_delta)
            out = prompted_attention(q, k, v, extra_kv, attn_mask=attn_mask, dropout_p=dropout)
        return out.transpose(1, 2).reshape(batch, tokens, dim)

    def _attend_with_stacked_prompts(self, x: Tensor, extra_kv: Tensor, qkv_delta, dropout: float) -> Tensor:
        """APT's hot path: the prompts (2, ..., P, head_dim) appended to k and v by one copy."""
        if (
            not torch.is_grad_enabled()
            and x.shape[0] == 1
            and qkv_delta is None
            and not _autocast_on(x.device)  # out= products would bypass autocast
        ):
            q, k, v = self._project_into_prompted_buffer(x[0], extra_kv)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        if torch.is_grad_enabled():
            q, kv = self.project_q_and_kv(x, qkv_delta)
            if dropout == 0.0 and extra_kv.requires_grad and not (q.requires_grad or kv.requires_grad):
                return PromptsOnlyAttention.apply(q, kv, extra_kv)
        else:
            qkv = self.split_heads(self.fused_projection(x, qkv_delta), 3)
            q, kv = qkv[0], qkv[1:]
        shape = (2, kv.shape[1], kv.shape[2], extra_kv.shape[-2], kv.shape[-1])
        k, v = torch.cat((kv, extra_kv.to(kv.dtype).expand(shape)), dim=3).unbind(0)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)

    def _project_into_prompted_buffer(self, x: Tensor, extra_kv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One clip's q, k, v with k, v already followed by the prompts: no copy of the tokens' k, v.

        The projection writes straight into rows 0..N-1 of an (N + P, 3, heads, head_dim)
        buffer whose last P rows hold the prompts, so k and v are strided views of it.  At
        128 tokens appending by ``torch.cat`` cost as much as the attention to the prompts.
        """
        rows, q, k, v = self._prompted_buffer(x, extra_kv)
        bias = self.qkv_bias()
        if bias is None:
            torch.mm(x, self.qkv.weight.t(), out=rows)
        else:
            torch.addmm(bias, x, self.qkv.weight.t(), out=rows)
        return q, k, v

    def _prompted_buffer(self, x: Tensor, extra_kv: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The buffer's token rows and its q, k, v views, the prompts already in place.

        A small buffer is kept for the next forward with the same prompts (per thread: two
        threads running one model must not share it): at 128 tokens making it, copying the
        prompts in and taking its views were a third of APT's overhead.
        """
        tokens, dim = x.shape
        num_prompts = extra_kv.shape[-2]
        size = (tokens + num_prompts) * 3 * dim * x.element_size()
        if extra_kv.is_inference():  # no version counter to tell a change: not kept
            return self._new_prompted_buffer(x, extra_kv)
        kept = _KEPT_BUFFERS.__dict__.setdefault("by_module", weakref.WeakKeyDictionary())
        # a buffer made under inference_mode is an inference tensor: written only under it again
        state = (tokens, x.dtype, x.device, torch.is_inference_mode_enabled(), extra_kv.data_ptr(), extra_kv._version)
        found = kept.get(self)
        if found is not None and found[0] is extra_kv and found[1] == state:
            return found[2]
        views = self._new_prompted_buffer(x, extra_kv)
        if size <= _KEEP_BUFFERS_UP_TO:
            kept[self] = (extra_kv, state, views)  # holding extra_kv: its identity is not reused
        return views

    def _new_prompted_buffer(self, x: Tensor, extra_kv: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tokens, dim = x.shape
        num_prompts, heads, head_dim = extra_kv.shape[-2], self.num_heads, self.head_dim
        # strided views made directly: per layer, chains of view ops cost more than the copy
        buffer = x.new_empty(tokens + num_prompts, 3 * dim)
        row = 3 * dim
        # the prompts' k and v slots, (P, 2, heads, head_dim); their q slots stay unused
        slots = buffer.as_strided((num_prompts, 2, heads, head_dim), (row, dim, head_dim, 1), tokens * row + dim)
        slots.copy_(extra_kv.select(1, 0).permute(2, 0, 1, 3))  # broadcast over heads where shared
        q = buffer.as_strided((1, heads, tokens, head_dim), (0, head_dim, row, 1))
        every = (1, heads, tokens + num_prompts, head_dim)
        k = buffer.as_strided(every, (0, head_dim, row, 1), dim)
        v = buffer.as_strided(every, (0, head_dim, row, 1), 2 * dim)
        return buffer.narrow(0, 0, tokens), q, k, v


class PromptsOnlyAttention(torch.autograd.Function):
    """Attention whose only inputs needing gradients are the appended prompts.

    That is the first prompted block of APT: its input comes from frozen layers, so q and
    the tokens' k and v are constants.  The fused kernel's backward would compute dq, dk
    and dv for every token (and recompute q kᵀ to do it); the prompts' gradients need only
    the attention probabilities of their P columns, rebuilt from the row log-sum-exp kept
    by the forward, which costs O(N·P·D) instead of O(N²·D).  The forward is the fused
    kernel's, unchanged.
    """

    @staticmethod
    def forward(ctx, q: Tensor, kv: Tensor, prompts: Tensor) -> Tensor:
        shape = (2, kv.shape[1], kv.shape[2], prompts.shape[-2], kv.shape[-1])
        k, v = torch.cat((kv, prompts.to(kv.dtype).expand(shape)), dim=3).unbind(0)
        out, log_sum_exp = attention_with_log_sum_exp(q, k, v)
        ctx.save_for_backward(q, prompts, out, log_sum_exp)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, prompts, out, log_sum_exp = ctx.saved_tensors
        with _autocast_off(q.device):
            q, grad_out, out = q.float(), grad_out.float(), out.float()
            keys, values = prompts.float().unbind(0)
            scale = q.shape[-1] ** -0.5
            probs = torch.exp(q @ keys.transpose(-1, -2) * scale - log_sum_exp.unsqueeze(-1))  # (B, H, N, P)
            grad_values = probs.transpose(-1, -2) @ grad_out
            # softmax backward restricted to the prompt columns: p * (dO·v - rowsum(dO * out))
            grad_scores = probs * (grad_out @ values.transpose(-1, -2) - (grad_out * out).sum(-1, keepdim=True))
            grad_keys = grad_scores.transpose(-1, -2) @ q * scale
            grad = torch.stack((grad_keys, grad_values)).sum_to_size(prompts.shape)
        return None, None, grad.to(prompts.dtype)


def attention_with_log_sum_exp(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """SDPA's output and, per query, the float32 log-sum-exp of its scaled scores (B, H, N)."""
    if q.device.type == "cpu" and _CPU_FLASH is not None:
        out, log_sum_exp = _CPU_FLASH(q, k, v, 0.0, False)  # the kernel SDPA itself runs here
        return out, log_sum_exp.float()
    out = F.scaled_dot_product_attention(q, k, v)
    if q.device.type == "meta":  # counting multiply-adds: a fused kernel's log-sum-exp costs none
        return out, q.new_empty(q.shape[:-1], dtype=torch.float32)
    scale = q.shape[-1] ** -0.5
    # elsewhere the kernels' own log-sum-exp is not public: compute it a block of queries at a time
    rows = max(1, (1 << 24) // max(1, q.shape[0] * q.shape[1] * k.shape[-2]))
    parts = [
        torch.logsumexp(block.float() @ k.float().transpose(-1, -2) * scale, dim=-1) for block in q.split(rows, dim=-2)
    ]
    return out, torch.cat(parts, dim=-1)


_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
# one-clip inference buffers kept between forwards, per thread and module, up to this size each
_KEPT_BUFFERS = threading.local()
_KEEP_BUFFERS_UP_TO = 4 << 20


def _autocast_off(device: torch.device):
    """A region without autocast on ``device`` (nothing to switch off on other devices)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _autocast_on(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def prompted_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    extra_kv: ExtraKV | None = None,
    *,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Attention of ``q`` over the tokens' keys/values followed by ``extra_kv``: APT's arithmetic.

    Every prompted attention in aptune goes through here: the native blocks, the
    transformers and timm injections and the multi-task model.  A mask that covers only
    the tokens' keys (last dimension N) gets "attend" columns for the extra keys; one that
    already covers N + P (the multi-task model's padding mask) is used as it is.
    """
    if extra_kv is not None:
        num_extra = extra_kv[0].shape[-2]
        k, v = append_kv(k, v, extra_kv)
        if attn_mask is not None and attn_mask.shape[-1] == k.shape[-2] - num_extra:
            attn_mask = extend_mask(attn_mask, num_extra)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


def extend_mask(mask: Tensor, num_extra: int) -> Tensor:
    """Every query may attend to every extra key: True (bool) or 0 (additive) in the new columns."""
    shape = (*mask.shape[:-1], num_extra)
    extra = mask.new_ones(shape) if mask.dtype == torch.bool else mask.new_zeros(shape)
    return torch.cat((mask, extra), dim=-1)


def append_kv(k: Tensor, v: Tensor, extra_kv: ExtraKV) -> tuple[Tensor, Tensor]:
    """Concatenate extra keys/values (broadcast over batch and heads) after the tokens."""
    extra_k, extra_v = extra_kv
    shape = (k.shape[0], k.shape[1], extra_k.shape[-2], k.shape[-1])
    extra_k = extra_k.to(k.dtype).expand(shape)
    extra_v = extra_v.to(v.dtype).expand(shape)
    return torch.cat((k, extra_k), dim=2), torch.cat((v, extra_v), dim=2)
