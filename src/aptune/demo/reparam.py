"""``aptune demo --study reparam``: is APT's prompt reparameterisation what makes it robust to the lr?

The paper's claim: with the reparameterisation (each prompt row scaled by a learnable
max(s, 1)) APT trains well over a wider range of learning rates than without it.  The study
trains the demo's APT run with and without it at each of :data:`STUDY_LRS` (the prompts'
peak lr; the classifier keeps the recipe's 0.01) and each seed of :data:`STUDY_SEEDS`, at the
demo budget, and plots top-1 against lr with the spread over seeds.  It is not part of the
default demo: 16 runs of about a minute each on two cores.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from aptune.bench import machine_description
from aptune.demo.report import COLOURS
from aptune.demo.run import demo_recipe, method_config, shipped_backbone, target_dataset
from aptune.engine.plots import pyplot, save_figure
from aptune.engine.trainer import train

log = logging.getLogger(__name__)

STUDY_LRS = (0.01, 0.03, 0.1, 0.3)
STUDY_SEEDS = (0, 1)


def run_reparam_study(
    output_dir: str | Path = "runs/demo-reparam",
    cache_dir: str | Path | None = None,
    backbone: str | Path | None = None,
    quick: bool = False,
) -> dict:
    output_dir = Path(output_dir)
    recipe = demo_recipe()
    spec = dict(recipe["dataset"], **(recipe.get("quick_dataset", {}) if quick else {}))
    dataset = target_dataset(Path(cache_dir) if cache_dir else output_dir / "cache", spec)
    backbone = Path(backbone) if backbone is not None else shipped_backbone()
    lrs, seeds = (STUDY_LRS[:2], STUDY_SEEDS[:1]) if quick else (STUDY_LRS, STUDY_SEEDS)
    started = time.time()
    rows = []
    for reparam in (True, False):
        for lr in lrs:
            for seed in seeds:
                changes = {"method": {"reparam": reparam}, "optim": {"lr": lr}, "train": {"seed": seed}}
                config = method_config(recipe, "apt", dataset, backbone, quick, changes)
                name = f"apt-reparam-{'on' if reparam else 'off'}-lr{lr:g}-seed{seed}"
                log.info("== %s", name)
                metrics = train(config, output_dir / name, resume=None)
                rows.append({"reparam": reparam, "lr": lr, "seed": seed, "top1": round(metrics["top1"], 2)})
    summary = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_description(),
        "quick": quick,
        "seconds": round(time.time() - started, 1),
        "head_lr": config.optim.head_lr,
        "rows": rows,
    }
    (output_dir / "reparam.json").write_text(json.dumps(summary, indent=2))
    plot_reparam(rows, output_dir / "reparam.png")
    print(format_reparam(rows))
    print(f"\nwritten: {output_dir / 'reparam.json'}, {output_dir / 'reparam.png'} ({summary['seconds']:.0f} s)")
    return summary


def by_lr(rows: list[dict], reparam: bool) -> list[tuple[float, float, float, float]]:
    """(lr, mean, lowest, highest top-1 over seeds) for one setting, by lr."""
    points = []
    for lr in sorted({r["lr"] for r in rows}):
        values = [r["top1"] for r in rows if r["lr"] == lr and r["reparam"] == reparam]
        if values:
            points.append((lr, sum(values) / len(values), min(values), max(values)))
    return points


def format_reparam(rows: list[dict]) -> str:
    lines = ["| peak lr of the prompts | with reparam: top-1 % (min–max) | without |", "|---|---|---|"]
    with_, without = dict((p[0], p) for p in by_lr(rows, True)), dict((p[0], p) for p in by_lr(rows, False))
    for lr in sorted(with_):
        cells = [f"{p[1]:.1f} ({p[2]:.1f}–{p[3]:.1f})" if p else "-" for p in (with_.get(lr), without.get(lr))]
        lines.append(f"| {lr:g} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def plot_reparam(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for reparam, style in ((True, "-"), (False, "--")):
        points = by_lr(rows, reparam)
        lrs, means, lows, highs = zip(*points)
        colour = COLOURS["apt"] if reparam else "tab:red"
        label = "APT with reparameterisation" if reparam else "APT without"
        ax.plot(lrs, means, style, marker="o", color=colour, label=label)
        ax.fill_between(lrs, lows, highs, color=colour, alpha=0.15)
    ax.set(xscale="log", xlabel="peak lr of the prompts (log)", ylabel="top-1 % (mean; band: seeds)")
    ax.set_title(f"Reparameterisation vs lr ({os.cpu_count()} cores, demo budget)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
