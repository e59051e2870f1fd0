"""``aptune train``: the fine-tuning recipe, on the engine's components.

It builds the classifier (a backbone with a tuning method) and the data, starts what
looks at training clips, and hands the epochs to :class:`aptune.engine.loop.TrainLoop`;
the run folder, the checkpoints and the runtime (device, precision, DDP) are the
components :mod:`~aptune.engine.runfolder`, :mod:`~aptune.engine.checkpoint` and
:mod:`~aptune.engine.runtime`.  After the last epoch it tests with all views and writes
the adapter, metrics, plots and report.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aptune.adapters import save_adapter
from aptune.config import BESIDE_THE_ARCHITECTURE, Config
from aptune.engine import distributed as dist_utils
from aptune.engine.checkpoint import (
    TrainState,
    restore,
    rewrite_artifacts_if_finished,
    save_training_checkpoint,
)
from aptune.engine.evaluate import evaluate, write_final_outputs
from aptune.engine.loaders import (
    DataBundle,
    HeadOnly,
    build_data,
    cache_train_features,
    epoch_loader,
)
from aptune.engine.loop import TrainLoop, build_optimisation, open_metrics_log
from aptune.engine.metrics import MetricsLog
from aptune.engine.mixup import mix_batch
from aptune.engine.optim import head_lr_scale
from aptune.engine.runfolder import (
    ADAPTER_NAME,
    METRICS_LOG_NAME,
    RANDOM_BACKBONE_NAME,
    RunFolder,
    run_recipe,
)
from aptune.engine.runtime import autocast, seed_everything, wrap_for_training
from aptune.errors import ConfigError
from aptune.factory import create_model
from aptune.fileio import save_safetensors_atomically
from aptune.interop.classifier import TransformersVideoClassifier
from aptune.interop.inject import init_prompts_from_clips
from aptune.models.checkpoints import brings_own_architecture
from aptune.models.vit import count_parameters

log = logging.getLogger(__name__)


def train(config: Config, output_dir: str | Path, resume: bool | None = None) -> dict[str, Any]:
    """Train, evaluate every ``eval_every`` epochs and with all views at the end.

    ``resume``: True requires a checkpoint in ``output_dir``, False refuses one,
    None (default) resumes when there is one.  Under torchrun every rank calls this;
    an error on any rank stops all of them (:mod:`aptune.engine.distributed`).
    """

    return run_recipe(
        config,
        output_dir,
        resume,
        lambda folder, resuming, info, device: _train_in(folder, config, resuming, info, device),
    )


def _train_in(folder: RunFolder, config: Config, resuming: bool, info, device) -> dict[str, Any]:
    output_dir = folder.path
    with dist_utils.together("while setting up"):
        seed_everything(config.train.seed)  # identical model init on every rank
        data = build_data(config, info)
        model = build_model(config, data.class_names).to(device)
        if not resuming:
            start_from_data(model, data, config, info, device)
        optimizer, schedule, scaler, steps_per_epoch = build_optimisation(config, model, len(data.train), info)
        state = TrainState()
        if resuming:
            state = restore(folder.checkpoint_path, folder.payload, model, optimizer, schedule, scaler)
    with dist_utils.together("while writing the run folder"):
        folder.write_config(config)
        if info.is_main and config.model.pretrained is None and config.method.name != "full":
            save_random_backbone(model, output_dir)
    metrics = open_metrics_log(folder, resuming, state, info)
    if resuming:
        log.info("resumed from %s at epoch %d (step %d)", folder.checkpoint_path, state.epoch, state.step)
    if info.is_main:
        log_run_start(config, model, device, schedule, steps_per_epoch)
    runner, data = training_runner(model, data, config, info, device)
    loop = TrainLoop(
        config,
        runner,
        model,
        optimizer,
        schedule,
        scaler,
        device,
        data,
        info,
        metrics,
        ClassificationLoss(config, len(data.class_names)),
    )

    def write_adapter() -> None:
        save_adapter(model, output_dir / ADAPTER_NAME, preprocess=data.preprocess)

    def save_checkpoint() -> None:
        save_training_checkpoint(
            folder.checkpoint_path,
            model,
            optimizer,
            schedule,
            scaler,
            state,
            config,
            info,
            extra={"class_names": list(data.class_names)},
            artifacts=write_adapter,
        )

    def validate() -> None:
        validate_epoch(model, data, device, config, state, metrics, info)

    rewrite_artifacts_if_finished(state, config.train.epochs, info, write_adapter, "the adapter")
    loop.run_epochs(state, steps_per_epoch, save_checkpoint, validate if data.val is not None else None)
    return finish(config, model, data, device, state, output_dir, metrics, info)


def training_runner(model: nn.Module, data: DataBundle, config: Config, info, device) -> tuple[nn.Module, DataBundle]:
    """The module the loop calls and the data it reads: with ``train.cache_features`` the head
    alone, on the frozen backbone's features computed once."""
    if config.train.cache_features:
        log.info("caching the frozen backbone's features of %d training videos", len(data.train))
        data = replace(data, train=cache_train_features(model, data, config, info, device))
        return wrap_for_training(HeadOnly(model), device, info, config.train.compile), data
    return wrap_for_training(model, device, info, config.train.compile), data


def log_run_start(config: Config, model, device, schedule, steps_per_epoch: int) -> None:
    trainable, total = count_parameters(model)
    head_scale = head_lr_scale(config.optim)
    head = "" if head_scale == 1.0 else f" (classifier {schedule.base_lr * head_scale:.3g})"
    log.info(
        "%s on %s: %s trainable of %s parameters, lr %.3g%s, %d steps/epoch",
        config.method.name,
        device,
        f"{trainable:,}",
        f"{total:,}",
        schedule.base_lr,
        head,
        steps_per_epoch,
    )


def validate_epoch(model, data: DataBundle, device, config: Config, state, metrics: MetricsLog, info) -> None:
    result = evaluate(model, data.val, device, config.train.precision, len(data.class_names), desc=f"val {state.epoch}")
    with dist_utils.together(f"while writing {METRICS_LOG_NAME}"):
        metrics.write(
            "eval",
            epoch=state.epoch,
            step=state.step,
            split="val",
            top1=result["top1"],
            top5=result["top5"],
            num_videos=result["num_videos"],
            skipped_videos=result["skipped_videos"],
        )
    if info.is_main:
        log.info("epoch %d: val top-1 %.2f  top-5 %.2f", state.epoch, result["top1"], result["top5"])


class ClassificationLoss:
    """Cross-entropy on (optionally mixed) clips with label smoothing."""

    def __init__(self, config: Config, num_classes: int) -> None:
        self.train_cfg = config.train
        self.num_classes = num_classes
        self.criterion = nn.CrossEntropyLoss()

    def __call__(
        self, runner: nn.Module, clips: torch.Tensor, labels: torch.Tensor, precision: str, device: torch.device
    ) -> torch.Tensor:
        cfg = self.train_cfg
        clips, targets = mix_batch(clips, labels, self.num_classes, cfg.mixup, cfg.cutmix, cfg.label_smoothing)
        with autocast(precision, device):
            logits = runner(clips)
        return self.criterion(logits.float(), targets.to(logits.device))


def finish(config, model, data, device, state, output_dir, metrics, info) -> dict[str, Any]:
    result = evaluate(model, data.test, device, config.train.precision, len(data.class_names), desc="test (all views)")
    summary = {
        "top1": result["top1"],
        "top5": result["top5"],
        "num_videos": result["num_videos"],
        "skipped_videos": result["skipped_videos"],
        "epochs": state.epoch,
        "train_seconds": round(state.train_seconds, 2),
        "method": config.method.name,
    }
    with dist_utils.together("while writing the final metrics"):
        metrics.write("eval", epoch=state.epoch, step=state.step, split="test", final=True, **summary)
        if info.is_main:
            write_final_outputs(model, result, summary, data.class_names, output_dir, metrics.read(), config)
    if info.is_main:
        log.info(
            "test: top-1 %.2f  top-5 %.2f on %d videos (%d skipped)",
            result["top1"],
            result["top5"],
            result["num_videos"],
            result["skipped_videos"],
        )
    return {**summary, **{k: result[k] for k in ("per_class_accuracy",)}}


# ----------------------------------------------------------------- helpers
def start_from_data(model: nn.Module, data: DataBundle, config: Config, info, device) -> None:
    """Initialisations that look at training clips, before the first step.

    * a method's ``init_from_clips`` (e.g. ``prompt_init: tokens``) sees one batch;
    * ``train.standardize_features`` rescales ``fc_norm`` so that, over a few batches, every
      feature reaches the head with zero mean and unit variance: MAE's linear-probing
      BatchNorm, folded into a layer that every export format already has.

    Every rank computes the same from the same seeded batches; DDP then broadcasts rank 0's anyway.
    """
    method = model.tuning_method
    wants_prompts = getattr(method, "prompt_init", "uniform") != "uniform" and hasattr(method, "init_from_clips")
    if not (wants_prompts or config.train.standardize_features):
        return
    loader = epoch_loader(data, config, replace(info, rank=0, world_size=1), epoch=-1)
    batches = iter(loader)
    first = _first_training_clips(batches, data, config, device)
    if wants_prompts:
        if isinstance(model, TransformersVideoClassifier):
            init_prompts_from_clips(model, first, seed=config.train.seed)  # through the attention interface
        else:
            method.init_from_clips(model, first, torch.Generator().manual_seed(config.train.seed))
        if info.is_main:
            log.info("%s prompts started from %d training clips' tokens", method.name, first.shape[0])
    if config.train.standardize_features:
        clips = _more_training_clips(first, batches, device)
        standardize_head_inputs(model, clips)
        if info.is_main:
            log.info("fc_norm set to standardise the features of %d training clips", sum(len(c) for c in clips))


def _first_training_clips(batches, data: DataBundle, config: Config, device) -> torch.Tensor:
    first = next(batches, None)
    if first is None:
        raise ConfigError(
            f"method.prompt_init / train.standardize_features need one training batch, but "
            f"{len(data.train)} training videos do not fill train.batch_size={config.train.batch_size}"
        )
    return first.clips.to(device)


def _more_training_clips(first: torch.Tensor, batches, device) -> list[torch.Tensor]:
    """``first`` and the next batches, up to ``_STANDARDIZE_CLIPS`` clips."""
    clips = [first]
    while sum(len(c) for c in clips) < _STANDARDIZE_CLIPS:
        batch = next(batches, None)
        if batch is None:
            break
        clips.append(batch.clips.to(device))
    if sum(len(c) for c in clips) < 2:
        raise ConfigError("train.standardize_features needs at least 2 training clips per batch")
    return clips


_STANDARDIZE_CLIPS = 64  # enough for a per-feature std; a few batches of a typical run


@torch.no_grad()
def standardize_head_inputs(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Fold the per-feature mean and std of ``fc_norm``'s outputs on ``batches`` into fc_norm."""
    was_training = model.training
    model.eval()
    try:
        features = torch.cat([model.forward_features(clips) for clips in batches])
    finally:
        model.train(was_training)
    # BatchNorm's eps: a feature that barely varies is not blown up a millionfold
    mean, std = features.mean(dim=0), (features.var(dim=0) + 1e-5).sqrt()
    model.fc_norm.weight.div_(std)
    model.fc_norm.bias.sub_(mean).div_(std)


def build_model(config: Config, class_names: list[str]):
    num_classes = config.model.num_classes or len(class_names)
    if num_classes != len(class_names):
        raise ConfigError(f"model.num_classes={num_classes} but the data has {len(class_names)} classes")
    options = asdict(config.method)
    arch = config.model.arch
    overrides = config.model.arch_overrides()
    if (
        config.model.pretrained
        and brings_own_architecture(config.model.pretrained)
        and not (overrides.keys() - set(BESIDE_THE_ARCHITECTURE))
    ):
        arch = None  # a Hugging Face folder or a merged file brings its own architecture
    model = create_model(
        arch,
        num_classes=num_classes,
        method=config.method.name,
        pretrained=config.model.pretrained,
        class_names=class_names,
        method_options=options,
        **overrides,
    )
    model.grad_checkpointing = config.model.grad_checkpointing
    if isinstance(model, TransformersVideoClassifier):
        for key in ("recompute_mlp", "recompute_qkv"):
            if getattr(config.model, key):
                raise ConfigError(f"model.{key} is for aptune's own backbone; use model.grad_checkpointing")
        check_clips_fit(model, config)
        if config.model.grad_checkpointing:
            model.backbone.gradient_checkpointing_enable()
    else:
        model.recompute_mlp = config.model.recompute_mlp
        model.recompute_qkv = config.model.recompute_qkv
    return model


def check_clips_fit(model: TransformersVideoClassifier, config: Config) -> None:
    """A transformers encoder is built for one clip shape (position tables, V-JEPA 2's rotary grid)."""
    frames, size = model.config.num_frames, model.config.img_size
    data = config.data
    if (data.num_frames, data.input_size) != (frames, size):
        raise ConfigError(
            f"{config.model.pretrained}: this {type(model.backbone).__name__} takes clips of {frames} frames at "
            f"{size}x{size} (its config.json), not data.num_frames={data.num_frames} and data.input_size="
            f"{data.input_size}: set data.num_frames={frames} data.input_size={size}"
            + (f" data.short_side_size={size}" if data.short_side_size < size else "")
        )


def save_random_backbone(model, output_dir: Path) -> None:
    """Without model.pretrained the frozen weights are a random init: keep them with the run."""
    path = output_dir / RANDOM_BACKBONE_NAME
    if not path.exists():
        log.warning(
            "model.pretrained is not set: the frozen backbone is randomly initialised "
            "(saved to %s so the adapter stays usable)",
            path,
        )
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in model.state_dict().items()
            if k.startswith(("patch_embed.", "blocks."))
        }
        save_safetensors_atomically(state, path)
