"""Where and how a run computes: the device, the precision, seeding, progress display.

Shared by training, pre-training, evaluation, prediction and benchmarks, so a device name
or a precision is checked the same way everywhere, before anything is written.
"""

from __future__ import annotations

import contextlib
import random
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from aptune.config import DEVICE_PATTERN
from aptune.errors import ConfigError


def pick_device(name: str, info=None, precision: str = "fp32", key: str = "train.device") -> torch.device:
    """The device a run uses, checked before anything is written: a typo, a GPU that is not there,
    or fp16 without CUDA is a one-line error naming ``key``."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise ConfigError(f"{key}={name!r} is not one of: auto, cpu, cuda, cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={name} but no CUDA device is available (use cpu or auto)")
        index = int(name.split(":")[1]) if ":" in name else (info.local_rank if info is not None else 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{key}={name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        device = torch.device("cuda", index)
    else:
        device = torch.device(name)
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return device


@contextlib.contextmanager
def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        yield
        return
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def seed_everything(seed: int, epoch: int = -1, rank: int = 0) -> None:
    """One seed per (run seed, epoch, rank): epochs replay exactly after a resume."""
    value = (seed * 1_000_003 + (epoch + 1) * 10_007 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def progress_bar(total: int, desc: str, enabled: bool):
    # on a terminal a live bar; in logs (not a TTY) periodic lines written by the caller instead
    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()),
                dynamic_ncols=True, leave=False)
