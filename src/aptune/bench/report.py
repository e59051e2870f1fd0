"""Reporting a benchmark: the row keys in table order, the run's metadata (machine, settings,
conventions) and the fixed-width text table ``aptune bench`` prints."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import torch

from aptune._version import __version__
from aptune.bench.measure import timing_method

if TYPE_CHECKING:  # run.py imports this module: the settings class is only a type here
    from aptune.bench.run import BenchSettings

#: keys of one result row, in table order (documented in docs/bench.md)
ROW_KEYS = (
    "arch",
    "method",
    "prompts",
    "trainable_params",
    "total_params",
    "gmacs",
    "latency_ms_median",
    "latency_ms_q1",
    "latency_ms_q3",
    "latency_ms_iqr",
    "latency_ms_min",
    "latency_ms_max",
    "gflops_per_s",
    "model_memory_mb",
    "peak_memory_mb",
    "train_gmacs",
    "train_step_ms_median",
    "train_step_ms_q1",
    "train_step_ms_q3",
    "train_step_ms_iqr",
    "train_step_ms_min",
    "train_step_ms_max",
    "train_peak_memory_mb",
)


def ordered_row(row: dict) -> dict:
    return {key: row.get(key) for key in ROW_KEYS}


def machine_description() -> dict:
    """CPU model, core count, torch version and (if any) GPU name."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def bench_metadata(settings: BenchSettings, device: torch.device) -> dict:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "aptune": __version__,
        "machine": machine_description(),
        "device": str(device),
        "dtype": "float32",
        "arch": settings.arch,
        "frames": settings.frames,
        "img_size": settings.img_size,
        "batch": settings.batch,
        "num_classes": settings.num_classes,
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "train": settings.train,
        "lora_rank": settings.lora_rank,
        "adapter_dim": settings.adapter_dim,
        "prompt_start": settings.prompt_start,
        # the lora row runs the low-rank branch beside the frozen qkv (training-time form);
        # merged with ``aptune merge`` it costs what the linear row does
        "lora_merged": False,
        "gmacs_convention": "multiply-adds per view (batch 1): linears, patch-embedding conv, "
        "attention matmuls; norms, softmax, GELU not counted",
        "timing_method": timing_method(device),
        "memory_method": (
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "torch.profiler CPU allocator records (lower bound on RSS)"
        ),
    }


# ------------------------------------------------------------------- table
def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of result rows (columns without data are left out)."""
    columns = [
        ("method", "method", "{}"),
        ("prompts", "P", "{}"),
        ("trainable_params", "trainable", "{:,}"),
        ("total_params", "total", "{:,}"),
        ("gmacs", "GMACs", "{:.1f}"),
        ("latency_ms_median", "ms", "{:.1f}"),
        ("latency_ms_iqr", "±iqr", "{:.1f}"),
        ("gflops_per_s", "GFLOP/s", "{:.1f}"),
        ("peak_memory_mb", "MiB", "{:.0f}"),
        ("train_step_ms_median", "train ms", "{:.1f}"),
        ("train_step_ms_iqr", "±iqr", "{:.1f}"),
        ("train_peak_memory_mb", "train MiB", "{:.0f}"),
    ]
    columns = [c for c in columns if any(row.get(c[0]) is not None for row in rows)]
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for index, line in enumerate(cells):
        lines.append(
            "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
