"""Many tasks, one frozen backbone, one batch.

APT leaves the backbone untouched, so the adapters of several tasks (UCF101,
HMDB51, ...) can share one backbone *in the same forward pass*: each sample
attends to its own task's prompts and goes through its own task's
``fc_norm`` + ``head``.  Per layer the prompts of every task are stacked into a
bank (tasks, P_max, head_dim); a batch gathers one row per sample, giving
(B, 1, P, head_dim) keys/values that ``scaled_dot_product_attention``
broadcasts over the heads.

Tasks with fewer prompts in a layer (or none) are padded with zero rows and an
additive float mask of shape (B, 1, 1, N + P), -inf on the padded keys, which
SDPA broadcasts over heads and queries: softmax gives those keys exactly zero
weight, so the result is the unpadded attention (up to float rounding), and
the mask is never N x N (on CPU the fused flash kernel takes it as is).  A
batch whose tasks all have the same number of prompts in a layer needs no
mask.  Either way each layer runs the backbone's own block, which takes the mask.

Supported adapters: ``apt`` and ``linear`` with the linear head; others, and adapters with an
attentive head (``model.head: attentive``: each task would pool the shared tokens its own way),
raise a ConfigError.  Each adapter is
checked against the shared backbone as :func:`aptune.load_adapter` checks it: the
architecture (including the blocks' LayerNorm eps), the prompt tensors against the
stored method options (layer range, number of prompts, ``reparam``), the head's shape
and class names, and the backbone fingerprint (``allow_backbone_mismatch=True`` to
accept other weights, with a warning).  Each task's ``fc_norm`` uses the eps the
adapter was trained with (``fc_norm_eps``; transformers models: 1e-5, not the blocks' 1e-12).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aptune.adapters import COMPARED_ARCH, backbone_fingerprint, check_backbone_fingerprint, read_adapter
from aptune.errors import CheckpointError, ConfigError
from aptune.factory import create_model
from aptune.methods import method_from_dict, methods_that
from aptune.methods.apt import resolve_layer_range
from aptune.models.vit import ATTENTIVE_HEAD_KEYS, PRESETS, VisionTransformer, ViTConfig

log = logging.getLogger(__name__)

AdapterSource = str | Path | tuple[dict, dict]
SUPPORTED_METHODS = methods_that("shareable")
# architecture fields that must agree between the backbone and every adapter: those an adapter
# shares with its model, less the ones each task keeps in its own head
SHARED_ARCH = tuple(
    key for key in COMPARED_ARCH["videomae"] if key not in ("fc_norm_eps", "num_classes", *ATTENTIVE_HEAD_KEYS)
)
HEAD_TENSORS = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")
PROMPT_TENSORS = ("kv_prompts.keys", "kv_prompts.values", "kv_prompts.scales")


class TaskHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, eps: float) -> None:
        super().__init__()
        self.fc_norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.fc_norm(features))


class MultiAdapterModel(nn.Module):
    """A frozen aptune backbone serving several tasks' adapters in one pass.

    ``adapters`` maps a task name to an adapter file or an already read
    ``(tensors, metadata)`` pair (:func:`aptune.read_adapter`).  The backbone's
    own prompts, ``fc_norm`` and ``head`` are not used; LoRA / AdaptFormer / VPT
    modules on it are refused, since they change the shared computation.

    ``forward(clips, task_ids)`` returns a list of B logit vectors in batch
    order, sample i having ``len(class_names(task_ids[i]))`` entries.

    An adapter trained on other backbone weights (its fingerprint differs) is refused
    unless ``allow_backbone_mismatch=True``, which only warns.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        adapters: Mapping[str, AdapterSource],
        *,
        allow_backbone_mismatch: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, VisionTransformer):
            raise ConfigError(
                "MultiAdapterModel needs an aptune VisionTransformer backbone "
                "(aptune.create_model or aptune.model_from_adapter)"
            )
        for slot, _ in backbone.named_extensions():
            if slot != "kv_prompts":  # its own prompts are simply not used: each task brings its own
                raise ConfigError(
                    f"the backbone has {slot} attached; give MultiAdapterModel a plain "
                    "backbone (e.g. create_model(..., method='linear'))"
                )
        if not adapters:
            raise ConfigError("MultiAdapterModel needs at least one task adapter")
        self.backbone = backbone.eval().requires_grad_(False)
        config = backbone.config
        self._tasks = list(adapters)
        self._class_names: dict[str, list[str]] = {}
        self.heads = nn.ModuleDict()
        self._allow_backbone_mismatch = allow_backbone_mismatch
        prompts: dict[str, dict[int, tuple[Tensor, Tensor]]] = {}
        for task, source in adapters.items():
            tensors, meta = _read(source)
            label = f"task {task!r}" + (f" ({source})" if isinstance(source, (str, Path)) else "")
            prompts[task] = self._add_task(task, tensors, meta, label)
        self._build_banks(prompts, config.depth, config.head_dim)

    # ------------------------------------------------------------- set-up
    def _add_task(self, task: str, tensors: dict, meta: dict, label: str) -> dict[int, tuple[Tensor, Tensor]]:
        config = self.backbone.config
        method_info = meta.get("method") or {}
        if not isinstance(method_info, dict) or method_info.get("name") not in SUPPORTED_METHODS:
            name = method_info.get("name") if isinstance(method_info, dict) else method_info
            raise ConfigError(
                f"{label}: method {name!r} cannot share a backbone pass (supported: {', '.join(SUPPORTED_METHODS)})"
            )
        method = method_from_dict(method_info, f"{label}: adapter header 'method'")
        if meta.get("backbone_family", "videomae") != "videomae":
            raise CheckpointError(f"{label}: adapter is for a {meta['backbone_family']!r} model")
        arch = meta.get("arch") or {}
        if arch.get("head", "linear") != "linear":
            raise ConfigError(
                f"{label}: an adapter with head={arch['head']!r} cannot share a backbone pass (every task here "
                "pools the mean of the shared tokens); load it alone with aptune.model_from_adapter"
            )
        for key in SHARED_ARCH:
            if key in arch and not _same(arch[key], getattr(config, key)):
                raise CheckpointError(
                    f"{label}: adapter was trained with {key}={arch[key]!r}, the backbone has {getattr(config, key)!r}"
                )
        allowed = HEAD_TENSORS + (PROMPT_TENSORS if method.name == "apt" else ())
        for key, value in tensors.items():
            if key not in allowed:
                raise CheckpointError(f"{label}: tensor {key!r} has no place in a {method.name} adapter")
            if not value.is_floating_point():
                raise CheckpointError(f"{label}: '{key}' holds {value.dtype} values, expected floating point")
        num_classes = _check_head(tensors, config.embed_dim, arch, label)
        head = TaskHead(config.embed_dim, num_classes, _fc_norm_eps(arch, config))
        head.load_state_dict({k: tensors[k] for k in HEAD_TENSORS})
        self.heads[task] = head.to(self.backbone.fc_norm.weight.device).eval().requires_grad_(False)
        names = meta.get("class_names")
        if names and len(names) != num_classes:
            raise CheckpointError(f"{label}: adapter lists {len(names)} class names for a head of {num_classes}")
        self._class_names[task] = list(names) if names else [str(i) for i in range(num_classes)]
        check_backbone_fingerprint(meta, self._backbone_fingerprint(), label, self._allow_backbone_mismatch)
        if method.name == "linear" or method.num_prompts == 0:
            return {}
        return _effective_prompts(method, tensors, config.depth, config.head_dim, label)

    def _backbone_fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = backbone_fingerprint(self.backbone)  # once per model, not per task
        return self._fingerprint

    def _build_banks(self, prompts: dict[str, dict[int, tuple[Tensor, Tensor]]], depth: int, head_dim: int) -> None:
        """Per layer: keys/values (tasks, P_max, head_dim), zero-padded, and each task's P."""
        self._prompted_layers: list[int] = []
        device = self.backbone.fc_norm.weight.device
        for layer in range(depth):
            counts = [prompts[t][layer][0].shape[0] if layer in prompts[t] else 0 for t in self._tasks]
            longest = max(counts)
            if longest == 0:
                continue
            keys = torch.zeros(len(self._tasks), longest, head_dim)
            values = torch.zeros_like(keys)
            for row, task in enumerate(self._tasks):
                if layer in prompts[task]:
                    k, v = prompts[task][layer]
                    keys[row, : k.shape[0]] = k
                    values[row, : v.shape[0]] = v
            self.register_buffer(f"prompt_keys_{layer}", keys.to(device), persistent=False)
            self.register_buffer(f"prompt_values_{layer}", values.to(device), persistent=False)
            self.register_buffer(f"prompt_counts_{layer}", torch.tensor(counts, device=device), persistent=False)
            self._prompted_layers.append(layer)

    # ---------------------------------------------------------- public API
    @property
    def tasks(self) -> list[str]:
        """Task names in the order given (the meaning of integer task ids)."""
        return list(self._tasks)

    def class_names(self, task: str) -> list[str]:
        if task not in self._class_names:
            raise ConfigError(f"unknown task '{task}' (tasks: {', '.join(self._tasks)})")
        return list(self._class_names[task])

    def task_index(self, task_ids: str | Sequence[str] | Sequence[int] | Tensor, batch_size: int) -> Tensor:
        """(B,) long tensor of task indices from names, integers, a tensor, or one name for all."""
        device = self.backbone.fc_norm.weight.device
        if isinstance(task_ids, str):
            task_ids = [task_ids] * batch_size
        if isinstance(task_ids, Tensor):
            index = task_ids.to(device=device, dtype=torch.long).reshape(-1)
        else:
            position = {name: i for i, name in enumerate(self._tasks)}
            try:
                index = torch.tensor(
                    [i if isinstance(i, int) else position[i] for i in task_ids], dtype=torch.long, device=device
                )
            except KeyError as exc:
                raise ConfigError(f"unknown task '{exc.args[0]}' (tasks: {', '.join(self._tasks)})") from None
        if index.numel() != batch_size:
            raise ConfigError(f"{index.numel()} task ids for a batch of {batch_size} clips")
        if index.numel() and (index.min() < 0 or index.max() >= len(self._tasks)):
            raise ConfigError(f"task ids must be in [0, {len(self._tasks)})")
        return index

    def forward_features(self, clips: Tensor, task_index: Tensor) -> Tensor:
        """Pooled (B, D) features, each sample having attended to its own task's prompts."""
        backbone = self.backbone
        x, grid = backbone.patch_embed(clips)
        x = x + backbone.position_embedding(grid).to(x.dtype)
        for layer, block in enumerate(backbone.blocks):
            extra_kv, mask = self._layer_prompts(layer, task_index, x.shape[1])
            x = block(x, extra_kv, attn_mask=None if mask is None else mask.to(x.dtype))
        return x.mean(dim=1)

    def forward(self, clips: Tensor, task_ids) -> list[Tensor]:
        """Per-sample logits in batch order (a list: tasks may have different numbers of classes)."""
        task_index = self.task_index(task_ids, clips.shape[0])
        features = self.forward_features(clips, task_index)
        logits: list[Tensor | None] = [None] * clips.shape[0]
        for row, task in enumerate(self._tasks):
            members = (task_index == row).nonzero().flatten()
            if members.numel() == 0:
                continue
            out = self.heads[task](features[members])
            for position, sample in enumerate(members.tolist()):
                logits[sample] = out[position]
        return logits  # type: ignore[return-value]

    @torch.inference_mode()
    def predict(self, clips: Tensor, task_ids, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each clip, its task's top ``top_k`` (class name, probability), most likely first."""
        task_index = self.task_index(task_ids, clips.shape[0])
        answers = []
        for row, logits in zip(task_index.tolist(), self(clips, task_index)):
            names = self._class_names[self._tasks[row]]
            probs = logits.float().softmax(-1)
            top = probs.topk(min(top_k, probs.numel()))
            answers.append([(names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())])
        return answers

    # ------------------------------------------------------------ details
    def _layer_prompts(self, layer: int, task_index: Tensor, num_tokens: int):
        if layer not in self._prompted_layers:
            return None, None
        counts = getattr(self, f"prompt_counts_{layer}")[task_index]
        longest = int(counts.max())
        if longest == 0:
            return None, None
        keys = getattr(self, f"prompt_keys_{layer}")[task_index][:, None, :longest]
        values = getattr(self, f"prompt_values_{layer}")[task_index][:, None, :longest]
        extra_kv = (keys, values)  # (B, 1, P, head_dim)
        if bool((counts == longest).all()):
            return extra_kv, None
        padded = torch.arange(longest, device=counts.device)[None, :] >= counts[:, None]  # (B, P)
        mask = keys.new_zeros(task_index.shape[0], 1, 1, num_tokens + longest)
        mask[:, 0, 0, num_tokens:].masked_fill_(padded, float("-inf"))
        return extra_kv, mask

    @classmethod
    def from_files(
        cls,
        adapters: Mapping[str, AdapterSource],
        pretrained: str | Path | None = None,
        *,
        allow_backbone_mismatch: bool = False,
        **arch_overrides: Any,
    ) -> MultiAdapterModel:
        """Build the backbone from the first adapter's arch and ``pretrained`` weights, then share it."""

        if not adapters:
            raise ConfigError("MultiAdapterModel needs at least one task adapter")
        first = next(iter(adapters.values()))
        _, meta = _read(first)
        arch = ViTConfig.from_dict(meta["arch"])
        values = {k: v for k, v in arch.to_dict().items() if k not in ("name", "num_classes")}
        values.update(arch_overrides)
        backbone = create_model(
            arch.name if arch.name in PRESETS else None, num_classes=1, method="linear", pretrained=pretrained, **values
        )
        return cls(backbone, adapters, allow_backbone_mismatch=allow_backbone_mismatch)


def _read(source: AdapterSource) -> tuple[dict, dict]:
    if isinstance(source, (str, Path)):
        return read_adapter(source)
    tensors, meta = source
    return dict(tensors), dict(meta)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return a == b


def _fc_norm_eps(arch: dict, config) -> float:
    """The eps the adapter's fc_norm was trained with: its own fc_norm_eps, else its blocks' eps."""
    for key in ("fc_norm_eps", "layer_norm_eps"):
        if isinstance(arch.get(key), (int, float)) and not isinstance(arch.get(key), bool):
            return float(arch[key])
    return config.fc_norm_eps if config.fc_norm_eps is not None else config.layer_norm_eps


def _check_head(tensors: dict, dim: int, arch: dict, label: str) -> int:
    """The number of classes of the adapter's head, after checking its tensors' shapes."""
    for key in HEAD_TENSORS:
        if key not in tensors:
            raise CheckpointError(f"{label}: adapter lacks '{key}'")
    weight = tensors["head.weight"]
    if weight.ndim != 2 or weight.shape[0] < 1 or weight.shape[1] != dim:
        raise CheckpointError(f"{label}: 'head.weight' has shape {tuple(weight.shape)}, expected (classes, {dim})")
    num_classes = int(weight.shape[0])
    for key, shape in (("head.bias", (num_classes,)), ("fc_norm.weight", (dim,)), ("fc_norm.bias", (dim,))):
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"{label}: '{key}' has shape {tuple(tensors[key].shape)}, expected {shape}")
    if "num_classes" in arch and arch["num_classes"] != num_classes:
        raise CheckpointError(
            f"{label}: adapter header says num_classes={arch['num_classes']!r} but its head has {num_classes}"
        )
    return num_classes


def _effective_prompts(
    method, tensors: dict, depth: int, head_dim: int, label: str
) -> dict[int, tuple[Tensor, Tensor]]:
    """{layer: (keys, values)} with the reparameterisation applied (inference: no dropout)."""
    try:
        start, end = resolve_layer_range(method.prompt_start, method.prompt_end, depth)
    except ConfigError as exc:
        raise CheckpointError(f"{label}: the adapter's {exc}") from None
    expected = (end - start + 1, method.num_prompts, head_dim)
    for key in ("kv_prompts.keys", "kv_prompts.values"):
        if key not in tensors:
            raise CheckpointError(f"{label}: adapter lacks '{key}' (num_prompts={method.num_prompts})")
        if tuple(tensors[key].shape) != expected:
            raise CheckpointError(
                f"{label}: '{key}' has shape {tuple(tensors[key].shape)}, but the adapter's options "
                f"(blocks {start}-{end}, num_prompts={method.num_prompts}) on this backbone "
                f"(head_dim={head_dim}) need {expected}"
            )
    keys, values = tensors["kv_prompts.keys"].float(), tensors["kv_prompts.values"].float()
    scales = tensors.get("kv_prompts.scales")
    if method.reparam != (scales is not None):
        raise CheckpointError(
            f"{label}: adapter says reparam={method.reparam} but "
            f"{'has no' if scales is None else 'has'} 'kv_prompts.scales'"
        )
    if scales is not None:
        if tuple(scales.shape) != (expected[0], 2, expected[1]):
            raise CheckpointError(
                f"{label}: 'kv_prompts.scales' has shape {tuple(scales.shape)}, expected "
                f"{(expected[0], 2, expected[1])}"
            )
        # the same max(s, 1) as AttentionPrompts.forward
        keys = keys * torch.clamp(scales[:, 0].float(), min=1.0)[..., None]
        values = values * torch.clamp(scales[:, 1].float(), min=1.0)[..., None]
    return {start + i: (keys[i], values[i]) for i in range(keys.shape[0])}
