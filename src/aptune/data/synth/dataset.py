"""Writing a synthetic dataset: checked arguments, one render-and-encode job per video (in
worker processes if asked), and the files of each annotation layout (list, UCF101, HMDB51,
Something-Something v2, Kinetics) exactly as the real datasets lay them out."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from aptune.data.synth.scenes import MOTIONS, render_motion_video
from aptune.data.synth.video import FPS_RANGE, MAX_GOP, _output_errors, write_video
from aptune.fileio import make_folder, write_text_atomically

MAX_PIXELS_PER_VIDEO = 50_000_000  # frames x height x width: ~0.6 GB rendered
FORMAT_EXTENSIONS = {
    "list": ".avi",
    "ucf101": ".avi",
    "hmdb51": ".avi",
    "ssv2": ".webm",
    "kinetics": ".mp4",
}


@dataclass
class SyntheticDataset:
    """What :func:`make_synthetic_dataset` wrote."""

    root: Path
    format: str
    class_names: list[str]
    videos: list[tuple[Path, int]] = field(default_factory=list)  # every file with its label

    @property
    def num_videos(self) -> int:
        return len(self.videos)


def make_synthetic_dataset(
    out: str | os.PathLike,
    format: str = "list",
    num_classes: int = 10,
    per_class: int = 20,
    frames: int = 32,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    fps: float = 25,
    gop: int | None = None,
    grey: bool = False,
    variable_frame_rate: bool = False,
    rotation: int = 0,
    motions: list[str] | tuple[str, ...] | None = None,
    workers: int = 1,
) -> SyntheticDataset:
    """Write a synthetic dataset in the layout of ``format`` under ``out``.

    ``motions`` picks the classes by motion name (see :data:`MOTIONS`); by default the
    first ``num_classes``.  Disjoint motion sets give a source and a target task.

    ``gop`` sets the keyframe interval (None: the encoder's default, i.e. long GOP);
    ``grey``, ``variable_frame_rate`` and ``rotation`` make every video grey / VFR /
    display-rotated, for testing the decoder on such files.  AVI can store neither a
    variable frame rate nor a display matrix, so with those options the formats that
    normally use .avi (list, ucf101, hmdb51) write .mp4 files instead.
    ``workers`` > 1 renders in that many spawned processes (the files do not depend on it);
    a script that uses it must guard its entry point with ``if __name__ == "__main__":``.
    """
    if format not in FORMAT_EXTENSIONS:
        raise ValueError(f"unknown format {format!r} (valid: {', '.join(FORMAT_EXTENSIONS)})")
    names = dict(MOTIONS)
    motions = _chosen_motions(num_classes, motions)
    _check_arguments(per_class, frames, size, seed, fps, gop, workers)
    root = make_folder(Path(out))
    motions = list(motions)
    readable = [names[m] for m in motions]
    extension = FORMAT_EXTENSIONS[format]
    if extension == ".avi" and (variable_frame_rate or rotation):
        extension = ".mp4"
    write_kwargs = {"fps": fps, "gop": gop, "rotation": rotation}
    if variable_frame_rate:
        base = 1.0 / fps
        write_kwargs["frame_durations"] = [base * 0.6, base * 1.4, base * 0.8, base * 1.2]

    jobs: list[tuple] = []

    def render(label: int, index: int, path: Path) -> None:  # deferred: see _render_jobs
        jobs.append((motions[label], frames, size, (seed, label, index), grey, write_kwargs, path))

    writer = {
        "list": _write_list,
        "ucf101": _write_ucf101,
        "hmdb51": _write_hmdb51,
        "ssv2": _write_ssv2,
        "kinetics": _write_kinetics,
    }[format]
    dataset = SyntheticDataset(root=root, format=format, class_names=[])
    writer(root, readable, per_class, extension, render, dataset, seed)
    _render_jobs(jobs, workers)
    return dataset


def _chosen_motions(num_classes: int, motions: Sequence[str] | None) -> Sequence[str]:
    """The class motions: ``motions`` checked (known, distinct), or the first ``num_classes``."""
    names = dict(MOTIONS)
    if motions is None:
        if not 1 <= num_classes <= len(MOTIONS):
            raise ValueError(f"num_classes must be between 1 and {len(MOTIONS)}, got {num_classes}")
        motions = [m for m, _ in MOTIONS[:num_classes]]
    unknown = [m for m in motions if m not in names]
    if unknown or not motions or len(set(motions)) != len(motions):
        raise ValueError(f"motions must be distinct names from: {', '.join(names)} (got {list(motions)})")
    return motions


def _check_arguments(per_class, frames, size, seed, fps, gop, workers) -> None:
    def whole(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not (whole(per_class) and whole(frames) and per_class >= 1 and frames >= 1):
        raise ValueError(f"per_class and frames must be integers >= 1, got {per_class}, {frames}")
    if len(size) != 2 or not all(whole(side) and side >= 2 for side in size):
        raise ValueError(f"size must be (height, width) of integers >= 2, got {size}")
    if frames * size[0] * size[1] > MAX_PIXELS_PER_VIDEO:
        raise ValueError(
            f"frames x height x width must be at most {MAX_PIXELS_PER_VIDEO:,} (videos are "
            f"rendered in memory), got {frames} x {size[0]} x {size[1]}"
        )
    if not (whole(seed) and seed >= 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed}")
    low, high = FPS_RANGE
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and low <= fps <= high):
        raise ValueError(f"fps must be between {low:g} and {high:g}, got {fps}")
    if gop is not None and not (whole(gop) and 1 <= gop <= MAX_GOP):
        raise ValueError(f"gop must be None or an integer between 1 and {MAX_GOP}, got {gop}")
    if not (whole(workers) and workers >= 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers}")


def _render_jobs(jobs: list[tuple], workers: int) -> None:
    """Render and encode every video; each is seeded by its own (seed, label, index), so the
    files are the same whatever the number of worker processes."""
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            _render_one(*job)
        return
    # spawn, not fork: the caller may hold torch threads, which fork would copy mid-flight
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_render_one, *job) for job in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # do not render the rest before raising
            raise


def _render_one(
    motion: str,
    frames: int,
    size: tuple[int, int],
    seed: tuple[int, int, int],
    grey: bool,
    write_kwargs: dict,
    path: Path,
) -> None:
    video = render_motion_video(motion, frames, size, np.random.default_rng(list(seed)))
    if grey:
        video = video.mean(axis=-1).astype(np.uint8)
    with _output_errors(path):
        write_video(path, video, **write_kwargs)


def _split_of(index: int, per_class: int) -> str:
    """A 60/20/20 train/val/test split by position within the class."""
    position = (index + 0.5) / per_class
    return "train" if position < 0.6 else ("val" if position < 0.8 else "test")


def _write_list(root, names, per_class, ext, render, dataset, seed):
    dataset.class_names = list(names)
    write_text_atomically(root / "classes.txt", "".join(f"{name}\n" for name in names))
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        folder = name.replace(" ", "_")
        for index in range(per_class):
            relative = f"videos/{folder}/{folder}_{index:03d}{ext}"
            render(label, index, root / relative)
            dataset.videos.append((root / relative, label))
            lines[_split_of(index, per_class)].append(f"{relative} {label}\n")
    for split, rows in lines.items():
        write_text_atomically(root / f"{split}.csv", "".join(rows))


def _camel(name: str) -> str:
    return "".join(word.capitalize() for word in name.split())


def _write_ucf101(root, names, per_class, ext, render, dataset, seed):
    classes = [_camel(name) for name in names]
    dataset.class_names = classes
    lists = make_folder(root / "ucfTrainTestlist")
    write_text_atomically(lists / "classInd.txt", "".join(f"{i + 1} {c}\r\n" for i, c in enumerate(classes)))
    train: dict[int, list[str]] = {1: [], 2: [], 3: []}
    test: dict[int, list[str]] = {1: [], 2: [], 3: []}
    for label, name in enumerate(classes):
        clips_in_group: dict[int, int] = {}
        for index in range(per_class):
            group = index * 25 // per_class + 1  # spread videos over the 25 groups
            clips_in_group[group] = clips_in_group.get(group, 0) + 1
            relative = f"{name}/v_{name}_g{group:02d}_c{clips_in_group[group]:02d}{ext}"
            render(label, index, root / "UCF-101" / relative)
            dataset.videos.append((root / "UCF-101" / relative, label))
            for split in (1, 2, 3):
                # UCF101's official rule: split s tests groups 7(s-1)+1 .. 7s
                if 7 * (split - 1) < group <= 7 * split:
                    test[split].append(f"{relative}\r\n")
                else:
                    train[split].append(f"{relative} {label + 1}\r\n")
    for split in (1, 2, 3):
        write_text_atomically(lists / f"trainlist0{split}.txt", "".join(train[split]))
        write_text_atomically(lists / f"testlist0{split}.txt", "".join(test[split]))


def _write_hmdb51(root, names, per_class, ext, render, dataset, seed):
    classes = [name.replace(" ", "_") for name in names]
    dataset.class_names = sorted(classes)
    splits = make_folder(root / "testTrainMulti_7030_splits")
    for label, name in enumerate(classes):
        files = []
        for index in range(per_class):
            filename = f"{name}_clip_{index:03d}{ext}"
            render(label, index, root / name / filename)
            files.append(filename)
            dataset.videos.append((root / name / filename, dataset.class_names.index(name)))
        for split in (1, 2, 3):
            rows = []
            for index, filename in enumerate(files):
                tag = 2 if (index + split) % 3 == 0 else 1
                if per_class >= 6 and index == per_class - split:
                    tag = 0  # unused in this split, as in the real files
                rows.append(f"{filename} {tag} \n")
            write_text_atomically(splits / f"{name}_test_split{split}.txt", "".join(rows))


def _write_ssv2(root, names, per_class, ext, render, dataset, seed):
    templates = [f"Something {name}" for name in names]
    dataset.class_names = templates
    labels_dir = make_folder(root / "labels")
    labels = {template: str(index) for index, template in enumerate(templates)}
    write_text_atomically(labels_dir / "labels.json", json.dumps(labels, indent=1))
    train, validation = [], []
    video_id = 1000 + seed * 100_000
    for label, template in enumerate(templates):
        for index in range(per_class):
            video_id += 1
            path = root / "20bn-something-something-v2" / f"{video_id}{ext}"
            render(label, index, path)
            dataset.videos.append((path, label))
            entry = {
                "id": str(video_id),
                "label": template.replace("Something", "A ball"),
                "template": template.replace("Something", "[Something]"),
                "placeables": ["a ball"],
            }
            (validation if _split_of(index, per_class) == "test" else train).append(entry)
    write_text_atomically(labels_dir / "train.json", json.dumps(train, indent=1))
    write_text_atomically(labels_dir / "validation.json", json.dumps(validation, indent=1))
    write_text_atomically(labels_dir / "test.json", json.dumps([], indent=1))


def _youtube_id(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=11))


def _write_kinetics(root, names, per_class, ext, render, dataset, seed):
    dataset.class_names = sorted(names)
    rows: dict[str, list[list[str]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        for index in range(per_class):
            rng = np.random.default_rng([seed, label, index, 7])
            youtube_id, start = _youtube_id(rng), int(rng.integers(0, 300))
            split = _split_of(index, per_class)
            path = root / split / name / f"{youtube_id}_{start:06d}_{start + 10:06d}{ext}"
            render(label, index, path)
            dataset.videos.append((path, dataset.class_names.index(name)))
            rows[split].append([name, youtube_id, str(start), str(start + 10), split])
    for split, filename in (("train", "train.csv"), ("val", "validate.csv"), ("test", "test.csv")):
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerows(rows[split])
        write_text_atomically(root / filename, text.getvalue())
