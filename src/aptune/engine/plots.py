"""PNG plots of a run: curves, confusion matrix, per-class accuracy (matplotlib, no display)."""

from __future__ import annotations

import functools
from pathlib import Path

from aptune.fileio import write_atomically


@functools.cache
def pyplot():
    """matplotlib's pyplot on the Agg backend (no display).  Imported on the first plot, not
    with this module: it takes longer to import than the rest of a command's start-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG (atomically) and free ``fig`` (figures are never shown)."""
    try:
        fig.tight_layout()
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        pyplot().close(fig)
    return Path(path)


def plot_curves(records: list[dict], path: Path) -> Path:
    steps = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval" and r.get("top1") is not None]
    fig, (ax_loss, ax_acc) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    if steps:
        ax_loss.plot([r["epoch_float"] for r in steps], [r["loss"] for r in steps], lw=1)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    if evals:
        epochs = [r["epoch"] for r in evals]
        ax_acc.plot(epochs, [r["top1"] for r in evals], marker="o", label="top-1")
        ax_acc.plot(epochs, [r["top5"] for r in evals], marker="s", label="top-5")
        ax_acc.legend()
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path) -> Path:
    size = max(4.0, min(16.0, 0.35 * len(class_names) + 2))
    fig, ax = pyplot().subplots(figsize=(size, size))
    rows = [[v / max(1, sum(row)) for v in row] for row in confusion]
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if len(class_names) <= 40:
        ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def plot_per_class(accuracy: list[float | None], class_names: list[str], path: Path) -> Path:
    order = sorted(range(len(accuracy)), key=lambda i: -1 if accuracy[i] is None else accuracy[i])
    height = max(3.0, min(24.0, 0.22 * len(order) + 1))
    fig, ax = pyplot().subplots(figsize=(6, height))
    ax.barh([class_names[i] for i in order], [accuracy[i] or 0.0 for i in order], color="tab:blue")
    ax.set(xlabel="top-1 accuracy (%)", title="Per-class accuracy", xlim=(0, 100))
    ax.tick_params(axis="y", labelsize=7)
    return save_figure(fig, path)
