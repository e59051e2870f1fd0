"""Measuring one step: interleaved timing, peak allocated memory, resident bytes, and the
inference and training steps that are timed (see :mod:`aptune.bench` for what the memory
numbers include).

On CPU a step is timed by the wall clock (``time.perf_counter``).  On CUDA it is timed by
a pair of CUDA events recorded on the current stream around it: the GPU's own clock, which
counts the kernels the step queued and not the Python and launch overhead before the first
of them, and needs no host synchronisation inside the timed span.  The events are read after
a synchronise that follows each run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

MIB = 2**20


# ------------------------------------------------------------------ timing
def spread(samples: Sequence[float]) -> dict[str, float]:
    """median, quartiles (q1, q3), iqr, min and max of a list of timings."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": statistics.median(ordered),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": ordered[0],
        "max": ordered[-1],
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_method(device: torch.device | str) -> str:
    """How :func:`time_interleaved` times a step on ``device`` (recorded in benchmark metadata)."""
    return "cuda events" if torch.device(device).type == "cuda" else "time.perf_counter"


class StepTimer:
    """Milliseconds of one call of a function: CUDA events on a CUDA device, else the wall clock."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.start_event = torch.cuda.Event(enable_timing=True)
            self.end_event = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], object]) -> float:
        synchronize(self.device)
        if self.cuda:
            self.start_event.record()
            fn()
            self.end_event.record()
            self.end_event.synchronize()
            return float(self.start_event.elapsed_time(self.end_event))
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000.0


def time_interleaved(
    tasks: dict[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = True,
    description: str = "timing",
    setups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Run every task once per repeat, round-robin, and return its times in milliseconds
    (CUDA events on a CUDA device, the wall clock elsewhere: :class:`StepTimer`).

    The first ``warmup`` rounds are run but not recorded.  The order rotates by
    one task each round so no task always follows the same neighbour.  ``setups[name]``,
    where given, runs untimed before each run of that task (e.g. switching the shared
    backbone to its method: at 128 tokens that costs more than the prompts it measures).
    """
    setups = setups or {}
    timer = StepTimer(device)
    names = list(tasks)
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = warmup + repeats
    with tqdm(total=rounds * len(names), desc=description, disable=not progress, leave=False, unit="run") as bar:
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                if name in setups:
                    setups[name]()
                elapsed = timer(tasks[name])
                if round_index >= warmup:
                    times[name].append(elapsed)
                bar.update(1)
    return times


# ------------------------------------------------------------------ memory
def peak_allocated_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int | None:
    """Highest number of bytes allocated by PyTorch during ``fn()`` above what was allocated before.

    CUDA: from the caching allocator's statistics.  CPU: from the profiler's
    allocation records (see the module docstring for what that misses).  None
    when the profiler gives no allocation records.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # the event tree is the profiler's own (experimental) API: fail soft
        roots = prof.profiler.kineto_results.experimental_event_tree()
    except (AttributeError, RuntimeError):
        return None
    peak, found, stack = 0, False, list(roots)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        extra = node.typed[1]
        if type(extra).__name__.endswith("Allocation") and str(extra.device).startswith("cpu"):
            found = True
            # total_allocated counts from the profiler's start: exactly "above before"
            peak = max(peak, int(extra.total_allocated))
    return peak if found else None


def resident_bytes(*objects: object) -> int:
    """Bytes of the distinct tensor storages reachable from modules, optimizers and tensors."""
    seen: set[int] = set()
    total = 0

    def add(tensor: Tensor | None) -> None:
        nonlocal total
        if tensor is None or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()

    for obj in objects:
        if isinstance(obj, Tensor):
            add(obj)
        elif isinstance(obj, nn.Module):
            for tensor in [*obj.parameters(), *obj.buffers()]:
                add(tensor)
                add(tensor.grad)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for value in state.values():
                    if isinstance(value, Tensor):
                        add(value)
    return total


# ------------------------------------------------------------------- steps
def inference_step(model: nn.Module, clip: Tensor) -> Callable[[], Tensor]:
    def step() -> Tensor:
        with torch.inference_mode():
            return model(clip)

    return step


def training_step(
    model: nn.Module, clip: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer
) -> Callable[[], float]:
    """Forward, cross-entropy, backward, optimizer step, gradients freed: one training step."""

    def step() -> float:
        loss = F.cross_entropy(model(clip), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step
