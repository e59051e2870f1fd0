"""Resumable training checkpoints, written atomically and read with weights_only=True.

A checkpoint holds only what training changes (the trainable tensors), the
optimiser, schedule and scaler states, the epoch and step, every RNG state and
the resolved config, so a run killed at any moment resumes exactly.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aptune.errors import CheckpointError
from aptune.fileio import write_atomically

CHECKPOINT_NAME = "checkpoint.pt"


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
        raise CheckpointError(f"{path}: cannot resume from this checkpoint ({str(exc).splitlines()[0][:200]})") from None
