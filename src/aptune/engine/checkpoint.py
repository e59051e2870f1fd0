"""Resumable training checkpoints, written atomically and read with weights_only=True.

A checkpoint holds only what training changes (the trainable tensors), the
optimiser, schedule and scaler states, the epoch and step, every RNG state and
the resolved config, so a run killed at any moment resumes exactly.  Where it lies
in the run folder is :data:`aptune.engine.runfolder.CHECKPOINT_NAME`; this module
takes the path.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aptune.engine import distributed as dist_utils
from aptune.errors import CheckpointError, ConfigError
from aptune.fileio import write_atomically


@dataclass
class TrainState:
    """How far a run got; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    train_seconds: float = 0.0


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(_as_python_state(states["python"]))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_python_state(state):
    # torch.load returns lists where random.getstate() gave tuples
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def load_training_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot resume from this checkpoint ({str(exc).splitlines()[0][:200]})"
        ) from None


# ------------------------------------------------------------------ saving
def save_training_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer,
    schedule,
    scaler,
    state: TrainState,
    config,
    info,
    extra: dict | None = None,
    artifacts: Callable[[], None] | None = None,
) -> None:
    """Rank 0 writes the run's artifacts (adapter, encoder), then the checkpoint at ``path``,
    both atomically.

    The checkpoint goes last because it is what a resume trusts: a kill between the two then
    repeats the epoch and rewrites both, where the other order could leave a finished run whose
    checkpoint is current and whose adapter is an epoch old.
    """
    with dist_utils.together("while saving the checkpoint"):
        if info.is_main:
            if artifacts is not None:
                artifacts()
            payload = training_payload(model, optimizer, schedule, scaler, state, config)
            atomic_torch_save({**payload, **(extra or {})}, path)


def training_payload(model: nn.Module, optimizer, schedule, scaler, state: TrainState, config) -> dict[str, Any]:
    """Everything a resume needs, as tensors and plain values (``torch.load(weights_only=True)`` reads it)."""
    return {
        "trainable": {k: p.detach().cpu() for k, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "state": vars(state).copy(),
        "rng": rng_states(),
        "config": config.to_dict(),
    }


def rewrite_artifacts_if_finished(
    state: TrainState, epochs: int, info, artifacts: Callable[[], None], what: str
) -> None:
    """A run resumed after its last save rewrites its artifacts from the checkpoint, since a run
    folder saved before artifacts were written first can hold ones an epoch old."""
    if state.epoch >= epochs:
        with dist_utils.together(f"while writing {what}"):
            if info.is_main:
                artifacts()


# ------------------------------------------------------------------ restoring
def restore(path: Path, payload: dict | None, model: nn.Module, optimizer, schedule, scaler) -> TrainState:
    """Load a checkpoint's tensors and states (``payload``: already read, or None to read ``path``)."""
    payload = payload if payload is not None else load_training_state(path)
    _load_trainable(path, payload["trainable"], model)
    _load_optimizer(path, payload["optimizer"], optimizer)
    schedule.load_state_dict(payload["schedule"])
    scaler.load_state_dict(payload["scaler"])
    set_rng_states(payload["rng"])
    values = payload["state"]
    state = TrainState(**{k: values[k] for k in vars(TrainState()) if k in values})
    if not math.isfinite(state.train_seconds):
        state.train_seconds = 0.0
    return state


def _load_trainable(path: Path, trainable: dict[str, torch.Tensor], model: nn.Module) -> None:
    """The checkpoint's trained tensors into ``model``: all of them present, each of this run's shape."""
    missing = set(k for k, p in model.named_parameters() if p.requires_grad) - set(trainable)
    if missing:
        raise ConfigError(f"{path}: checkpoint lacks '{sorted(missing)[0]}': was it made with another method?")
    own = dict(model.named_parameters())
    for key, tensor in trainable.items():
        if key in own and own[key].shape != tensor.shape:
            raise ConfigError(
                f"{path}: the checkpoint's '{key}' has shape {tuple(tensor.shape)}, this run's "
                f"{tuple(own[key].shape)}: it was made by another recipe; use another --output-dir"
            )
    model.load_state_dict(trainable, strict=False)


def _load_optimizer(path: Path, saved_state: dict[str, Any], optimizer) -> None:
    """The optimiser's moments and step counts; each group keeps this run's ``lr_scale``."""
    saved = [len(group["params"]) for group in saved_state["param_groups"]]
    current = [len(group["params"]) for group in optimizer.param_groups]
    if saved != current:
        raise ConfigError(
            f"{path}: the checkpoint's optimiser groups hold {saved} tensors, this run's {current} "
            "(optim.head_lr switched on or off, or a checkpoint from before APT's scales left "
            "weight decay); resume with the settings that wrote it or use another --output-dir"
        )
    scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    optimizer.load_state_dict(saved_state)
    for group, scale in zip(optimizer.param_groups, scales):
        group["lr_scale"] = scale  # the config's head_lr, not the one the checkpoint was made with
