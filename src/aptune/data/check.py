"""``aptune data check``: validate every split's annotations, decode a clip of every
video (in parallel), and summarise what is usable.

Each video is decoded at its *last* test window, so a file cut short is caught even
when its header still promises the full length.  A split is usable when at most
``data.max_bad_fraction`` of its videos are bad, as training and evaluation demand of
each split; the dataset is usable when every split is.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset

from aptune.data.annotations import SPLIT_NAMES, load_annotations
from aptune.data.datasets import _decode_short_side
from aptune.data.decode import DecodeError, open_video
from aptune.data.sampling import clip_indices, resolve_sampling

__all__ = ["check_dataset", "format_summary"]


@dataclass
class _Probe(Dataset):
    paths: list[str]
    sampling: str
    num_frames: int
    sampling_rate: int
    max_short_side: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            with open_video(path, threads=1, max_short_side=self.max_short_side) as video:
                total = video.num_frames
                indices = clip_indices(
                    self.sampling,
                    total,
                    self.num_frames,
                    self.sampling_rate,
                    train=False,
                    num_segments=2,
                    segment=1,
                )
                video.get_frames(indices)
                info = video.info()
            return {
                "path": path,
                "status": "ok",
                "frames": info.num_frames,
                "fps": info.fps,
                "size": f"{info.width}x{info.height}",
            }
        except DecodeError as exc:
            status = "missing" if str(exc) == "file not found" else "unreadable"
            return {"path": path, "status": status, "reason": str(exc)}


def check_dataset(
    data, num_workers: int | None = None, splits: Sequence[str] = SPLIT_NAMES, progress: bool = True
) -> dict:
    """Summary dict of a dataset described by ``data`` (a DataConfig).

    Raises :class:`~aptune.errors.DataError` for annotation problems; bad videos are
    counted, not raised.  ``summary["usable"]`` says whether some video decodes and the
    bad fraction of every split is within ``data.max_bad_fraction``.
    """
    from tqdm import tqdm

    sampling = resolve_sampling(getattr(data, "sampling", "auto"), data.format)
    split_samples = {
        name: load_annotations(data.format, data.root, name, data.split, data.annotations) for name in splits
    }
    class_names = next(iter(split_samples.values())).class_names
    labels_of: dict[str, int] = {}
    for split_annotations in split_samples.values():
        for path, label in split_annotations.samples:
            labels_of.setdefault(path, label)
    paths = list(labels_of)
    workers = data.num_workers if num_workers is None else num_workers
    # frames as the datasets decode them: scaled down past 4x the model's input
    max_short_side = _decode_short_side(getattr(data, "input_size", None), getattr(data, "short_side_size", None))
    loader = DataLoader(
        _Probe(paths, sampling, data.num_frames, data.sampling_rate, max_short_side),
        batch_size=None,
        num_workers=workers,
    )
    results: dict[str, dict] = {}
    start = time.perf_counter()
    for result in tqdm(loader, total=len(paths), desc="decoding", unit="video", disable=not progress):
        results[result["path"]] = result
    elapsed = time.perf_counter() - start
    return _summarise(data, split_samples, class_names, results, elapsed)


def _summarise(data, split_samples, class_names, results, elapsed) -> dict:
    by_status: dict[str, list[dict]] = {"ok": [], "missing": [], "unreadable": []}
    for result in results.values():
        by_status[result["status"]].append(result)
    ok = by_status["ok"]
    total = len(results)
    bad = total - len(ok)
    splits = {}
    for name, split_annotations in split_samples.items():
        samples = split_annotations.samples
        per_class = Counter(class_names[label] for _, label in samples)
        split_bad = sum(results[p]["status"] != "ok" for p, _ in samples)
        split_fraction = split_bad / len(samples) if samples else 0.0
        splits[name] = {
            "videos": len(samples),
            "bad": split_bad,
            "bad_fraction": split_fraction,
            "usable": split_bad < len(samples) and split_fraction <= data.max_bad_fraction,
            "source": split_annotations.source,
            "per_class": {c: per_class.get(c, 0) for c in class_names},
        }
    bad_fraction = bad / total if total else 0.0
    usable = bool(ok) and all(split["usable"] for split in splits.values())
    return {
        "format": data.format,
        "root": str(data.root),
        "num_classes": len(class_names),
        "class_names": class_names,
        "videos": total,
        "ok": len(ok),
        "missing": len(by_status["missing"]),
        "unreadable": len(by_status["unreadable"]),
        "missing_files": [r["path"] for r in by_status["missing"]],
        "unreadable_files": {r["path"]: r["reason"] for r in by_status["unreadable"]},
        "bad_fraction": bad_fraction,
        "max_bad_fraction": data.max_bad_fraction,
        "usable": usable,
        "splits": splits,
        "mean_frames": sum(r["frames"] for r in ok) / len(ok) if ok else None,
        "resolutions": dict(Counter(r["size"] for r in ok).most_common()),
        "fps": dict(Counter(f"{r['fps']:.2f}" for r in ok).most_common()),
        "seconds": elapsed,
        "clips_per_second": total / elapsed if elapsed > 0 else 0.0,
    }


def format_summary(summary: dict, show: int = 5) -> str:
    """Human-readable multi-line report of :func:`check_dataset`'s summary."""
    lines = [
        f"{summary['format']} dataset at {summary['root']}: {summary['videos']} videos, "
        f"{summary['num_classes']} classes"
    ]
    for name, split in summary["splits"].items():
        counts = sorted(split["per_class"].values())
        spread = f"{counts[0]}-{counts[-1]} per class" if counts else ""
        lines.append(f"  {name:<5} {split['videos']:>7} videos ({spread}; {split['bad']} bad)  from {split['source']}")
        empty = [c for c, n in split["per_class"].items() if n == 0]
        if empty:
            lines.append(f"        no videos for: {', '.join(empty[:show])}" + (" ..." if len(empty) > show else ""))
    lines.append(
        f"  ok {summary['ok']}, missing {summary['missing']}, "
        f"unreadable {summary['unreadable']} "
        f"({summary['bad_fraction']:.2%} bad, limit {summary['max_bad_fraction']:.2%})"
    )
    for path in summary["missing_files"][:show]:
        lines.append(f"    missing: {path}")
    for path, reason in list(summary["unreadable_files"].items())[:show]:
        lines.append(f"    unreadable: {path}: {reason}")
    mean_frames = summary["mean_frames"]
    lines.append("  mean frames " + ("-" if mean_frames is None else f"{mean_frames:.1f}"))
    lines.append("  resolution " + _histogram(summary["resolutions"], show))
    lines.append("  fps        " + _histogram(summary["fps"], show))
    lines.append(f"  decoding   {summary['clips_per_second']:.1f} clips/s ({summary['seconds']:.1f} s)")
    lines.append("usable" if summary["usable"] else f"NOT usable: {_why_not_usable(summary)}")
    return "\n".join(lines)


def _why_not_usable(summary: dict) -> str:
    if summary["ok"] == 0:
        return f"none of the {summary['videos']} videos could be decoded"
    limit = summary["max_bad_fraction"]
    failing = [
        f"{name}: {split['bad']} of {split['videos']} videos bad ({split['bad'] / max(1, split['videos']):.2%})"
        for name, split in summary["splits"].items()
        if not split.get("usable", True)
    ]
    return f"too many bad videos (limit {limit:.2%}): " + "; ".join(failing)


def _histogram(counts: dict, show: int) -> str:
    items = list(counts.items())
    text = ", ".join(f"{key}: {value}" for key, value in items[:show])
    return text + (f", ... ({len(items) - show} more)" if len(items) > show else "") if items else "-"
