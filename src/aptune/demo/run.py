"""``aptune demo``: the run itself -- the target set, one training run per method, latency, outputs.

The backbone (``assets/demo_backbone.safetensors``) was pre-trained with our own
``aptune pretrain`` (VideoMAE, tube masking) on synthetic *source* scenes of coloured
objects that move or stay at random; the recipe that made it is
``recipes/demo_pretrain.yaml`` and its header.  The demo tunes it on the *target*
task "which object moves" (``recipes/demo.yaml``) with ``linear``,
``vpt-deep``, ``apt`` (as many prompts as VPT) and ``full``, evaluates each with
all test views, times inference interleaved in one process, measures what prompts cost
(:mod:`aptune.demo.prompt_cost`) and writes the table, JSON and figures
(:mod:`aptune.demo.report`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from aptune.adapters import model_from_adapter
from aptune.bench import inference_step, spread, time_interleaved
from aptune.config import config_from_dict
from aptune.data.synth import make_synthetic_dataset
from aptune.demo.prompt_cost import PROMPT_COUNTS, prompt_cost
from aptune.demo.report import write_outputs
from aptune.engine.runfolder import ADAPTER_NAME, METRICS_NAME, RunFolder
from aptune.engine.trainer import train
from aptune.errors import AptuneError, ConfigError
from aptune.methods import methods_that

log = logging.getLogger(__name__)

DEMO_METHODS = ("linear", "vpt-deep", "apt", "full")


def package_file(*parts: str) -> Path:
    return Path(str(resources.files("aptune").joinpath(*parts)))


def demo_recipe() -> dict[str, Any]:
    return yaml.safe_load(package_file("recipes", "demo.yaml").read_text())


def shipped_backbone() -> Path:
    path = package_file("assets", "demo_backbone.safetensors")
    if not path.is_file():
        raise AptuneError(
            f"{path}: the demo backbone is missing; rebuild it with "
            "`aptune pretrain --config src/aptune/recipes/demo_pretrain.yaml --output-dir runs/demo-pretrain` "
            "and copy runs/demo-pretrain/pretrained.safetensors there"
        )
    return path


def target_dataset(cache_dir: Path, spec: dict[str, Any]) -> Path:
    """The synthetic target set, generated once per spec and reused."""
    root = target_dataset_path(cache_dir, spec)
    done = root / ".complete"
    if not done.exists():
        log.info("writing the synthetic target dataset to %s", root)
        make_synthetic_dataset(root, workers=min(2, os.cpu_count() or 1), **_synth_arguments(spec))
        done.write_text(json.dumps(spec))
    return root


def target_dataset_path(cache_dir: Path, spec: dict[str, Any]) -> Path:
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / f"demo-target-{key}"


def _synth_arguments(spec: dict[str, Any]) -> dict[str, Any]:
    arguments = dict(spec)
    if "size" in arguments:
        arguments["size"] = tuple(arguments["size"])
    return arguments


def method_config(
    recipe: dict[str, Any], method: str, dataset: Path, backbone: Path, quick: bool, changes: dict | None = None
):
    """The run config of ``method`` in the demo recipe; ``changes`` (sections) go on top (a study's)."""
    raw = copy.deepcopy(recipe["base"])
    _merge(raw, recipe["methods"].get(method, {}))
    if quick:
        _merge(raw, recipe.get("quick", {}))
    _merge(raw, changes or {})
    raw.setdefault("method", {})["name"] = method
    raw.setdefault("data", {})["root"] = str(dataset)
    raw.setdefault("model", {})["pretrained"] = str(backbone)
    return config_from_dict(raw, source=f"demo recipe ({method})")


def _merge(into: dict, update: dict) -> None:
    for section, values in update.items():
        if isinstance(values, dict):
            into.setdefault(section, {}).update(values)
        else:
            into[section] = values


def run_demo(
    output_dir: str | Path = "runs/demo",
    quick: bool = False,
    methods: tuple[str, ...] = DEMO_METHODS,
    cache_dir: str | Path | None = None,
    backbone: str | Path | None = None,
) -> list[dict]:
    if not str(output_dir).strip():
        raise ConfigError("the demo's output folder is empty: give the folder to write to")
    output_dir = Path(output_dir)
    recipe = demo_recipe()
    dataset_spec = dict(recipe["dataset"], **(recipe.get("quick_dataset", {}) if quick else {}))
    cache_dir = Path(cache_dir) if cache_dir else output_dir / "cache"
    dataset = target_dataset_path(cache_dir, dataset_spec)
    backbone = Path(backbone) if backbone is not None else shipped_backbone()
    if not methods:
        raise ConfigError("the demo needs at least one method (valid: " + ", ".join(DEMO_METHODS) + ")")
    configs = {method: method_config(recipe, method, dataset, backbone, quick) for method in methods}
    refuse_runs_of_another_recipe(output_dir, configs)  # before anything is written
    share_the_cores_with_other_processes()
    target_dataset(cache_dir, dataset_spec)
    rows = []
    for method, config in configs.items():
        log.info("== %s", method)
        started = time.time()
        metrics = train(config, output_dir / method, resume=None)
        run_metrics = json.loads((output_dir / method / METRICS_NAME).read_text())
        rows.append(
            {
                "method": method,
                "prompts": config.method.num_prompts if method in methods_that("prompted") else None,
                "top1": round(metrics["top1"], 2),
                "top5": round(metrics["top5"], 2),
                "trainable_params": run_metrics["trainable_params"],
                "total_params": run_metrics["total_params"],
                "gflops_per_view": run_metrics["gflops_per_view"],
                "train_seconds": round(run_metrics["train_seconds"], 1),
                "wall_seconds": round(time.time() - started, 1),
            }
        )
    latencies = measure_latency(output_dir, methods, backbone, repeats=5 if quick else 20)
    for row in rows:
        row.update(latencies[row["method"]])
    log.info("== the cost of prompts")
    arch = model_from_adapter(output_dir / methods[0] / ADAPTER_NAME, pretrained=backbone).config
    costs = prompt_cost(arch, PROMPT_COUNTS[:2] if quick else PROMPT_COUNTS, repeats=3 if quick else 10)
    num_classes = len(dataset_spec["motions"]) if dataset_spec.get("motions") else dataset_spec.get("num_classes", 10)
    write_outputs(rows, output_dir, quick, chance=100.0 / num_classes, prompt_rows=costs)
    return rows


def share_the_cores_with_other_processes() -> None:
    """Use the cores other processes leave free: the cores they keep busy now, measured.

    Two processes that each run as many threads as there are cores make PyTorch's threads
    wait on one another: beside a second training process on 2 cores, an APT epoch of the
    demo took 45 s with 2 threads and 28 s with 1 (10.5 s alone).  What counts is the load
    now, measured over one second (:func:`cores_busy_elsewhere`); the 1-minute load average
    lags by a minute, so right after another job ended it took the demo to one thread on an
    idle machine.  Only the default is changed: a thread count set by the user
    (``torch.set_num_threads``, OMP_NUM_THREADS) stays.
    """
    cores = os.cpu_count() or 1
    if torch.get_num_threads() != cores or "OMP_NUM_THREADS" in os.environ:
        return
    busy = cores_busy_elsewhere()
    if busy is None:
        return
    threads = max(1, cores - math.floor(busy + 0.5))
    if threads < cores:
        log.info("other processes keep %.1f cores busy: training with %d of %d threads", busy, threads, cores)
        torch.set_num_threads(threads)


def cores_busy_elsewhere(seconds: float = 1.0) -> float | None:
    """How many cores are busy over the next ``seconds`` while this process waits (/proc/stat);
    None where the kernel does not say."""

    def busy_and_total() -> tuple[int, int]:
        counters = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        idle = counters[3] + counters[4]  # idle and iowait
        return sum(counters) - idle, sum(counters)

    try:
        busy_before, total_before = busy_and_total()
        time.sleep(seconds)
        busy_after, total_after = busy_and_total()
    except (OSError, ValueError, IndexError):
        return None
    if total_after <= total_before:
        return None
    return (busy_after - busy_before) / (total_after - total_before) * (os.cpu_count() or 1)


def refuse_runs_of_another_recipe(output_dir: Path, configs: dict) -> None:
    """Before any work: a method folder holding a run of another recipe (an older aptune, another
    backbone, a user's own run) is refused, never deleted or resumed with the wrong recipe."""
    for method, config in configs.items():
        try:
            RunFolder(output_dir / method).check(config, resume=None)
        except AptuneError as exc:
            raise ConfigError(
                f"{exc}. For the demo: remove {output_dir / method} yourself or give aptune demo --output-dir NEW"
            ) from None


def measure_latency(output_dir: Path, methods, backbone: Path, repeats: int) -> dict[str, dict]:
    """Inference latency per clip of every tuned model, timed interleaved in this process."""
    models = {m: model_from_adapter(output_dir / m / ADAPTER_NAME, pretrained=backbone).eval() for m in methods}
    config = next(iter(models.values())).config
    clip = torch.randn(1, config.in_chans, config.num_frames, config.img_size, config.img_size)
    times = time_interleaved(
        {m: inference_step(model, clip) for m, model in models.items()},
        repeats=repeats,
        warmup=2,
        description="latency",
    )
    result = {}
    for method, samples in times.items():
        stats = spread(samples)
        result[method] = {"latency_ms": round(stats["median"], 3), "latency_iqr_ms": round(stats["iqr"], 3)}
    return result
