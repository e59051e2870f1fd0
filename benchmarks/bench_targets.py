"""Performance targets of aptune on this machine's CPU: ViT-S 16x224, batch 1, fp32 (issue 20).

In one run it reports, each against its goal:

* ``inference_fraction_of_mm`` (>= 0.85): inference GFLOP/s of the frozen backbone over the
  GFLOP/s of a large ``torch.mm`` timed in the same rounds;
* ``apt_step_over_inference`` (<= 2.45): an APT training step (P=2, prompts in every block:
  forward, cross-entropy, backward to the prompts and head, AdamW) over APT's inference;
* ``train_peak_rss_over_inference`` (<= 1.8): peak resident memory of a fresh process that
  trains those steps over that of a fresh process that only infers;
* ``small_n_overhead_over_mac_overhead`` (<= 1.5): at 128 tokens (the demo backbone's shape)
  and 32 prompts, APT's latency overhead over the frozen model divided by its multiply-add
  overhead; ``large_n_overhead`` is the same at 1,568 tokens and 2 prompts (goal: noise).

and, as the options to trade time for memory, the step time and peak RSS of each setting:
``plain``, ``recompute_mlp`` (each MLP's 4D-wide hidden recomputed from its D-wide input),
``recompute_qkv`` (norm1 and q/k/v recomputed, the attention kernel's outputs kept), both
(``recompute_qkv_mlp``) and ``grad_checkpointing`` (whole blocks recomputed); with
``--compile`` also the step under ``torch.compile`` (inductor).

Timing is round-robin in one process (``aptune.bench.time_interleaved``; switching
settings is untimed), ratios are medians of per-round ratios (``*_best_runs``: ratios of
the fastest runs).  Peak RSS is VmHWM of child processes started for it.

    python benchmarks/bench_targets.py [--quick] [--compile] --json benchmarks/results/targets.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from aptune.bench import (
    build_cases,
    inference_step,
    machine_description,
    spread,
    time_interleaved,
    training_step,
)
from aptune.factory import create_model
from aptune.flops import count_macs

ARCH = "vit_small_patch16_224"
SHAPE = (1, 3, 16, 224, 224)
# the demo backbone's shape: 8 x 4 x 4 = 128 tokens
SMALL = dict(embed_dim=192, depth=6, num_heads=3, num_frames=16, img_size=64)
SMALL_SHAPE = (1, 3, 16, 64, 64)
GOALS = {
    "inference_fraction_of_mm": (">=", 0.85),
    "apt_step_over_inference": ("<=", 2.45),
    "train_peak_rss_over_inference": ("<=", 1.8),
    "small_n_overhead_over_mac_overhead": ("<=", 1.5),
}
# memory settings of the training step: the model attributes each one switches on
SETTINGS = {
    "plain": (),
    "recompute_mlp": ("recompute_mlp",),
    "recompute_qkv": ("recompute_qkv",),
    "recompute_qkv_mlp": ("recompute_qkv", "recompute_mlp"),
    "grad_checkpointing": ("grad_checkpointing",),
}


def main() -> None:
    args = parse_args()
    if args.child:
        return child(args.child, args.threads, args.steps)
    torch.set_num_threads(args.threads)
    repeats = (7, 3, 15) if args.quick else (15, 5, 40)
    started, load_before = time.time(), _load_average()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_description()}
    result["vit_s"] = time_vit_s(args, *repeats[:2])
    result["small_n"] = time_small_n(repeats[2])
    result["peak_rss_mb"] = {
        name: peak_rss(name, args.threads) for name in ("inference", *(f"train_{s}" for s in SETTINGS))
    }
    result.update(headline(result))
    result["setup"] = {
        "arch": ARCH,
        "input": list(SHAPE),
        "small_n": {**SMALL, "input": list(SMALL_SHAPE), "prompts": 32},
        "threads": args.threads,
        "repeats": dict(zip(("inference", "training", "small_n"), repeats)),
        "quick": args.quick,
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "seconds": round(time.time() - started, 1),
    }
    write(result, args.json)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "targets.json"))
    parser.add_argument("--quick", action="store_true", help="fewer rounds: under 10 minutes on 2 cores")
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mm-size", type=int, default=2048)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # peak RSS: one fresh process per workload
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    return parser.parse_args()


# ------------------------------------------------------------------ ViT-S timing
def time_vit_s(args, inference_repeats: int, training_repeats: int) -> dict:
    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=400, method="full")
    backbone, apt = build_cases(model, ["linear", "apt"], [2])
    clip, labels = torch.randn(SHAPE), torch.tensor([7])
    apt.activate(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    mm = matmul_task(args.mm_size)
    infer = inference_step(model, clip)
    tasks = {"matmul": mm, "backbone": infer, "apt2": infer}
    setups = {"backbone": lambda: backbone.activate(model).eval(), "apt2": lambda: apt.activate(model).eval()}
    times = time_interleaved(tasks, setups=setups, repeats=inference_repeats, warmup=1, description="inference")

    step = training_step(model, clip, labels, optimizer)
    train_tasks, train_setups = {"apt2_inference": infer}, {"apt2_inference": setups["apt2"]}
    for setting in SETTINGS:
        train_tasks[f"train_{setting}"] = step
        train_setups[f"train_{setting}"] = switch(model, apt, setting)
    if args.compile:
        compiled = torch.compile(model)
        train_tasks["train_compiled"] = training_step(compiled, clip, labels, optimizer)
        train_setups["train_compiled"] = switch(model, apt, "plain")
        compile_started = time.time()
        train_setups["train_compiled"]()
        train_tasks["train_compiled"]()  # compiled once here, outside the timing
        compile_seconds = round(time.time() - compile_started, 1)
    times.update(
        time_interleaved(train_tasks, setups=train_setups, repeats=training_repeats, warmup=1, description="training")
    )
    apply_setting(model, "plain")  # the timing left the last setting on: count the plain step
    backbone.activate(model)
    backbone_macs = count_macs(model, SHAPE)
    apt.activate(model)
    apt_macs = count_macs(model, SHAPE)
    train_macs = count_macs(apt.activate(model).train(), clip, backward=True, meta=False)
    model.eval()
    report = {
        "gmacs": {"backbone": backbone_macs / 1e9, "apt2": apt_macs / 1e9, "apt2_train": train_macs / 1e9},
        "latency_ms": {name: {k: round(v, 2) for k, v in spread(values).items()} for name, values in times.items()},
        "matmul_gflops_median": round(2 * args.mm_size**3 / statistics.median(times["matmul"]) / 1e6, 1),
        "inference_fraction_of_mm": paired_ratio(times, "matmul", "backbone", backbone_macs / args.mm_size**3),
        "large_n_latency_overhead": paired_ratio(times, "apt2", "backbone") - 1,
        "large_n_mac_overhead": apt_macs / backbone_macs - 1,
        "train_macs_over_inference": round(train_macs / apt_macs, 3),
    }
    for setting in (*SETTINGS, *(["compiled"] if args.compile else [])):
        report[f"step_over_inference_{setting}"] = paired_ratio(times, f"train_{setting}", "apt2_inference")
    if args.compile:
        report["compile_seconds"] = compile_seconds
    return report


def switch(model, case, setting: str):
    """Untimed: the APT case on the shared backbone, in training mode, with one memory setting."""

    def run():
        case.activate(model).train()
        apply_setting(model, setting)

    return run


def apply_setting(model, setting: str) -> None:
    for attribute in ("recompute_mlp", "recompute_qkv", "grad_checkpointing"):
        setattr(model, attribute, attribute in SETTINGS[setting])


def matmul_task(size: int):
    a, b, out = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    return lambda: torch.mm(a, b, out=out)


def paired_ratio(times: dict, a: str, b: str, scale: float = 1.0) -> float:
    """Median over rounds of scale * time(a) / time(b), the two timed in the same round."""
    return round(statistics.median(scale * x / y for x, y in zip(times[a], times[b])), 4)


# ------------------------------------------------------------------ small N
def time_small_n(repeats: int) -> dict:
    torch.manual_seed(0)
    model = create_model(None, num_classes=6, method="full", **SMALL)
    backbone, apt = build_cases(model, ["linear", "apt"], [32])
    clip = torch.randn(SMALL_SHAPE)
    infer = inference_step(model, clip)
    setups = {"backbone": lambda: backbone.activate(model).eval(), "apt32": lambda: apt.activate(model).eval()}
    times = time_interleaved(
        {"backbone": infer, "apt32": infer}, setups=setups, repeats=repeats, warmup=2, description="small N"
    )
    backbone.activate(model)
    base = count_macs(model, SMALL_SHAPE)
    apt.activate(model)
    mac_overhead = count_macs(model, SMALL_SHAPE) / base - 1
    latency_overhead = paired_ratio(times, "apt32", "backbone") - 1
    return {
        "tokens": model.config.num_patches,
        "latency_ms": {name: {k: round(v, 3) for k, v in spread(values).items()} for name, values in times.items()},
        "latency_overhead": round(latency_overhead, 4),
        "mac_overhead": round(mac_overhead, 4),
        "overhead_over_mac_overhead": round(latency_overhead / mac_overhead, 3),
    }


# ------------------------------------------------------------------ peak RSS
def peak_rss(workload: str, threads: int) -> float:
    """Peak RSS (VmHWM, MB) of a fresh process that builds ViT-S with APT P=2 and runs ``workload``."""
    command = [sys.executable, __file__, "--child", workload, "--threads", str(threads)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return round(int(output.strip().splitlines()[-1]) / 1024, 1)


def child(workload: str, threads: int, steps: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=400, method="apt", num_prompts=2)
    clip, labels = torch.randn(SHAPE), torch.tensor([7])
    if workload == "inference":
        step = inference_step(model.eval(), clip)
    else:
        setting = workload.removeprefix("train_")
        model.train()
        apply_setting(model, setting)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        step = training_step(model, clip, labels, optimizer)
    for _ in range(steps):
        step()
    print(peak_rss_kib())


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM).  Not ru_maxrss: Linux carries that across
    exec, so a child would report the peak of the parent it was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (peak RSS is read the Linux way)")


# ------------------------------------------------------------------ report
def headline(result: dict) -> dict:
    vit_s, small, rss = result["vit_s"], result["small_n"], result["peak_rss_mb"]
    values = {
        "inference_fraction_of_mm": vit_s["inference_fraction_of_mm"],
        "apt_step_over_inference": vit_s["step_over_inference_plain"],
        "train_peak_rss_over_inference": round(rss["train_plain"] / rss["inference"], 3),
        "small_n_overhead_over_mac_overhead": small["overhead_over_mac_overhead"],
    }
    out = dict(values)
    out["large_n_overhead"] = {
        "latency": round(vit_s["large_n_latency_overhead"], 4),
        "macs": round(vit_s["large_n_mac_overhead"], 5),
    }
    out["rss_over_inference_by_setting"] = {s: round(rss[f"train_{s}"] / rss["inference"], 3) for s in SETTINGS}
    out["step_over_inference_by_setting"] = {
        s: vit_s[f"step_over_inference_{s}"] for s in SETTINGS if f"step_over_inference_{s}" in vit_s
    }
    out["goals"] = {
        key: {"goal": f"{op} {bound}", "met": (values[key] >= bound) if op == ">=" else (values[key] <= bound)}
        for key, (op, bound) in GOALS.items()
    }
    return out


def write(result: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, goal in result["goals"].items():
        print(f"{'met   ' if goal['met'] else 'MISSED'} {key}: {result[key]} (goal {goal['goal']})")
    print(
        f"large N: latency +{result['large_n_overhead']['latency']:.2%}, MACs +{result['large_n_overhead']['macs']:.3%}"
    )
    print(f"step / inference by setting: {result['step_over_inference_by_setting']}")
    print(f"peak RSS / inference by setting: {result['rss_over_inference_by_setting']}")
    print(f"wrote {out}")


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    main()
