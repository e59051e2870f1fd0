"""Distributed helpers that also work as a single process, and ranks that fail together.

Started by ``torchrun``, the environment holds RANK / WORLD_SIZE / LOCAL_RANK;
without it every helper degrades to the one-process answer, so the engine has
no separate single-process path.

A rank that meets an error alone (a video that will not decode, a forward pass
that runs out of memory, a non-finite loss, a disk that fills while rank 0 writes)
must not leave the others blocked in the next collective.  The engine runs such
work inside :func:`together`: at its end every rank says whether it failed (one
scalar all-reduce), and if any did, every rank raises
:class:`~aptune.errors.StoppedTogether` at the same point, with the first failed
rank's message printed once.  What cannot be agreed on (a rank killed, or an
error inside DDP's own gradient all-reduce) surfaces on the others as a lost
peer, which :func:`as_run_error` turns into a quiet non-zero exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from aptune.errors import AptuneError, StoppedTogether

log = logging.getLogger(__name__)

_joined_a_group = False  # set once this process joins a process group, never reset


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group if torchrun started us; nccl on GPUs, gloo on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    global _joined_a_group
    _joined_a_group = True
    return DistInfo(rank, world_size, local_rank)


def joined_a_process_group() -> bool:
    """Whether this process was ever a rank of a process group (destroyed since, or not)."""
    return _joined_a_group


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if current().enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (n_i, ...) tensor on every rank; n_i may differ."""
    info = current()
    if not info.enabled:
        return rows
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(info.world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])


def broadcast_object(value):
    info = current()
    if not info.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_on_every_rank(device: str, work):
    """``work(info)`` in this process's rank (joining torchrun's group if there is one).

    However ``work`` ends, the process group is left the right way: destroyed after success
    or an agreed stop, abandoned (for the launcher to end) when a peer may still be waiting.
    """
    info = init_distributed(device)
    try:
        result = work(info)
    except BaseException as exc:
        error = leave_run(exc)
        if error is exc:
            raise
        raise error from exc
    cleanup()
    return result


# ------------------------------------------------------------ failing together
@contextlib.contextmanager
def together(during: str) -> Iterator[None]:
    """Run the block on every rank; if it raises on any rank, raise on all, here.

    Every rank must enter the same ``together`` blocks in the same order (they are
    collective).  In a single process the block's own exception propagates unchanged.
    """
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - reported to every rank, then re-raised
        error = exc
    agree(error, during)


def agree(error: Exception | None, during: str) -> None:
    """The consensus point: every rank calls it; if any brings an error, every rank raises."""
    info = current()
    if not info.enabled:
        if error is not None:
            raise error
        return
    flag = torch.tensor([0.0 if error is None else 1.0], device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() == 0:
        return
    messages: list[str | None] = [None] * info.world_size
    dist.all_gather_object(messages, None if error is None else describe_error(error))
    failed = [rank for rank, message in enumerate(messages) if message is not None]
    first = failed[0]
    others = f" (and on {len(failed) - 1} other rank{'s' * (len(failed) > 2)})" if len(failed) > 1 else ""
    text = f"rank {first}: {messages[first]}{others}; every rank stopped {during}"
    if error is not None and not isinstance(error, AptuneError):
        log.debug("rank %d failed %s", info.rank, during, exc_info=error)
    raise StoppedTogether(text, report=info.rank == first) from error


def describe_error(error: BaseException) -> str:
    """One line: an aptune error's own message, else the exception type and its first line."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(error, AptuneError):
        return first or type(error).__name__
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def as_run_error(error: BaseException) -> BaseException:
    """How an exception that escaped every consensus point leaves a distributed run.

    A lost peer (its process died, or failed inside DDP's gradient all-reduce) becomes a
    quiet :class:`StoppedTogether` (that rank, or the launcher, says what happened); any
    other error becomes one line naming this rank.  Single-process errors pass unchanged.
    """
    info = current()
    if not info.enabled or isinstance(error, (StoppedTogether, KeyboardInterrupt)):
        return error
    if _is_lost_peer(error):
        return StoppedTogether(
            f"rank {info.rank}: lost contact with another rank ({describe_error(error)})", report=False, agreed=False
        )
    log.debug("rank %d failed", info.rank, exc_info=error)
    return StoppedTogether(f"rank {info.rank}: {describe_error(error)}; the other ranks stop with it", agreed=False)


def leave_run(error: BaseException) -> BaseException:
    """The error a distributed run ends with; tears the process group down when that is safe."""
    converted = as_run_error(error)
    if not current().enabled or (isinstance(converted, StoppedTogether) and converted.agreed):
        cleanup()  # every rank stopped at the same point: nothing is left in flight
    return converted


def _is_lost_peer(error: BaseException) -> bool:
    backend_error = getattr(dist, "DistBackendError", ())
    if backend_error and isinstance(error, backend_error):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        part in text
        for part in (
            "Connection closed by peer",
            "Connection reset by peer",
            "Broken pipe",
            "NCCL error",
            "ProcessGroupNCCL",
            "Socket Timeout",
            "timed out",
        )
    )


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
