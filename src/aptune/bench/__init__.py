"""Cost of every tuning method on one backbone: parameters, MACs, latency and peak memory.

What ``aptune bench`` runs, as library functions.  All methods share one
backbone (one set of weights in memory); switching method swaps the prompt or
adapter modules and the ``requires_grad`` flags, which is cheap, so a measurement loop
can visit every method in each repeat.  Timings are therefore interleaved
(round-robin, the starting method rotating each repeat): a slow spell of a
noisy machine hits all rows alike instead of one.

LoRA and AdaptFormer give one row each, sized by ``lora_rank`` and
``adapter_dim`` (prompt counts do not apply).  The LoRA row is the unmerged,
training-time model: its low-rank branch runs beside the frozen qkv weight.
Merged (``aptune merge``), LoRA costs exactly what the ``linear`` row does.

Peak memory, in MiB, is what a process holding only this method would need:
the bytes resident before the step (weights, buffers, optimizer state, the
input clip) plus the highest number of bytes allocated on top of them during
one step (activations, gradients, workspace).  On CUDA the second part comes
from ``torch.cuda.max_memory_allocated``; on CPU from the PyTorch profiler's
record of every allocation through PyTorch's CPU allocator (``profile_memory``).
Memory that bypasses that allocator -- oneDNN/MKL scratch buffers, the Python
heap, allocator caching and fragmentation -- is not seen, so CPU numbers are a
lower bound on the process's resident set.  Memory passes run after the timed
passes, never inside them (the profiler slows a step down).
"""

from __future__ import annotations

from aptune.bench.measure import (
    MIB,
    StepTimer,
    inference_step,
    peak_allocated_bytes,
    resident_bytes,
    spread,
    synchronize,
    time_interleaved,
    timing_method,
    training_step,
)
from aptune.bench.report import ROW_KEYS, bench_metadata, format_table, machine_description
from aptune.bench.run import (
    BENCH_METHODS,
    BenchSettings,
    MethodCase,
    bench_device,
    build_cases,
    check_settings,
    run_bench,
)

__all__ = [
    "BENCH_METHODS",
    "MIB",
    "ROW_KEYS",
    "StepTimer",
    "BenchSettings",
    "MethodCase",
    "bench_device",
    "bench_metadata",
    "build_cases",
    "check_settings",
    "format_table",
    "inference_step",
    "machine_description",
    "peak_allocated_bytes",
    "resident_bytes",
    "run_bench",
    "spread",
    "synchronize",
    "time_interleaved",
    "timing_method",
    "training_step",
]
