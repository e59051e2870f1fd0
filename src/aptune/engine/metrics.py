"""Video-level scores from per-view predictions, and the run's metric files."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from aptune.engine.runfolder import TENSORBOARD_DIR
from aptune.fileio import output_error, write_text_atomically


def video_scores(
    video_ids: torch.Tensor, view_ids: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average the softmax scores of each video's views.

    Views seen twice (a padded distributed sampler) count once.  Returns
    (video_ids, mean_probs, labels) sorted by video id.
    """
    key = video_ids.long() * (int(view_ids.max().item()) + 1 if len(view_ids) else 1) + view_ids.long()
    _, first = _unique_first(key)
    video_ids, probs, labels = video_ids[first], probs[first], labels[first]
    videos, inverse = torch.unique(video_ids, sorted=True, return_inverse=True)
    sums = torch.zeros(len(videos), probs.shape[1], dtype=torch.float64)
    sums.index_add_(0, inverse, probs.double())
    counts = torch.bincount(inverse, minlength=len(videos)).clamp_min(1)
    video_labels = torch.zeros(len(videos), dtype=torch.long)
    video_labels[inverse] = labels.long()
    return videos, (sums / counts[:, None]).float(), video_labels


def _unique_first(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    unique, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((len(unique),), len(key), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(key)), reduce="amin")
    return unique, first


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """top-1, top-5, per-class accuracy and the confusion matrix (rows: true, cols: predicted)."""
    count = len(labels)
    if count == 0:
        return {
            "top1": float("nan"),
            "top5": float("nan"),
            "per_class_accuracy": [None] * num_classes,
            "confusion": [[0] * num_classes for _ in range(num_classes)],
            "num_videos": 0,
        }
    k = min(5, num_classes)
    topk = probs.topk(k, dim=1).indices
    top1 = (topk[:, 0] == labels).float().mean().item() * 100
    top5 = (topk == labels[:, None]).any(dim=1).float().mean().item() * 100
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, topk[:, 0]), torch.ones_like(labels), accumulate=True)
    totals = confusion.sum(dim=1)
    per_class = [
        (confusion[c, c].item() / totals[c].item() * 100) if totals[c] > 0 else None for c in range(num_classes)
    ]
    return {
        "top1": top1,
        "top5": top5,
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
        "num_videos": count,
    }


class MetricsLog:
    """``metrics.jsonl``: one JSON line per logged step or evaluation, appended and flushed.

    When the ``tensorboard`` package is installed, the same numbers also go to
    TensorBoard event files in ``tensorboard/`` beside it.
    """

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.start = time.time()
        self._tensorboard = None
        self._tensorboard_tried = False

    def write(self, kind: str, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "time": round(time.time() - self.start, 3), **values}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(_finite(record)) + "\n")
        except OSError as exc:  # a full disk mid-run: one line, not a traceback
            raise output_error(self.path, exc) from None
        self._to_tensorboard(kind, values)

    def _to_tensorboard(self, kind: str, values: dict[str, Any]) -> None:
        writer = self._writer()
        if writer is None or "step" not in values:
            return
        split = values.get("split", kind)
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch"):
                writer.add_scalar(f"{split}/{key}", value, values["step"])
        writer.flush()

    def _writer(self):
        if not self._tensorboard_tried:
            self._tensorboard_tried = True
            try:  # imported here: tensorboard is optional, and slow to import
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return None
            self._tensorboard = SummaryWriter(str(self.path.parent / TENSORBOARD_DIR))
        return self._tensorboard

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a line cut short by a kill mid-write
            if isinstance(record, dict) and isinstance(record.get("kind"), str):
                records.append(record)
        return records

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the history is not doubled."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step and not r.get("final")]
        write_text_atomically(self.path, "".join(json.dumps(_finite(r)) + "\n" for r in kept))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
