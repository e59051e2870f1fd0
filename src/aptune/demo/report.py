"""The demo's outputs: the printed table (with what each row means), demo.md, demo.json and the figures."""

from __future__ import annotations

import json
import time
from pathlib import Path

from aptune.bench import machine_description
from aptune.demo.prompt_cost import BASELINE, COST_METHODS, REFERENCE_ARCH, overhead
from aptune.engine.plots import pyplot, save_figure

# what each row of the table is, in one line: what trains and how the features are read
ROW_MEANINGS = {
    "linear": "the backbone frozen; only the classifier (fc_norm + linear head) trains, on the mean of the "
    "last block's tokens",
    "vpt-deep": "the backbone frozen; P prompt tokens, new before every block, train with the classifier; "
    "the mean is over the video's tokens only",
    "apt": "the backbone frozen; P prompt keys and values per block, appended in attention only, train "
    "with the classifier; mean of the tokens",
    "full": "every weight of the backbone trains with the classifier; mean of the tokens",
}
COLOURS = {"linear": "tab:gray", "vpt-deep": "tab:orange", "apt": "tab:blue", "full": "tab:green"}


def table_legend(rows: list[dict], chance: float | None) -> str:
    """The lines printed above the table."""
    lines = [f"- {r['method']}: {ROW_MEANINGS.get(r['method'], 'see docs/demo.md')}" for r in rows]
    if chance is not None:
        lines.append(f"- chance: {chance:.1f} % top-1 (every class equally likely)")
    return "\n".join(lines)


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


def write_outputs(
    rows: list[dict], output_dir: Path, quick: bool, chance: float | None = None, prompt_rows: list[dict] | None = None
) -> None:
    table = format_table(rows)
    legend = table_legend(rows, chance)
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    machine = machine_description()
    summary = {"date": stamp, "machine": machine, "quick": quick, "chance_top1": chance, "rows": rows}
    summary["prompt_cost"] = prompt_rows or []
    (output_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    figures = "![demo](demo.png)\n"
    written = [output_dir / "demo.md", output_dir / "demo.json", plot_demo(rows, output_dir / "demo.png", chance)]
    if prompt_rows:
        written.append(plot_prompt_cost(prompt_rows, output_dir / "demo_prompts.png"))
        figures += "\n![the cost of prompts](demo_prompts.png)\n"
    (output_dir / "demo.md").write_text(
        f"# aptune demo ({stamp}{', quick' if quick else ''})\n\n{legend}\n\n{table}\n\n{figures}"
    )
    print(f"{legend}\n\n{table}")
    print(f"\nwritten: {', '.join(str(path) for path in written)}")


def plot_demo(rows: list[dict], path: Path, chance: float | None = None) -> Path:
    plt = pyplot()
    colours = COLOURS
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


def plot_prompt_cost(rows: list[dict], path: Path) -> Path:
    """Multiply-adds (both backbones) and latency (the demo's) over the frozen backbone, against P."""
    plt = pyplot()
    fig, (ax_macs, ax_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in COST_METHODS:
        for arch, style, label in (("demo", "-", "demo backbone"), (REFERENCE_ARCH, "--", "ViT-B 16×224, counted")):
            points = overhead(rows, method, arch, "gmacs")
            if points:
                ax_macs.plot(*zip(*points), style, marker="o", color=COLOURS[method], label=f"{method}, {label}")
        timed = overhead([r for r in rows if r["latency_ms"] is not None], method, "demo", "latency_ms")
        if timed:
            ax_time.plot(*zip(*timed), "-", marker="o", color=COLOURS[method], label=f"{method}, demo backbone")
    base = next((r for r in rows if r["arch"] == "demo" and r["method"] == BASELINE), None)
    for ax, what in ((ax_macs, "multiply-adds"), (ax_time, "latency per clip")):
        ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
        ax.set(xscale="log", xlabel="prompts P (log)", ylabel=f"{what} / frozen backbone's")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_macs.set_title("Counted cost of P prompts")
    title = "Measured latency (batch 1)"
    if base is not None:
        title += f": frozen backbone {base['latency_ms']:.1f} ms"
    ax_time.set_title(title)
    return save_figure(fig, path)
