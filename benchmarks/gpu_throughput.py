"""Clips per second of a training step and of inference, per tuning method, on one GPU.

apt (P=2 and P=400), vpt-deep (P=50, VPT's own default), linear and full on one shared
ViT-B 16x224 backbone, and APT P=2 again with ``model.recompute_qkv`` + ``model.recompute_mlp``
(row ``memory_setting``; the others are ``plain``) (``aptune.bench.build_cases``), under bf16 autocast, each at a batch
that fills the GPU: one step at a probe batch measures the memory a clip adds
(``torch.cuda.max_memory_allocated``), the batch is what ``--memory-fraction`` of the free
memory holds (a multiple of 8, at most ``--max-batch``), halved while a step runs out of
memory.  Steps are timed with CUDA events (``aptune.bench.StepTimer``) after warm-up; the
number is the median.  A training step is forward, cross-entropy, backward and AdamW on
the method's trainable tensors only, as ``aptune bench --train`` takes it.

``--dry-run``: the same steps on the CPU with a tiny backbone and a fixed batch of 2, so
the script and its JSON keys can be tested without a GPU.

Usage: python benchmarks/gpu_throughput.py [--dry-run] [--json OUT] [--steps 5] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from aptune.bench import StepTimer, build_cases, machine_description
from aptune.engine.runtime import autocast
from aptune.factory import create_model
from aptune.models.vit import count_parameters

CASES = (("apt", (2, 400)), ("vpt-deep", (50,)), ("linear", ()), ("full", ()))
# the memory options measured once more on APT P=2: less activation memory fits a larger batch
MEMORY_SETTINGS = {"recompute_qkv+mlp": ("recompute_qkv", "recompute_mlp")}
ROW_KEYS = (
    "method",
    "prompts",
    "memory_setting",
    "trainable_params",
    "train_batch",
    "train_step_ms_median",
    "train_clips_per_second",
    "train_peak_memory_gb",
    "infer_batch",
    "infer_step_ms_median",
    "infer_clips_per_second",
    "infer_peak_memory_gb",
)
TINY = dict(embed_dim=32, depth=2, num_heads=4, patch_size=16)
GB = 1e9


def training_step(model, clips, labels, optimizer, precision: str, device: torch.device):
    def step():
        with autocast(precision, device):
            logits = model(clips)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def inference_step(model, clips, precision: str, device: torch.device):
    def step():
        with torch.inference_mode(), autocast(precision, device):
            model(clips)

    return step


def fitting_batch(make_step, device: torch.device, probe: int, fraction: float, largest: int) -> int:
    """The batch whose step fits ``fraction`` of the free GPU memory, from one probe step."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    make_step(probe)()
    torch.cuda.synchronize(device)
    per_clip = max(1, (torch.cuda.max_memory_allocated(device) - before) / probe)
    free, _ = torch.cuda.mem_get_info(device)
    return max(probe, min(largest, int(fraction * (free + torch.cuda.memory_reserved(device) - before) / per_clip)))


def timed(make_step, batch: int, device: torch.device, steps: int, warmup: int) -> tuple[int, float, float | None]:
    """(batch that ran, median ms, peak GB), halving the batch while a step runs out of memory."""
    timer = StepTimer(device)
    while True:
        try:
            step = make_step(batch)
            for _ in range(warmup):
                step()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = [timer(step) for _ in range(steps)]
            peak = torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None
            return batch, statistics.median(times), peak
        except torch.OutOfMemoryError:
            if batch <= 1:
                raise
            batch = max(1, batch // 2)
            torch.cuda.empty_cache()


def measure_case(
    case, model, settings: argparse.Namespace, device: torch.device, shape: tuple, memory_setting: str = "plain"
) -> dict:
    case.activate(model)
    switched_on = MEMORY_SETTINGS.get(memory_setting, ())
    for attribute in ("recompute_qkv", "recompute_mlp"):
        setattr(model, attribute, attribute in switched_on)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6, weight_decay=0.0)  # small: full tuning moves shared weights

    def inputs(batch):
        clips = torch.randn((batch, *shape), device=device)
        return clips, torch.randint(0, model.head.out_features, (batch,), device=device)

    def train_step(batch):
        model.train()
        return training_step(model, *inputs(batch), optimizer, settings.precision, device)

    def infer_step(batch):
        model.eval()
        return inference_step(model, inputs(batch)[0], settings.precision, device)

    row = {
        "method": case.method,
        "prompts": case.num_prompts,
        "memory_setting": memory_setting,
        "trainable_params": count_parameters(model)[0],
    }
    for kind, make_step, largest in (
        ("train", train_step, settings.max_batch),
        ("infer", infer_step, 4 * settings.max_batch),
    ):
        if device.type == "cuda":
            batch = fitting_batch(make_step, device, settings.probe_batch, settings.memory_fraction, largest)
            batch = max(8, batch // 8 * 8)
        else:
            batch = settings.probe_batch
        batch, median_ms, peak = timed(make_step, batch, device, settings.steps, settings.warmup)
        row[f"{kind}_batch"] = batch
        row[f"{kind}_step_ms_median"] = round(median_ms, 3)
        row[f"{kind}_clips_per_second"] = round(batch / (median_ms / 1000.0), 2)
        row[f"{kind}_peak_memory_gb"] = None if peak is None else round(peak, 2)
    optimizer.state.clear()  # the AdamW moments of full tuning are large: free them before the next case
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {key: row.get(key) for key in ROW_KEYS}


def run(settings: argparse.Namespace) -> dict:
    device = torch.device("cpu" if settings.dry_run else settings.device)
    frames, size = (4, 32) if settings.dry_run else (settings.frames, settings.img_size)
    overrides = TINY if settings.dry_run else {}
    arch = None if settings.dry_run else settings.arch
    if settings.dry_run:
        settings.probe_batch, settings.steps, settings.warmup = 2, 1, 0
    torch.manual_seed(0)
    model = create_model(arch, num_classes=400, method="full", num_frames=frames, img_size=size, **overrides)
    model = model.to(device)
    cases = [case for method, prompts in CASES for case in build_cases(model, [method], list(prompts) or [1])]
    shape = (3, frames, size, size)
    rows = [measure_case(case, model, settings, device, shape) for case in cases]
    rows += [measure_case(cases[0], model, settings, device, shape, setting) for setting in MEMORY_SETTINGS]
    return {
        "meta": {
            "machine": machine_description(),
            "device": str(device),
            "arch": "tiny (dry run)" if settings.dry_run else settings.arch,
            "frames": frames,
            "img_size": size,
            "precision": settings.precision,
            "timing_method": "cuda events" if device.type == "cuda" else "time.perf_counter",
            "memory_fraction": settings.memory_fraction,
            "steps": settings.steps,
            "warmup": settings.warmup,
            "dry_run": settings.dry_run,
        },
        "rows": rows,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny backbone on the CPU: tests the script")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="vit_base_patch16_224")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--probe-batch", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=256, help="largest training batch (inference: 4x)")
    parser.add_argument("--memory-fraction", type=float, default=0.8)
    parser.add_argument("--json", dest="json_out")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    settings = parse_args(argv)
    text = json.dumps(run(settings), indent=2)
    if settings.json_out:
        out = Path(settings.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
