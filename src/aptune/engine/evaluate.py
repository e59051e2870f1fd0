"""Multi-view evaluation and the run's final outputs (metrics.json, plots, report.md).

Each rank scores its share of the views; the per-view softmax scores are
gathered as tensors and averaged per video, so the distributed result equals
the single-process one.  A video none of whose views could be decoded is
counted as skipped, never silently replaced.

The final outputs are written atomically; ``metrics.json`` is strict JSON (a
split with no decodable video has ``top1``/``top5`` null, never NaN), and class
names in ``report.md`` are escaped so that a name cannot carry terminal codes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from aptune.adapters import printable
from aptune.data import BadVideoLog
from aptune.engine import distributed as dist_utils
from aptune.engine import plots
from aptune.engine.metrics import classification_metrics, video_scores
from aptune.engine.runfolder import (
    CONFUSION_PLOT,
    CURVES_PLOT,
    METRICS_NAME,
    PER_CLASS_PLOT,
    PLOTS_DIR,
    REPORT_NAME,
)
from aptune.engine.runtime import autocast, progress_bar
from aptune.fileio import make_folder, output_error, write_json_atomically, write_text_atomically
from aptune.models.vit import count_parameters

try:
    from aptune.flops import count_macs
except ImportError:  # a PyTorch without torch.utils.flop_counter: the report says None
    count_macs = None

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(
    model, eval_data, device: torch.device, precision: str, num_classes: int, desc: str = "eval"
) -> dict[str, Any]:
    """Top-1/top-5, per-class accuracy and confusion over ``eval_data`` (an EvalData)."""

    was_training = model.training
    model.eval()
    info = dist_utils.current()
    video_ids, view_ids, probs, labels = [], [], [], []
    bad_videos = BadVideoLog(eval_data.num_videos, eval_data.max_bad_fraction, desc.split()[0])
    progress = progress_bar(len(eval_data.loader), desc, info.is_main)
    try:
        # local work only (no collective): a rank that fails here stops every rank at its end
        with dist_utils.together(f"during {desc}"):
            for batch in eval_data.loader:
                bad_videos.record(batch.failures)
                if batch.clips.shape[0]:
                    with autocast(precision, device):
                        logits = model(batch.clips.to(device, non_blocking=True))
                    probs.append(logits.float().softmax(dim=-1).cpu())
                    video_ids.append(batch.video_indices)
                    view_ids.append(batch.view_indices)
                    labels.append(batch.labels)
                progress.update(1)
    finally:
        progress.close()
        model.train(was_training)
    rows = _stack(video_ids, view_ids, labels, probs, num_classes)
    rows = dist_utils.gather_rows(rows.to(device)).cpu()
    videos, video_probs, video_labels = video_scores(
        rows[:, 0].long(), rows[:, 1].long(), rows[:, 3:], rows[:, 2].long()
    )
    result = classification_metrics(video_probs, video_labels, num_classes)
    result["skipped_videos"] = eval_data.num_videos - len(videos)
    result["video_ids"] = videos.tolist()
    result["probs"] = video_probs
    result["labels"] = video_labels
    return result


def _stack(video_ids, view_ids, labels, probs, num_classes: int) -> torch.Tensor:
    """One float64 row per view: video, view, label, probabilities (exact for ids < 2**53)."""
    if not probs:
        return torch.zeros(0, 3 + num_classes, dtype=torch.float64)
    meta = torch.stack([torch.cat(video_ids), torch.cat(view_ids), torch.cat(labels)], dim=1)
    return torch.cat([meta.double(), torch.cat(probs).double()], dim=1)


def write_final_outputs(
    model,
    result: dict[str, Any],
    summary: dict[str, Any],
    class_names: list[str],
    output_dir: Path,
    records: list[dict],
    config,
) -> dict[str, Any]:
    """metrics.json, PNG plots and report.md for a finished run."""

    trainable, total = count_parameters(model)
    metrics = {
        **summary,
        "trainable_params": trainable,
        "total_params": total,
        "gflops_per_view": gflops_per_view(model),
        "per_class_accuracy": dict(zip(class_names, result["per_class_accuracy"])),
        "confusion": result["confusion"],
        "class_names": list(class_names),
    }
    write_json_atomically(output_dir / METRICS_NAME, metrics)
    plot_dir = make_folder(output_dir / PLOTS_DIR)
    shown = [printable(name) for name in class_names]
    figures = {
        "curves": _plot(plots.plot_curves, records, plot_dir / CURVES_PLOT),
        "confusion": _plot(plots.plot_confusion, result["confusion"], shown, plot_dir / CONFUSION_PLOT),
        "per_class": _plot(plots.plot_per_class, result["per_class_accuracy"], shown, plot_dir / PER_CLASS_PLOT),
    }
    write_text_atomically(output_dir / REPORT_NAME, render_report(metrics, figures, output_dir, config))
    return metrics


def _plot(draw, *args) -> Path:
    """A plot, with a full disk or a read-only folder as a one-line OutputError."""
    path = args[-1]
    try:
        return draw(*args)
    except OSError as exc:
        raise output_error(path, exc) from None


def gflops_per_view(model) -> float | None:
    """Multiply-add count of one view, in G (the VideoMAE/APT papers' 'FLOPs')."""
    if count_macs is None:
        return None
    config = model.config
    shape = (1, config.in_chans, config.num_frames, config.img_size, config.img_size)
    return round(count_macs(model, shape) / 1e9, 4)


def render_report(metrics: dict[str, Any], figures: dict[str, Path], output_dir: Path, config) -> str:
    weakest = sorted(((v, k) for k, v in metrics["per_class_accuracy"].items() if v is not None))[:5]
    lines = [
        f"# {metrics['method']} on {config.data.format} ({config.model.arch or 'custom arch'})",
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 | {_percent(metrics['top1'])} |",
        f"| top-5 | {_percent(metrics['top5'])} |",
        f"| videos evaluated | {metrics['num_videos']} |",
        f"| videos skipped (unreadable) | {metrics['skipped_videos']} |",
        f"| trainable / total parameters | {metrics['trainable_params']:,} / {metrics['total_params']:,} |",
        f"| GFLOPs per view | {metrics['gflops_per_view']} |",
        f"| epochs | {metrics['epochs'] if metrics['epochs'] is not None else '-'} |",
        f"| training time | {_seconds(metrics['train_seconds'])} |",
        f"| test views per video | {config.data.test_num_segment} x {config.data.test_num_crop} |",
        "",
        ("Weakest classes: " + ", ".join(f"{printable(name)} ({acc:.0f} %)" for acc, name in weakest))
        if weakest
        else "No video could be evaluated: there is no accuracy to report.",
        "",
    ]
    for title, path in figures.items():
        lines += [f"![{title}]({path.relative_to(output_dir)})", ""]
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "- (0 videos evaluated)"
    return f"{value:.2f} %"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"
