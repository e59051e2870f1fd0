"""``aptune pretrain``: VideoMAE masked auto-encoding with the same engine as ``train``.

Progress, seeded epochs, atomic resumable checkpoints and DDP are the same components
as fine-tuning's (:class:`aptune.engine.loop.TrainLoop`, :mod:`aptune.engine.checkpoint`,
:mod:`aptune.engine.runtime`); only the model and its loss differ.
The encoder is saved as ``pretrained.safetensors`` in the original VideoMAE
pre-training layout, which ``create_model(pretrained=...)`` reads directly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from aptune.config import Config
from aptune.data import build_dataset
from aptune.engine import distributed as dist_utils
from aptune.engine.checkpoint import (
    TrainState,
    restore,
    rewrite_artifacts_if_finished,
    save_training_checkpoint,
)
from aptune.engine.loaders import DataBundle
from aptune.engine.loop import TrainLoop, build_optimisation, open_metrics_log
from aptune.engine.metrics import MetricsLog
from aptune.engine.plots import plot_curves
from aptune.engine.runfolder import (
    CURVES_PLOT,
    METRICS_NAME,
    PLOTS_DIR,
    PRETRAINED_NAME,
    RunFolder,
    run_recipe,
)
from aptune.engine.runtime import autocast, seed_everything, wrap_for_training
from aptune.errors import ConfigError
from aptune.fileio import make_folder, save_safetensors_atomically, write_json_atomically
from aptune.models.pretrain import VideoMAEPretrainer
from aptune.models.vit import arch_config

log = logging.getLogger(__name__)


def reconstruction_loss(
    runner, clips: torch.Tensor, labels: torch.Tensor, precision: str, device: torch.device
) -> torch.Tensor:
    with autocast(precision, device):
        return runner(clips).float()  # the pre-trainer's forward returns its loss; labels are unused


def pretrain(config: Config, output_dir: str | Path, resume: bool | None = None) -> dict[str, Any]:
    return run_recipe(
        config,
        output_dir,
        resume,
        lambda folder, resuming, info, device: _pretrain_in(folder, config, resuming, info, device),
        check=lambda: refuse_classifier_options(config),
    )


def build_pretrainer(config: Config) -> VideoMAEPretrainer:
    try:
        arch = arch_config(config.model.arch, **config.model.arch_overrides())
    except (KeyError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    p = config.pretrain
    return VideoMAEPretrainer(
        arch,
        decoder_dim=p.decoder_dim,
        decoder_depth=p.decoder_depth,
        decoder_heads=p.decoder_heads,
        mask_ratio=p.mask_ratio,
        normalize_target=p.normalize_target,
    )


def refuse_classifier_options(config: Config, source: str = "config") -> None:
    """Options of `train` that a pre-trainer (no fc_norm, no head) would silently ignore."""
    ignored = {
        "optim.head_lr": config.optim.head_lr is not None,
        "optim.head_base_lr": config.optim.head_base_lr is not None,
        "train.standardize_features": config.train.standardize_features,
        "train.cache_features": config.train.cache_features,
        "model.head": config.model.head != "linear",
    }
    for key, is_set in ignored.items():
        if is_set:
            raise ConfigError(
                f"{source}: {key} is a classifier option; aptune pretrain has no classifier "
                "to apply it to: remove it from the pre-training config"
            )


def _pretrain_in(folder: RunFolder, config: Config, resuming: bool, info, device) -> dict[str, Any]:
    output_dir = folder.path
    with dist_utils.together("while setting up"):
        seed_everything(config.train.seed)
        train_set = build_dataset(config.data, "train")
        data = DataBundle(train_set, None, None, list(train_set.class_names))
        model = build_pretrainer(config).to(device)
        optimizer, schedule, scaler, steps_per_epoch = build_optimisation(config, model, len(train_set), info)
        state = TrainState()
        if resuming:
            state = restore(folder.checkpoint_path, folder.payload, model, optimizer, schedule, scaler)
    with dist_utils.together("while writing the run folder"):
        folder.write_config(config)
    metrics = open_metrics_log(folder, resuming, state, info)
    if resuming:
        log.info("resumed from %s at epoch %d", folder.checkpoint_path, state.epoch)
    runner = wrap_for_training(model, device, info, config.train.compile)
    loop = TrainLoop(
        config, runner, model, optimizer, schedule, scaler, device, data, info, metrics, reconstruction_loss
    )

    def write_encoder() -> None:
        save_pretrained(model, output_dir / PRETRAINED_NAME, config)

    def save_checkpoint() -> None:
        save_training_checkpoint(
            folder.checkpoint_path, model, optimizer, schedule, scaler, state, config, info, artifacts=write_encoder
        )

    rewrite_artifacts_if_finished(state, config.train.epochs, info, write_encoder, "the encoder")
    loop.run_epochs(state, steps_per_epoch, save_checkpoint)
    return finish(output_dir, state, metrics, info)


def finish(output_dir: Path, state: TrainState, metrics: MetricsLog, info) -> dict[str, Any]:
    """The summary (``metrics.json``) and the loss curve of a finished pre-training."""
    summary = {
        "epochs": state.epoch,
        "train_seconds": round(state.train_seconds, 2),
        "final_loss": _last_loss(metrics),
        "pretrained": str(output_dir / PRETRAINED_NAME),
    }
    with dist_utils.together("while writing the final metrics"):
        if info.is_main:
            write_json_atomically(output_dir / METRICS_NAME, summary)
            plot_curves(metrics.read(), make_folder(output_dir / PLOTS_DIR) / CURVES_PLOT)
    if info.is_main:
        log.info(
            "pre-training done: loss %.4f after %d epochs; encoder at %s",
            summary["final_loss"] or float("nan"),
            state.epoch,
            summary["pretrained"],
        )
    return summary


def save_pretrained(model: VideoMAEPretrainer, path: Path, config: Config) -> None:
    """The whole pre-training state dict (encoder + decoder) with the arch and recipe in its header."""
    metadata = {
        "format": "videomae-pretrain",
        "arch": json.dumps(model.config.to_dict()),
        "recipe": json.dumps(config.to_dict()),
    }
    save_safetensors_atomically(model.encoder_state_dict(), path, metadata)


def _last_loss(metrics: MetricsLog) -> float | None:
    losses = [r["loss"] for r in metrics.read() if r["kind"] == "train"]
    return losses[-1] if losses else None
