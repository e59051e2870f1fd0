"""The training loop shared by fine-tuning and pre-training: epochs, steps, logging.

Each epoch is a pure function of (the state saved at its start, the seed, the
epoch number): RNGs are re-seeded from (seed, epoch, rank) when it begins and
the data order comes from the same numbers.  That is what makes a run killed at
any moment and resumed end with exactly the metrics of an uninterrupted one.

A recipe (:mod:`aptune.engine.trainer`, :mod:`aptune.engine.pretrainer`) builds the
model, the data and the loss; this module runs them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from aptune.config import Config
from aptune.engine import distributed as dist_utils
from aptune.engine.checkpoint import TrainState
from aptune.engine.loaders import DataBundle, epoch_loader, new_bad_video_log
from aptune.engine.metrics import MetricsLog
from aptune.engine.optim import (
    CosineSchedule,
    build_optimizer,
    classifier_lr,
    head_lr_scale,
    peak_lr,
)
from aptune.engine.runfolder import METRICS_LOG_NAME, RunFolder
from aptune.engine.runtime import (
    find_ddp,
    grad_scaler,
    progress_bar,
    rebuild_ddp_buckets,
    seed_everything,
)
from aptune.errors import AptuneError, ConfigError

log = logging.getLogger(__name__)

# a loss: (runner, clips, labels, precision, device) -> a scalar tensor
LossFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor, str, torch.device], torch.Tensor]


class TrainingDiverged(AptuneError):
    """The loss became NaN or infinite."""


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
            f"rank(s) = {total_batch} videos: lower train.batch_size or train.accum_steps"
        )
    peak, min_lr = peak_lr(optim, total_batch)
    optimizer = build_optimizer(
        model,
        optim.name,
        peak,
        optim.weight_decay,
        optim.momentum,
        optim.betas,
        head_lr_scale=head_lr_scale(optim),
        layer_decay=optim.layer_decay,
        decay_prompt_scales=optim.decay_prompt_scales,
        eps=optim.eps,
    )
    schedule = CosineSchedule(
        optimizer,
        steps_per_epoch * config.train.epochs,
        int(optim.warmup_epochs * steps_per_epoch),
        peak,
        min_lr,
        optim.weight_decay_end,
    )
    return optimizer, schedule, grad_scaler(config.train.precision), steps_per_epoch


def open_metrics_log(folder: RunFolder, resuming: bool, state: TrainState, info) -> MetricsLog:
    """The run's metrics log; a resumed run drops what was logged after its checkpoint, a new
    one the lines of a killed start."""
    metrics = MetricsLog(folder.path / METRICS_LOG_NAME, enabled=info.is_main)
    with dist_utils.together(f"while reading {METRICS_LOG_NAME}"):
        metrics.truncate_after(state.step if resuming else -1)
    return metrics


class TrainLoop:
    """The per-epoch work, shared by fine-tuning and pre-training; each step is a short method."""

    def __init__(
        self,
        config: Config,
        runner: nn.Module,
        model: nn.Module,
        optimizer,
        schedule,
        scaler,
        device: torch.device,
        data: DataBundle,
        info,
        metrics: MetricsLog,
        loss_fn: LossFunction,
    ) -> None:
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

    def run_epochs(
        self,
        state: TrainState,
        steps_per_epoch: int,
        save_checkpoint: Callable[[], None],
        validate: Callable[[], None] | None = None,
    ) -> None:
        """From ``state.epoch`` to ``train.epochs``: validate every ``eval_every`` epochs (not
        after the last: the recipe's final test follows), save every ``save_every`` and last."""
        train_cfg = self.config.train
        for epoch in range(state.epoch, train_cfg.epochs):
            started = time.time()
            self.run_epoch(epoch, state, steps_per_epoch)
            state.epoch = epoch + 1
            state.train_seconds += time.time() - started
            last = state.epoch == train_cfg.epochs
            if validate is not None and not last and state.epoch % train_cfg.eval_every == 0:
                validate()
            if last or state.epoch % train_cfg.save_every == 0:
                save_checkpoint()

    def run_epoch(self, epoch: int, state: TrainState, steps_per_epoch: int) -> None:
        train_cfg = self.config.train
        seed_everything(train_cfg.seed, epoch=epoch, rank=self.info.rank)
        loader = epoch_loader(self.data, self.config, self.info, epoch, self.device)
        self.runner.train()
        accum = train_cfg.accum_steps
        batches = min(len(loader), steps_per_epoch * accum)
        progress = progress_bar(batches, f"epoch {epoch + 1}/{train_cfg.epochs}", self.info.is_main)
        clips_seen, started = 0, time.time()
        waiting = InputWait()
        bad_videos = new_bad_video_log(self.data, self.config)
        batch_iterator = iter(loader)
        for index in range(batches):
            synchronise = (index + 1) % accum == 0
            with self.gradient_sync(synchronise):
                with dist_utils.together(f"at step {state.step + 1} (epoch {epoch + 1})"):
                    with waiting.for_batch():
                        batch = next(batch_iterator)
                    bad_videos.record(batch.failures)
                    loss = self.forward(batch)
                self.backward(loss, accum)
            clips_seen += batch.clips.shape[0]
            if synchronise:
                self.optimizer_step()
                rebuild_ddp_buckets(self.runner)
                state.step += 1
                self.log_step(
                    epoch,
                    state,
                    index,
                    batches,
                    loss.item(),
                    clips_seen / (time.time() - started),
                    waiting.fraction(),
                    progress,
                )
            progress.update(1)
        progress.close()
        del batch_iterator
        self.report_bad_videos(epoch, state, bad_videos)
        self.report_input_wait(epoch, waiting.fraction())

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

    def log_step(self, epoch, state, index, batches, loss, clips_per_second, input_wait, progress) -> None:
        lr = self.schedule.lr()
        head_lr = classifier_lr(self.optimizer)
        lrs = {"lr": lr} if head_lr is None else {"lr": lr, "head_lr": head_lr}
        waited = {} if input_wait is None else {"input_wait_fraction": round(input_wait, 4)}
        progress.set_postfix(
            loss=f"{loss:.4f}",
            **{k: f"{v:.2e}" for k, v in lrs.items()},
            clips_s=f"{clips_per_second:.1f}",
            **({} if input_wait is None else {"waiting": f"{input_wait:.0%}"}),
        )
        every = self.config.train.log_every
        if state.step % every == 0 or index + 1 == batches:
            with dist_utils.together(f"while writing {METRICS_LOG_NAME}"):
                self.metrics.write(
                    "train",
                    epoch=epoch + 1,
                    epoch_float=epoch + (index + 1) / batches,
                    step=state.step,
                    loss=loss,
                    **lrs,
                    clips_per_second=clips_per_second,
                    **waited,
                )
            if progress.disable and self.info.is_main:
                shown = " ".join(f"{k.replace('_', ' ')} {v:.2e}" for k, v in lrs.items())
                log.info(
                    "epoch %d step %d/%d loss %.4f %s %.1f clips/s%s",
                    epoch + 1,
                    index + 1,
                    batches,
                    loss,
                    shown,
                    clips_per_second,
                    "" if input_wait is None else f", waiting for input {input_wait:.0%}",
                )

    def report_input_wait(self, epoch: int, fraction: float | None) -> None:
        advice = input_wait_advice(fraction, self.config, self.device)
        if advice and self.info.is_main:
            log.warning("epoch %d: %s", epoch + 1, advice)

    def report_bad_videos(self, epoch: int, state: TrainState, bad_videos) -> None:
        counts = torch.tensor([bad_videos.num_bad, bad_videos.skipped], dtype=torch.float64)
        bad, skips = (int(v) for v in dist_utils.all_reduce_sum(counts.to(self.device)).tolist())
        if bad and self.info.is_main:
            log.warning("epoch %d: %s", epoch + 1, bad_videos.summary())
        with dist_utils.together(f"while writing {METRICS_LOG_NAME}"):
            self.metrics.write(
                "data",
                epoch=epoch + 1,
                step=state.step,
                bad_train_videos=bad,
                replaced_samples=skips,
            )


class InputWait:
    """How much of an epoch the training loop spends waiting for its next batch.

    The first batch is left out (it pays for starting the loader workers), so the fraction is
    the steady state: time blocked in the loader over the time since the first batch came.
    On a GPU the loop only blocks when the loader is behind (the device's work is queued
    asynchronously), so a high fraction means an idle GPU.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.waited = 0.0
        self.batches = 0
        self.since: float | None = None  # when the first batch arrived

    @contextlib.contextmanager
    def for_batch(self) -> Iterator[None]:
        started = self.clock()
        yield
        now = self.clock()
        if self.since is None:
            self.since = now
        else:
            self.waited += now - started
        self.batches += 1

    def fraction(self) -> float | None:
        """Waiting time over the time since the first batch; None before the second batch."""
        if self.since is None or self.batches < 2:
            return None
        elapsed = self.clock() - self.since
        return min(1.0, self.waited / elapsed) if elapsed > 0 else None


# An accelerator idle for more than this share of an epoch is worth a warning
INPUT_BOUND = 0.25


def input_wait_advice(fraction: float | None, config: Config, device: torch.device) -> str | None:
    """One line for an accelerator that waited for its input for much of an epoch, else None.

    Not on the CPU: there the loader's workers and the model share the same cores, and the
    remedy (more workers) may not exist.
    """
    if fraction is None or fraction <= INPUT_BOUND or device.type == "cpu":
        return None
    data = config.data
    remedies = [f"raise data.num_workers (now {data.num_workers})"]
    if data.augment_on != "device" and data.random_erase == 0:
        remedies.append("set data.augment_on: device (augmentation moves to the GPU)")
    return (
        f"the {device.type} waited for input {fraction:.0%} of the time (the loader is the bottleneck): "
        + "; ".join(remedies)
    )
