"""``aptune train``: one training loop for every tuning method, resumable to the step.

Each epoch is a pure function of (the state saved at its start, the seed, the
epoch number): RNGs are re-seeded from (seed, epoch, rank) when it begins and
the data order comes from the same numbers.  That is what makes a run killed at
any moment and resumed end with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aptune.adapters import save_adapter
from aptune.config import Config
from aptune.engine import distributed as dist_utils
from aptune.engine.checkpoint import (
    CHECKPOINT_NAME,
    atomic_torch_save,
    load_training_state,
    rng_states,
    set_rng_states,
)
from aptune.engine.evaluate import evaluate, write_final_outputs
from aptune.engine.loaders import (
    DataBundle,
    HeadOnly,
    build_data,
    cache_train_features,
    epoch_loader,
    new_bad_video_log,
)
from aptune.engine.metrics import MetricsLog
from aptune.engine.mixup import mix_batch
from aptune.engine.optim import CosineSchedule, build_optimizer
from aptune.engine.runfolder import RunFolder, run_in_folder
from aptune.engine.runtime import autocast, pick_device, progress_bar, seed_everything
from aptune.errors import AptuneError, ConfigError
from aptune.models.vit import count_parameters

log = logging.getLogger(__name__)


RANDOM_BACKBONE_NAME = "backbone.safetensors"


class TrainingDiverged(AptuneError):
    """The loss became NaN or infinite."""


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    train_seconds: float = 0.0


def train(config: Config, output_dir: str | Path, resume: bool | None = None) -> dict[str, Any]:
    """Train, evaluate every ``eval_every`` epochs and with all views at the end.

    ``resume``: True requires a checkpoint in ``output_dir``, False refuses one,
    None (default) resumes when there is one.  Under torchrun every rank calls this;
    an error on any rank stops all of them (:mod:`aptune.engine.distributed`).
    """
    def work(info):
        device = pick_device(config.train.device, info, config.train.precision)
        return run_in_folder(config, output_dir, resume, info, device,
                             lambda folder, resuming: _train_in(folder, config, resuming, info, device))

    return dist_utils.run_on_every_rank(config.train.device, work)


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
    metrics = MetricsLog(output_dir / "metrics.jsonl", enabled=info.is_main)
    with dist_utils.together("while reading metrics.jsonl"):
        # a resumed run drops what was logged after its checkpoint; a new one, a killed start's lines
        metrics.truncate_after(state.step if resuming else -1)
    if resuming:
        log.info("resumed from %s at epoch %d (step %d)", folder.checkpoint_path, state.epoch, state.step)
    if info.is_main:
        log_run_start(config, model, device, schedule, steps_per_epoch)

    if config.train.cache_features:
        log.info("caching the frozen backbone's features of %d training videos", len(data.train))
        data = replace(data, train=cache_train_features(model, data, config, info, device))
        runner = wrap_for_training(HeadOnly(model), device, info, config.train.compile)
    else:
        runner = wrap_for_training(model, device, info, config.train.compile)
    loop = TrainLoop(config, runner, model, optimizer, schedule, scaler, device, data, info, metrics,
                     ClassificationLoss(config, len(data.class_names)))

    def write_adapter() -> None:
        save_adapter(model, output_dir / "adapter.safetensors", preprocess=data.preprocess)

    if state.epoch >= config.train.epochs:
        # resumed after the last save: rewrite the adapter from the checkpoint, since a run folder
        # saved before artifacts were written first can hold one an epoch old
        with dist_utils.together("while writing the adapter"):
            if info.is_main:
                write_adapter()
    for epoch in range(state.epoch, config.train.epochs):
        started = time.time()
        loop.run_epoch(epoch, state, steps_per_epoch)
        state.epoch = epoch + 1
        state.train_seconds += time.time() - started
        last = state.epoch == config.train.epochs
        if data.val is not None and not last and state.epoch % config.train.eval_every == 0:
            validate_epoch(model, data, device, config, state, metrics, info)
        if last or state.epoch % config.train.save_every == 0:
            save_training_checkpoint(output_dir, model, optimizer, schedule, scaler, state, config, info,
                                     extra={"class_names": list(data.class_names)}, artifacts=write_adapter)
    return finish(config, model, data, device, state, output_dir, metrics, info)


def log_run_start(config: Config, model, device, schedule, steps_per_epoch: int) -> None:
    trainable, total = count_parameters(model)
    head_scale = head_lr_scale(config.optim)
    head = "" if head_scale == 1.0 else f" (classifier {schedule.base_lr * head_scale:.3g})"
    log.info("%s on %s: %s trainable of %s parameters, lr %.3g%s, %d steps/epoch", config.method.name,
             device, f"{trainable:,}", f"{total:,}", schedule.base_lr, head, steps_per_epoch)


def validate_epoch(model, data: DataBundle, device, config: Config, state, metrics: MetricsLog, info) -> None:
    result = evaluate(model, data.val, device, config.train.precision, len(data.class_names),
                      desc=f"val {state.epoch}")
    with dist_utils.together("while writing metrics.jsonl"):
        metrics.write("eval", epoch=state.epoch, step=state.step, split="val",
                      top1=result["top1"], top5=result["top5"], num_videos=result["num_videos"],
                      skipped_videos=result["skipped_videos"])
    if info.is_main:
        log.info("epoch %d: val top-1 %.2f  top-5 %.2f", state.epoch, result["top1"], result["top5"])


def classifier_lr(optimizer: torch.optim.Optimizer) -> float | None:
    """The current lr of the classifier groups when ``optim.head_lr`` gave them their own, else None."""
    for group in optimizer.param_groups:
        if group.get("lr_scale", 1.0) != 1.0:
            return group["lr"]
    return None


class ClassificationLoss:
    """Cross-entropy on (optionally mixed) clips with label smoothing."""

    def __init__(self, config: Config, num_classes: int) -> None:
        self.train_cfg = config.train
        self.num_classes = num_classes
        self.criterion = nn.CrossEntropyLoss()

    def __call__(self, runner: nn.Module, clips: torch.Tensor, labels: torch.Tensor, precision: str,
                 device: torch.device) -> torch.Tensor:
        cfg = self.train_cfg
        clips, targets = mix_batch(clips, labels, self.num_classes, cfg.mixup, cfg.cutmix, cfg.label_smoothing)
        with autocast(precision, device):
            logits = runner(clips)
        return self.criterion(logits.float(), targets.to(logits.device))


class TrainLoop:
    """The per-epoch work, shared by fine-tuning and pre-training; each step is a short method."""

    def __init__(self, config: Config, runner: nn.Module, model: nn.Module, optimizer, schedule,
                 scaler, device: torch.device, data: DataBundle, info, metrics: MetricsLog,
                 loss_fn) -> None:
        self.loss_fn = loss_fn
        self.config = config
        self.runner = runner
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.scaler = scaler
        self.device = device
        self.data = data
        self.info = info
        self.metrics = metrics
        self.params = [p for p in model.parameters() if p.requires_grad]

    def run_epoch(self, epoch: int, state: TrainState, steps_per_epoch: int) -> None:
        train_cfg = self.config.train
        seed_everything(train_cfg.seed, epoch=epoch, rank=self.info.rank)
        loader = epoch_loader(self.data, self.config, self.info, epoch)
        self.runner.train()
        accum = train_cfg.accum_steps
        batches = min(len(loader), steps_per_epoch * accum)
        progress = progress_bar(batches, f"epoch {epoch + 1}/{train_cfg.epochs}", self.info.is_main)
        clips_seen, started = 0, time.time()
        bad_videos = new_bad_video_log(self.data, self.config)
        batch_iterator = iter(loader)
        for index in range(batches):
            synchronise = (index + 1) % accum == 0
            with self.gradient_sync(synchronise):
                with dist_utils.together(f"at step {state.step + 1} (epoch {epoch + 1})"):
                    batch = next(batch_iterator)
                    bad_videos.record(batch.failures)
                    loss = self.forward(batch)
                self.backward(loss, accum)
            clips_seen += batch.clips.shape[0]
            if synchronise:
                self.optimizer_step()
                rebuild_ddp_buckets(self.runner)
                state.step += 1
                self.log_step(epoch, state, index, batches, loss.item(), clips_seen / (time.time() - started),
                              progress)
            progress.update(1)
        progress.close()
        del batch_iterator
        self.report_bad_videos(epoch, state, bad_videos)

    def gradient_sync(self, synchronise: bool):
        """DDP all-reduces gradients only on an accumulation group's last micro-batch."""
        ddp = find_ddp(self.runner)
        if ddp is None or synchronise:
            return contextlib.nullcontext()
        return ddp.no_sync()

    def forward(self, batch) -> torch.Tensor:
        """This rank's loss on one micro-batch; a non-finite loss is an error (on every rank)."""
        clips, labels = batch.clips.to(self.device, non_blocking=True), batch.labels.to(self.device)
        loss = self.loss_fn(self.runner, clips, labels, self.config.train.precision, self.device)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {self.schedule.step_count + 1}; stopping. The last good "
                "checkpoint is kept: lower optim.lr (or base_lr), set optim.clip_grad, or use fp32"
            )
        return loss

    def backward(self, loss: torch.Tensor, accum: int) -> None:
        self.scaler.scale(loss / accum).backward()

    def optimizer_step(self) -> None:
        clip = self.config.optim.clip_grad
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()

    def log_step(self, epoch, state, index, batches, loss, clips_per_second, progress) -> None:
        lr = self.schedule.lr()
        head_lr = classifier_lr(self.optimizer)
        lrs = {"lr": lr} if head_lr is None else {"lr": lr, "head_lr": head_lr}
        progress.set_postfix(loss=f"{loss:.4f}", **{k: f"{v:.2e}" for k, v in lrs.items()},
                             clips_s=f"{clips_per_second:.1f}")
        every = self.config.train.log_every
        if state.step % every == 0 or index + 1 == batches:
            with dist_utils.together("while writing metrics.jsonl"):
                self.metrics.write("train", epoch=epoch + 1, epoch_float=epoch + (index + 1) / batches,
                                   step=state.step, loss=loss, **lrs, clips_per_second=clips_per_second)
            if progress.disable and self.info.is_main:
                shown = " ".join(f"{k.replace('_', ' ')} {v:.2e}" for k, v in lrs.items())
                log.info("epoch %d step %d/%d loss %.4f %s %.1f clips/s", epoch + 1, index + 1,
                         batches, loss, shown, clips_per_second)

    def report_bad_videos(self, epoch: int, state: TrainState, bad_videos) -> None:
        counts = torch.tensor([bad_videos.num_bad, bad_videos.skipped], dtype=torch.float64)
        bad, skips = (int(v) for v in dist_utils.all_reduce_sum(counts.to(self.device)).tolist())
        if bad and self.info.is_main:
            log.warning("epoch %d: %s", epoch + 1, bad_videos.summary())
        with dist_utils.together("while writing metrics.jsonl"):
            self.metrics.write("data", epoch=epoch + 1, step=state.step, bad_train_videos=bad,
                               replaced_samples=skips)


def finish(config, model, data, device, state, output_dir, metrics, info) -> dict[str, Any]:
    result = evaluate(model, data.test, device, config.train.precision, len(data.class_names),
                      desc="test (all views)")
    summary = {
        "top1": result["top1"], "top5": result["top5"], "num_videos": result["num_videos"],
        "skipped_videos": result["skipped_videos"], "epochs": state.epoch,
        "train_seconds": round(state.train_seconds, 2), "method": config.method.name,
    }
    with dist_utils.together("while writing the final metrics"):
        metrics.write("eval", epoch=state.epoch, step=state.step, split="test", final=True, **summary)
        if info.is_main:
            write_final_outputs(model, result, summary, data.class_names, output_dir, metrics.read(), config)
    if info.is_main:
        log.info("test: top-1 %.2f  top-5 %.2f on %d videos (%d skipped)", result["top1"], result["top5"],
                 result["num_videos"], result["skipped_videos"])
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
    first = next(batches, None)
    if first is None:
        raise ConfigError(f"method.prompt_init / train.standardize_features need one training batch, but "
                          f"{len(data.train)} training videos do not fill train.batch_size={config.train.batch_size}")
    first = first.clips.to(device)
    if wants_prompts:
        method.init_from_clips(model, first, torch.Generator().manual_seed(config.train.seed))
        if info.is_main:
            log.info("%s prompts started from %d training clips' tokens", method.name, first.shape[0])
    if config.train.standardize_features:
        clips = [first]
        while sum(len(c) for c in clips) < _STANDARDIZE_CLIPS:
            batch = next(batches, None)
            if batch is None:
                break
            clips.append(batch.clips.to(device))
        if sum(len(c) for c in clips) < 2:
            raise ConfigError("train.standardize_features needs at least 2 training clips per batch")
        standardize_head_inputs(model, clips)
        if info.is_main:
            log.info("fc_norm set to standardise the features of %d training clips", sum(len(c) for c in clips))


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


def build_optimisation(config: Config, model: nn.Module, num_items: int, info):
    """Optimiser, per-step schedule, grad scaler and steps per epoch for ``num_items`` videos.

    The official rule: the lr-scaling batch is ``batch_size x accum_steps x ranks`` videos
    (repeated-augmentation samples do not count), and both the peak lr and ``min_lr``
    scale with it; an absolute ``optim.lr`` takes ``min_lr`` as given.
    """
    optim = config.optim
    total_batch = config.train.batch_size * config.train.accum_steps * info.world_size
    steps_per_epoch = num_items // total_batch
    if steps_per_epoch < 1:
        raise ConfigError(
            f"{num_items} training videos do not fill one optimiser step of train.batch_size="
            f"{config.train.batch_size} x train.accum_steps={config.train.accum_steps} x {info.world_size} "
            f"rank(s) = {total_batch} videos: lower train.batch_size or train.accum_steps")
    peak, min_lr = peak_lr(optim, total_batch)
    optimizer = build_optimizer(model, optim.name, peak, optim.weight_decay, optim.momentum, optim.betas,
                                head_lr_scale=head_lr_scale(optim), layer_decay=optim.layer_decay,
                                decay_prompt_scales=optim.decay_prompt_scales, eps=optim.eps)
    schedule = CosineSchedule(optimizer, steps_per_epoch * config.train.epochs,
                              int(optim.warmup_epochs * steps_per_epoch), peak, min_lr, optim.weight_decay_end)
    scaler = torch.amp.GradScaler("cuda", enabled=config.train.precision == "fp16")
    return optimizer, schedule, scaler, steps_per_epoch


def peak_lr(optim, total_batch: int) -> tuple[float, float]:
    """(peak lr, min lr) of a run whose lr-scaling batch is ``total_batch`` videos."""
    if optim.lr is not None:
        return optim.lr, optim.min_lr
    scale = total_batch / 256
    return optim.base_lr * scale, optim.min_lr * scale


def head_lr_scale(optim) -> float:
    """The classifier's peak lr over the body's; fixed by the recipe, whatever the number of GPUs."""
    if optim.head_lr is not None:
        return optim.head_lr / optim.lr
    if optim.head_base_lr is not None:
        return optim.head_base_lr / optim.base_lr
    return 1.0


def build_model(config: Config, class_names: list[str]):
    from aptune.factory import create_model
    from aptune.methods import method_options
    from aptune.models.checkpoints import brings_own_architecture

    num_classes = config.model.num_classes or len(class_names)
    if num_classes != len(class_names):
        raise ConfigError(f"model.num_classes={num_classes} but the data has {len(class_names)} classes")
    valid = method_options(config.method.name)
    options = {k: v for k, v in vars(config.method).items() if k in valid}
    arch = config.model.arch
    overrides = config.model.arch_overrides()
    if config.model.pretrained and brings_own_architecture(config.model.pretrained) and not (
            overrides.keys() - {"drop_path_rate", "head_dropout"}):
        arch = None  # a Hugging Face folder or a merged file brings its own architecture
    model = create_model(arch, num_classes=num_classes, method=config.method.name,
                         pretrained=config.model.pretrained, class_names=class_names,
                         method_options=options, **overrides)
    model.grad_checkpointing = config.model.grad_checkpointing
    return model


def wrap_for_training(model: nn.Module, device: torch.device, info, compile_model: bool) -> nn.Module:
    """DDP first, then ``torch.compile`` of the DDP module (PyTorch's recommended order: the
    compiler then splits the graph at DDP's gradient buckets and keeps their overlap).

    DDP's forward must hold no collective, because a rank's forward runs inside a consensus
    block (:func:`aptune.engine.distributed.together`): buffers are not broadcast (aptune's
    are fixed position tables, equal on every rank) and the one-time bucket rebuild is done
    after an optimiser step instead (:func:`rebuild_ddp_buckets`).
    """
    runner = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        runner = DistributedDataParallel(runner, device_ids=ids, **_no_buffer_sync_in_forward())
    if compile_model:
        runner = torch.compile(runner)
    return runner


def _no_buffer_sync_in_forward() -> dict[str, bool]:
    # newer PyTorch names the option forward_sync_buffers (buffers still synced once, at init)
    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def rebuild_ddp_buckets(runner: nn.Module) -> None:
    """DDP re-orders its gradient buckets once, after the first synchronised backward, with a
    broadcast it would otherwise make at the start of the next forward.  Every rank calls this
    after each optimiser step, so that broadcast happens here; later calls do nothing."""
    ddp = find_ddp(runner)
    if ddp is not None and torch.is_grad_enabled() and ddp.reducer._rebuild_buckets():
        ddp._has_rebuilt_buckets = True


def find_ddp(runner: nn.Module):
    """The DistributedDataParallel inside ``runner`` (itself, or under torch.compile), else None."""
    from torch.nn.parallel import DistributedDataParallel

    for candidate in (runner, getattr(runner, "_orig_mod", None)):
        if isinstance(candidate, DistributedDataParallel):
            return candidate
    return None


def save_training_checkpoint(output_dir: Path, model, optimizer, schedule, scaler, state: TrainState,
                             config: Config, info, extra: dict | None = None, artifacts=None) -> None:
    """Rank 0 writes the run's artifacts (adapter, encoder), then checkpoint.pt, both atomically.

    The checkpoint goes last because it is what a resume trusts: a kill between the two then
    repeats the epoch and rewrites both, where the other order could leave a finished run whose
    checkpoint is current and whose adapter is an epoch old.
    """
    with dist_utils.together("while saving the checkpoint"):
        if info.is_main:
            _write_checkpoint(output_dir, model, optimizer, schedule, scaler, state, config, extra, artifacts)


def _write_checkpoint(output_dir, model, optimizer, schedule, scaler, state, config, extra, artifacts) -> None:
    if artifacts is not None:
        artifacts()
    payload = {
        "trainable": {k: p.detach().cpu() for k, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "state": vars(state).copy(),
        "rng": rng_states(),
        "config": config.to_dict(),
        **(extra or {}),
    }
    atomic_torch_save(payload, output_dir / CHECKPOINT_NAME)


def save_random_backbone(model, output_dir: Path) -> None:
    """Without model.pretrained the frozen weights are a random init: keep them with the run."""
    from aptune.fileio import save_safetensors_atomically

    path = output_dir / RANDOM_BACKBONE_NAME
    if not path.exists():
        log.warning("model.pretrained is not set: the frozen backbone is randomly initialised "
                    "(saved to %s so the adapter stays usable)", path)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                 if k.startswith(("patch_embed.", "blocks."))}
        save_safetensors_atomically(state, path)


def restore(path: Path, payload: dict | None, model, optimizer, schedule, scaler) -> TrainState:
    """Load a checkpoint's tensors and states (``payload``: already read, or None to read ``path``)."""
    payload = payload if payload is not None else load_training_state(path)
    missing = set(k for k, p in model.named_parameters() if p.requires_grad) - set(payload["trainable"])
    if missing:
        raise ConfigError(f"{path}: checkpoint lacks '{sorted(missing)[0]}': was it made with another method?")
    own = dict(model.named_parameters())
    for key, tensor in payload["trainable"].items():
        if key in own and own[key].shape != tensor.shape:
            raise ConfigError(f"{path}: the checkpoint's '{key}' has shape {tuple(tensor.shape)}, this run's "
                              f"{tuple(own[key].shape)}: it was made by another recipe; use another --output-dir")
    model.load_state_dict(payload["trainable"], strict=False)
    saved = [len(group["params"]) for group in payload["optimizer"]["param_groups"]]
    current = [len(group["params"]) for group in optimizer.param_groups]
    if saved != current:
        raise ConfigError(f"{path}: the checkpoint's optimiser groups hold {saved} tensors, this run's {current} "
                          "(optim.head_lr switched on or off, or a checkpoint from before APT's scales left "
                          "weight decay); resume with the settings that wrote it or use another --output-dir")
    scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    optimizer.load_state_dict(payload["optimizer"])
    for group, scale in zip(optimizer.param_groups, scales):
        group["lr_scale"] = scale  # the config's head_lr, not the one the checkpoint was made with
    schedule.load_state_dict(payload["schedule"])
    scaler.load_state_dict(payload["scaler"])
    set_rng_states(payload["rng"])
    values = payload["state"]
    state = TrainState(**{k: values[k] for k in vars(TrainState()) if k in values})
    if not math.isfinite(state.train_seconds):
        state.train_seconds = 0.0
    return state
