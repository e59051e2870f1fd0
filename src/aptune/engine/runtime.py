"""Where and how a run computes: the device, the precision (autocast, grad scaler), the
DDP and ``torch.compile`` wrapping, seeding, progress display.

Shared by training, pre-training, evaluation, prediction and benchmarks, so a device name
or a precision is checked the same way everywhere, before anything is written.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import sys

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
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


def grad_scaler(precision: str) -> torch.amp.GradScaler:
    """fp16 needs loss scaling; for bf16 and fp32 the scaler is a no-op kept for one code path."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")


def seed_everything(seed: int, epoch: int = -1, rank: int = 0) -> None:
    """One seed per (run seed, epoch, rank): epochs replay exactly after a resume."""
    value = (seed * 1_000_003 + (epoch + 1) * 10_007 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def progress_bar(total: int, desc: str, enabled: bool):
    # on a terminal a live bar; in logs (not a TTY) periodic lines written by the caller instead
    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, leave=False)


# ------------------------------------------------------------------ DDP and compile
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
        ids = [device.index] if device.type == "cuda" else None
        runner = DistributedDataParallel(runner, device_ids=ids, **_no_buffer_sync_in_forward())
    if compile_model:
        runner = torch.compile(runner)
    return runner


def _no_buffer_sync_in_forward() -> dict[str, bool]:
    # newer PyTorch names the option forward_sync_buffers (buffers still synced once, at init)
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


def find_ddp(runner: nn.Module) -> DistributedDataParallel | None:
    """The DistributedDataParallel inside ``runner`` (itself, or under torch.compile), else None."""
    for candidate in (runner, getattr(runner, "_orig_mod", None)):
        if isinstance(candidate, DistributedDataParallel):
            return candidate
    return None
