"""Throughput of mixed-task batches: one MultiAdapterModel pass vs one model per task.

Several APT / linear adapters share one frozen backbone.  A batch holds clips
of every task in random order.  We time

* ``multi``: ``MultiAdapterModel(batch, task_ids)``, one backbone pass;
* ``separate``: the tasks one after another, each task's clips through its
  own tuned model (what serving without sharing does).

in two settings: every task with the same number of prompts (no mask needed)
and tasks with different numbers (padded keys masked in SDPA).  Runs are
interleaved so drift in machine load hits both sides.  Weights are random:
speed does not depend on them.

    python benchmarks/bench_multitask.py            # ~1-2 min on 2 CPU cores
    python benchmarks/bench_multitask.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import aptune

RESULTS = Path(__file__).parent / "results" / "multitask.json"


def build_tasks(arch: dict, prompt_counts: list[int], folder: Path, backbone_state: dict):
    models, paths = {}, {}
    for i, count in enumerate(prompt_counts):
        name = f"task{i}"
        method = "apt" if count > 0 else "linear"
        options = {"num_prompts": count} if count > 0 else {}
        model = aptune.create_model(num_classes=10 + 10 * i, method=method, **arch, **options).eval()
        model.load_state_dict(backbone_state, strict=False)
        models[name] = model
        paths[name] = aptune.save_adapter(model, folder / f"{name}.safetensors")
    return models, paths


def run_multi(multi, clips, names):
    return multi(clips, names)


def run_separate(models, clips, names):
    out = [None] * len(names)
    for task, model in models.items():
        members = [i for i, n in enumerate(names) if n == task]
        if members:
            logits = model(clips[members])
            for j, i in enumerate(members):
                out[i] = logits[j]
    return out


def time_interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Per-function run times, and each function's warm-up output (for the exactness check)."""
    times = {name: [] for name in fns}
    with torch.inference_mode():
        outputs = {name: fn() for name, fn in fns.items()}  # warm-up
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small_patch16_224")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="tiny model, one repeat (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    if args.quick:
        arch = dict(embed_dim=64, depth=2, num_heads=4, num_frames=4, img_size=32, patch_size=16)
        args.repeats, args.batch = 1, 8
    else:
        base = aptune.PRESETS[args.arch]
        arch = dict(**base, num_frames=args.frames, img_size=args.size)
    backbone = aptune.create_model(num_classes=1, method="linear", **arch).eval()
    backbone_state = {k: v for k, v in backbone.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}
    config = backbone.config
    generator = torch.Generator().manual_seed(1)
    clips = torch.randn(args.batch, 3, config.num_frames, config.img_size, config.img_size, generator=generator)

    settings = {
        "same_prompts": [8, 8, 8, 8],  # no padding: the backbone's own block code
        "mixed_prompts": [4, 8, 16, 0],  # padded keys masked; one linear probe
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting, counts in settings.items():
            models, paths = build_tasks(arch, counts, Path(tmp), backbone_state)
            multi = aptune.MultiAdapterModel(backbone, paths)
            order = torch.randperm(args.batch, generator=generator).tolist()
            names = [multi.tasks[i % len(counts)] for i in order]
            times, outputs = time_interleaved(
                {
                    "multi": lambda m=multi, n=names: run_multi(m, clips, n),
                    "separate": lambda m=models, n=names: run_separate(m, clips, n),
                },
                args.repeats,
            )
            max_diff = max(float((x - y).abs().max()) for x, y in zip(outputs["multi"], outputs["separate"]))
            results[setting] = {
                "prompt_counts": counts,
                "max_abs_logit_difference": max_diff,
                **{
                    name: {
                        "median_seconds_per_batch": statistics.median(t),
                        "clips_per_second": args.batch / statistics.median(t),
                        "runs": t,
                    }
                    for name, t in times.items()
                },
            }
            results[setting]["speedup"] = (
                results[setting]["separate"]["median_seconds_per_batch"]
                / results[setting]["multi"]["median_seconds_per_batch"]
            )
            print(
                f"{setting:14s} multi {results[setting]['multi']['clips_per_second']:7.2f} clips/s   "
                f"separate {results[setting]['separate']['clips_per_second']:7.2f} clips/s   "
                f"speed-up x{results[setting]['speedup']:.2f}   max |diff| {max_diff:.1e}",
                flush=True,
            )
            backbone_params = sum(v.numel() for v in backbone_state.values())
            results[setting]["weights_mib"] = {
                "multi": (
                    backbone_params
                    + sum(p.numel() for p in multi.heads.parameters())
                    + sum(b.numel() for b in multi.buffers())
                    - sum(b.numel() for b in backbone.buffers())
                )
                * 4
                / 2**20,
                "separate": sum(sum(p.numel() for p in m.parameters()) for m in models.values()) * 4 / 2**20,
            }

    report = {
        "benchmark": "multitask",
        "date": subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "aptune": aptune.__version__,
            # other jobs on a shared machine slow both sides; the runs are interleaved for that
            "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "model": {
            "arch": "quick" if args.quick else args.arch,
            **{k: v for k, v in arch.items()},
            "tokens": config.num_patches,
            "batch": args.batch,
            "tasks": 4,
            "repeats": args.repeats,
        },
        "results": results,
    }
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
