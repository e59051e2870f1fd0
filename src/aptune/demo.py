"""``aptune demo``: APT against its alternatives on a laptop CPU, from a shipped pretrained backbone.

The backbone (``assets/demo_backbone.safetensors``) was pre-trained with our own
``aptune pretrain`` (VideoMAE, tube masking) on synthetic *source* scenes of coloured
objects that move or stay at random; the recipe that made it is
``recipes/demo_pretrain.yaml`` and its header.  The demo tunes it on the *target*
task "which object moves" (``recipes/demo.yaml``) with ``linear``,
``vpt-deep``, ``apt`` (as many prompts as VPT) and ``full``, evaluates each with
all test views, times inference interleaved in one process, and writes a table
(Markdown, JSON) and a bar chart.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from aptune.adapters import model_from_adapter
from aptune.bench import inference_step, machine_description, spread, time_interleaved
from aptune.config import config_from_dict
from aptune.data.synth import make_synthetic_dataset
from aptune.engine.plots import pyplot, save_figure
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


def method_config(recipe: dict[str, Any], method: str, dataset: Path, backbone: Path, quick: bool):
    raw = copy.deepcopy(recipe["base"])
    _merge(raw, recipe["methods"].get(method, {}))
    if quick:
        _merge(raw, recipe.get("quick", {}))
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
    num_classes = len(dataset_spec["motions"]) if dataset_spec.get("motions") else dataset_spec.get("num_classes", 10)
    write_outputs(rows, output_dir, quick, chance=100.0 / num_classes)
    return rows


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


def format_table(rows: list[dict]) -> str:
    header = (
        "| method | prompts | top-1 % | top-5 % | trainable params | % of full | GFLOPs/view "
        "| latency ms/clip | train s |"
    )
    lines = [header, "|" + "---|" * 9]
    full = next((r["trainable_params"] for r in rows if r["method"] == "full"), None)
    for r in rows:
        share = f"{100 * r['trainable_params'] / full:.2f}" if full else "-"
        lines.append(
            f"| {r['method']} | {r['prompts'] if r['prompts'] is not None else '-'} | {r['top1']:.1f} | "
            f"{r['top5']:.1f} | {r['trainable_params']:,} | {share} | {r['gflops_per_view']:.4f} | "
            f"{r['latency_ms']:.2f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_outputs(rows: list[dict], output_dir: Path, quick: bool, chance: float | None = None) -> None:
    table = format_table(rows)
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    machine = machine_description()
    summary = {"date": stamp, "machine": machine, "quick": quick, "chance_top1": chance, "rows": rows}
    (output_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "demo.md").write_text(
        f"# aptune demo ({stamp}{', quick' if quick else ''})\n\n{table}\n\n![demo](demo.png)\n"
    )
    plot_demo(rows, output_dir / "demo.png", chance)
    print(table)
    print(f"\nwritten: {output_dir / 'demo.md'}, {output_dir / 'demo.json'}, {output_dir / 'demo.png'}")


def plot_demo(rows: list[dict], path: Path, chance: float | None = None) -> Path:
    plt = pyplot()
    colours = {"linear": "tab:gray", "vpt-deep": "tab:orange", "apt": "tab:blue", "full": "tab:green"}
    fig, (ax_params, ax_flops) = plt.subplots(1, 2, figsize=(10, 3.8))
    for row in rows:
        colour = colours.get(row["method"], "tab:purple")
        ax_params.scatter(row["trainable_params"], row["top1"], s=90, color=colour, label=row["method"])
        ax_params.annotate(
            row["method"],
            (row["trainable_params"], row["top1"]),
            textcoords="offset points",
            xytext=(6, -10),
            fontsize=9,
        )
    if chance is not None:
        ax_params.axhline(chance, color="black", linestyle=":", linewidth=1)
        ax_params.annotate(
            f"chance {chance:.1f}%",
            (0.02, chance),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(0, 3),
            fontsize=8,
        )
        ax_params.set_ylim(bottom=0)
    ax_params.set(
        xscale="log",
        xlabel="trainable parameters (log)",
        ylabel="top-1 accuracy (%)",
        title="Accuracy vs trainable parameters",
    )
    names = [r["method"] for r in rows]
    ax_flops.bar(names, [r["gflops_per_view"] for r in rows], color=[colours.get(n, "tab:purple") for n in names])
    for index, row in enumerate(rows):
        ax_flops.annotate(
            f"{row['top1']:.0f}%",
            (index, row["gflops_per_view"]),
            ha="center",
            textcoords="offset points",
            xytext=(0, 3),
            fontsize=9,
        )
    ax_flops.set(ylabel="GFLOPs per view (multiply-adds)", title="Inference cost (labels: top-1)")
    for ax in (ax_params, ax_flops):
        ax.grid(alpha=0.3)
    return save_figure(fig, path)
