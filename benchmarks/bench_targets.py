"""Performance targets of aptune on the CPU, fp32, ViT-S 16x224, batch 1.

Targets (issue 6):
  1. APT with P=2 adds at most 2% latency over the frozen backbone without prompts.
  2. Inference reaches at least 75% of the machine's fp32 matmul throughput
     (a large ``torch.mm`` timed in the same run, interleaved with the model).
  3. An APT training step (forward, backward to the prompts and head, AdamW step)
     takes at most 2.3x the inference latency, and its peak memory is at most
     1.6x the inference peak memory.

Everything is timed round-robin in one process (``aptune.bench.time_interleaved``)
so a noisy spell hits every task alike.  Memory follows ``aptune.bench``: bytes
resident (weights, optimizer state, clip) plus the profiler's peak of PyTorch
allocations during the step.  A gradient-checkpointed training step is measured
as well, as the memory/time trade-off the model already offers, and so is APT with
prompts in the last half of the blocks only (``prompt_start = depth // 2``), whose
backward stops halfway.

The training-time target is also set against arithmetic: ``train_macs_ratio`` is
the multiply-adds of forward + backward over those of the forward (counted on the
real kernels by ``FlopCounterMode``).  A step cannot take a smaller multiple of the
inference time unless its backward runs faster per multiply-add than the forward.

    python benchmarks/bench_targets.py [--repeats 7] [--out benchmarks/results/targets.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path

import torch

from aptune.bench import (
    MIB,
    build_cases,
    inference_step,
    machine_description,
    peak_allocated_bytes,
    resident_bytes,
    spread,
    time_interleaved,
    training_step,
)
from aptune.factory import create_model
from aptune.flops import count_macs

ARCH = "vit_small_patch16_224"
SHAPE = (1, 3, 16, 224, 224)


def matmul_task(size: int):
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    return lambda: torch.mm(a, b, out=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inference-repeats", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the training phase")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mm-size", type=int, default=2048)
    parser.add_argument("--no-checkpointing", action="store_true", help="skip the gradient-checkpointed training step")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "targets.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = _load_average()
    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=400, method="full")
    backbone, apt = build_cases(model, ["linear", "apt"], [2])
    half = len(model.blocks) // 2
    (apt_half,) = build_cases(model, ["apt"], [2], prompt_start=half)
    clip = torch.randn(SHAPE)
    labels = torch.tensor([7])
    apt.activate(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def infer(case):
        step = inference_step(model, clip)
        return lambda: (case.activate(model).eval(), step())

    half_optimizer = torch.optim.AdamW([p for p in apt_half.activate(model).parameters() if p.requires_grad], lr=1e-6)
    apt.activate(model)

    def train(checkpointing: bool, case=apt, case_optimizer=optimizer):
        step = training_step(model, clip, labels, case_optimizer)

        def run():
            case.activate(model).train()
            model.grad_checkpointing = checkpointing
            try:
                return step()
            finally:
                model.grad_checkpointing = False

        return run

    # phase 1: inference and the matmul, many rounds; phase 2: training against inference
    inference_tasks = {"matmul": matmul_task(args.mm_size), "backbone": infer(backbone), "apt2": infer(apt)}
    times = time_interleaved(
        inference_tasks, repeats=args.inference_repeats, warmup=args.warmup, description="inference"
    )
    train_tasks = {
        "apt2_inference": infer(apt),
        "apt2_train": train(False),
        "apt2_half_inference": infer(apt_half),
        "apt2_half_train": train(False, apt_half, half_optimizer),
    }
    if not args.no_checkpointing:
        train_tasks["apt2_train_checkpointed"] = train(True)
    times.update(time_interleaved(train_tasks, repeats=args.repeats, warmup=args.warmup, description="training"))
    tasks = {**inference_tasks, **train_tasks}
    stats = {name: spread(values) for name, values in times.items()}

    backbone.activate(model)
    backbone_macs = count_macs(model, SHAPE)
    apt.activate(model)
    apt_macs = count_macs(model, SHAPE)
    # forward + backward on the real kernels, in training mode (the step's own graph)
    apt_train_macs = count_macs(apt.activate(model).train(), clip, backward=True, meta=False)
    half_train_macs = count_macs(apt_half.activate(model).train(), clip, backward=True, meta=False)
    model.eval()
    mm_gflops = 2 * args.mm_size**3 / (stats["matmul"]["median"] / 1000) / 1e9
    mm_gflops_best = 2 * args.mm_size**3 / (stats["matmul"]["min"] / 1000) / 1e9
    infer_gflops = 2 * backbone_macs / (stats["backbone"]["median"] / 1000) / 1e9
    infer_gflops_best = 2 * backbone_macs / (stats["backbone"]["min"] / 1000) / 1e9

    memory = {}
    held_infer = resident_bytes(apt.activate(model), clip)
    memory["apt2_inference"] = (held_infer, peak_allocated_bytes(tasks["apt2"]))
    held_train = resident_bytes(apt.activate(model), optimizer, clip, labels)
    memory["apt2_train"] = (held_train, peak_allocated_bytes(tasks["apt2_train"]))
    memory["apt2_half_inference"] = (
        resident_bytes(apt_half.activate(model), clip),
        peak_allocated_bytes(tasks["apt2_half_inference"]),
    )
    memory["apt2_half_train"] = (
        resident_bytes(apt_half.activate(model), half_optimizer, clip, labels),
        peak_allocated_bytes(tasks["apt2_half_train"]),
    )
    if "apt2_train_checkpointed" in tasks:
        memory["apt2_train_checkpointed"] = (held_train, peak_allocated_bytes(tasks["apt2_train_checkpointed"]))
    memory_mb = {
        name: {
            "resident_mb": round(held / MIB, 1),
            "peak_extra_mb": None if extra is None else round(extra / MIB, 1),
            "peak_mb": None if extra is None else round((held + extra) / MIB, 1),
        }
        for name, (held, extra) in memory.items()
    }

    def ratio(a, b):
        return None if a is None or b is None else round(a / b, 3)

    def paired(a: str, b: str) -> float:
        """Median over rounds of time(a) / time(b), both timed back to back in that round."""
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    def best(a: str, b: str) -> float:
        """Ratio of the fastest runs: contention only ever adds time."""
        return stats[a]["min"] / stats[b]["min"]

    def target(value, best_value, bound, at_most=True, offset=0.0):
        def shown(v):
            return None if v is None else round(v - offset, 4)

        def ok(v):
            return v is not None and (v - offset <= bound if at_most else v - offset >= bound)

        return {
            "value": shown(value),
            "value_best_runs": shown(best_value),
            "target": f"{'<=' if at_most else '>='} {bound}",
            "met": ok(value),
            "met_best_runs": ok(best_value) if best_value else None,
        }

    flops_ratio = statistics.median(
        (2 * backbone_macs / b) / (2 * args.mm_size**3 / m) for b, m in zip(times["backbone"], times["matmul"])
    )
    targets = {
        "apt2_latency_overhead": target(paired("apt2", "backbone"), best("apt2", "backbone"), 0.02, offset=1.0),
        "inference_vs_matmul_throughput": target(flops_ratio, infer_gflops_best / mm_gflops_best, 0.75, at_most=False),
        "train_step_vs_inference_latency": target(
            paired("apt2_train", "apt2_inference"), best("apt2_train", "apt2_inference"), 2.3
        ),
        "train_vs_inference_peak_memory": target(
            ratio(memory_mb["apt2_train"]["peak_mb"], memory_mb["apt2_inference"]["peak_mb"]), None, 1.6
        ),
    }
    targets["half_prompted_train_step_vs_inference_latency (diagnostic)"] = target(
        paired("apt2_half_train", "apt2_half_inference"), best("apt2_half_train", "apt2_half_inference"), 2.3
    )
    targets["half_prompted_train_vs_inference_peak_memory (diagnostic)"] = target(
        ratio(memory_mb["apt2_half_train"]["peak_mb"], memory_mb["apt2_half_inference"]["peak_mb"]), None, 1.6
    )
    if "apt2_train_checkpointed" in tasks:
        targets["checkpointed_train_step_vs_inference_latency (diagnostic)"] = target(
            paired("apt2_train_checkpointed", "apt2_inference"), best("apt2_train_checkpointed", "apt2_inference"), 2.3
        )
        targets["checkpointed_train_vs_inference_peak_memory (diagnostic)"] = target(
            ratio(memory_mb["apt2_train_checkpointed"]["peak_mb"], memory_mb["apt2_inference"]["peak_mb"]), None, 1.6
        )

    result = {
        "date": _date_utc(),
        "machine": machine_description(),
        "setup": {
            "arch": ARCH,
            "input": list(SHAPE),
            "dtype": "float32",
            "threads": args.threads,
            "inference_repeats": args.inference_repeats,
            "training_repeats": args.repeats,
            "warmup": args.warmup,
            "ratios": "value: median over rounds of the ratio within a round (tasks timed "
            "back to back); value_best_runs: ratio of the fastest runs",
            "load_average_before": load_before,
            "matmul_size": args.mm_size,
            "optimizer": "AdamW",
            "interleaved": list(tasks),
            "half_prompt_start": half,
        },
        "gmacs": {
            "backbone": round(backbone_macs / 1e9, 3),
            "apt2": round(apt_macs / 1e9, 3),
            "apt2_train": round(apt_train_macs / 1e9, 3),
            "apt2_half_train": round(half_train_macs / 1e9, 3),
        },
        # the least multiple of the inference time a step can take at equal speed per MAC
        "train_macs_ratio": {
            "apt2": round(apt_train_macs / apt_macs, 3),
            "apt2_half": round(half_train_macs / apt_macs, 3),
        },
        "latency_ms": {name: {k: round(v, 2) for k, v in s.items()} for name, s in stats.items()},
        "throughput_gflops": {
            "matmul_median": round(mm_gflops, 1),
            "matmul_best": round(mm_gflops_best, 1),
            "inference_median": round(infer_gflops, 1),
            "inference_best": round(infer_gflops_best, 1),
            "best_ratio": round(infer_gflops_best / mm_gflops_best, 3),
        },
        "memory": memory_mb,
        "targets": targets,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    result["setup"]["load_average_after"] = _load_average()
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, item in targets.items():
        print(
            f"{'met   ' if item['met'] else 'MISSED'} {name}: {item['value']} "
            f"(best runs {item['value_best_runs']}; target {item['target']})"
        )
    print(f"wrote {out}")


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _date_utc() -> str:
    try:
        return subprocess.run(["date", "-u"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        from datetime import datetime, timezone

        return datetime.now(timezone.utc).isoformat()


if __name__ == "__main__":
    main()
