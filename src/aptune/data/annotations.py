"""Annotation formats -> one in-memory form: ``Annotations(samples, class_names)``.

Parsers for VideoMAE/APT list files and the native layouts of UCF101, HMDB51,
Something-Something-v2 and Kinetics.  Every problem with an annotation file (a
malformed line, an unknown class, a label out of range, a missing split file) is a
:class:`~aptune.errors.DataError` naming the file and line, raised before any
training starts.  Video files themselves are not opened here; a missing video is
found (and counted) when it is decoded.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from aptune.errors import DataError

__all__ = ["Sample", "Annotations", "load_annotations", "SPLIT_NAMES"]

SPLIT_NAMES = ("train", "val", "test")


class Sample(NamedTuple):
    path: str
    label: int


@dataclass
class Annotations:
    """The videos of one split with their 0-based labels, and every class name."""

    samples: list[Sample]
    class_names: list[str]
    source: str = ""  # the annotation file(s) read, for messages

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)


def load_annotations(
    format: str,
    root: str | os.PathLike,
    split_name: str,
    split: int = 1,
    annotations: str | os.PathLike | None = None,
) -> Annotations:
    """Read the ``split_name`` ("train" | "val" | "test") videos of a dataset.

    ``split`` picks the official split (1-3) for UCF101 and HMDB51;
    ``annotations`` is the folder holding list/split/label files when they are not
    under ``root``.  Datasets without a validation split use the test split as
    validation (UCF101, HMDB51, list files without ``val.csv``); SSv2 and Kinetics
    use their validation set as test set when there is no separate test file.
    """
    if split_name not in SPLIT_NAMES:
        raise DataError(f"split name must be one of {', '.join(SPLIT_NAMES)}, got {split_name!r}")
    if split not in (1, 2, 3):
        raise DataError(f"data.split must be 1, 2 or 3, got {split}")
    root = Path(root) if str(root) else Path(".")
    folder = Path(annotations) if annotations else None
    loaders = {
        "list": _load_list,
        "ucf101": _load_ucf101,
        "hmdb51": _load_hmdb51,
        "ssv2": _load_ssv2,
        "kinetics": _load_kinetics,
    }
    if format not in loaders:
        raise DataError(f"unknown data format {format!r} (valid: {', '.join(loaders)})")
    if not root.is_dir() and (folder is None or not folder.is_dir()):
        raise DataError(f"{root}: data root folder not found")
    result = loaders[format](root, split_name, split, folder)
    if not result.samples:
        raise DataError(f"{result.source}: no videos in the {split_name} split")
    return result


# ------------------------------------------------------------------------------ helpers
def _lines(path: Path):
    """(line number, stripped text) for non-empty lines; tolerant of BOM and CRLF."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def _resolve(root: Path, relative: str) -> str:
    path = Path(relative)
    return str(path if path.is_absolute() else root / path)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


def _first_existing(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if c.exists()), None)


# --------------------------------------------------------------------------- list files
def _parse_list_file(path: Path, root: Path) -> list[tuple[str, int, int]]:
    rows = []
    for number, line in _lines(path):
        if " " not in line:
            raise DataError(f"{path}:{number}: expected '<video path> <label>', got {line[:80]!r}")
        video, label_text = line.rsplit(" ", 1)  # paths may contain spaces; labels never do
        video = video.strip()
        try:
            label = int(label_text)
        except ValueError:
            raise DataError(f"{path}:{number}: label {label_text!r} is not an integer") from None
        if label < 0:
            raise DataError(f"{path}:{number}: label {label} is negative (labels are 0-based)")
        if not video:
            raise DataError(f"{path}:{number}: empty video path")
        rows.append((_resolve(root, video), label, number))
    return rows


def _load_list(root: Path, split_name: str, split: int, folder: Path | None) -> Annotations:
    folder = folder or root
    files = {name: folder / f"{name}.csv" for name in SPLIT_NAMES}
    chosen = files[split_name]
    if split_name == "val" and not chosen.is_file():
        chosen = files["test"]  # no validation list: validate on the test list
    _require(chosen, f"{split_name} list file")
    classes_file = folder / "classes.txt"
    parsed = {name: _parse_list_file(f, root) for name, f in files.items() if f.is_file()}
    if classes_file.is_file():
        class_names = [line for _, line in _lines(classes_file)]
        for name, rows in parsed.items():
            for _, label, number in rows:
                if label >= len(class_names):
                    raise DataError(
                        f"{files[name]}:{number}: label {label} out of range "
                        f"({len(class_names)} classes in {classes_file})"
                    )
    else:
        highest = max((label for rows in parsed.values() for _, label, _ in rows), default=-1)
        class_names = [str(i) for i in range(highest + 1)]
    samples = [Sample(p, label) for p, label, _ in parsed[chosen.stem]]
    return Annotations(samples, class_names, str(chosen))


# ------------------------------------------------------------------------------- UCF101
def _load_ucf101(root: Path, split_name: str, split: int, folder: Path | None) -> Annotations:
    lists = folder or _first_existing(
        [
            root / "ucfTrainTestlist",
            root / "UCF101TrainTestSplits-RecognitionTask" / "ucfTrainTestlist",
            root,
        ]
    )
    if lists is None or not (lists / "classInd.txt").is_file():
        raise DataError(
            f"{root / 'ucfTrainTestlist' / 'classInd.txt'}: UCF101 class index not found"
        )
    videos = _first_existing([root / "UCF-101", root / "UCF101", root / "videos"]) or root
    class_file = lists / "classInd.txt"
    class_names: list[str] = []
    for number, line in _lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(
                f"{class_file}:{number}: expected '<index> <ClassName>', got {line[:80]!r}"
            )
        if int(parts[0]) != len(class_names) + 1:
            raise DataError(
                f"{class_file}:{number}: class index {parts[0]} out of order "
                f"(expected {len(class_names) + 1})"
            )
        class_names.append(parts[1])
    by_name = {name.lower(): i for i, name in enumerate(class_names)}
    kind = "train" if split_name == "train" else "test"
    list_file = _require(lists / f"{kind}list0{split}.txt", f"UCF101 {kind} list for split {split}")
    samples = []
    for number, line in _lines(list_file):
        parts = line.split()
        relative = parts[0]
        if "/" not in relative:
            raise DataError(
                f"{list_file}:{number}: expected 'Class/v_Class_gXX_cYY.avi', got {line[:80]!r}"
            )
        folder_class = relative.split("/")[0]
        if folder_class.lower() not in by_name:
            raise DataError(
                f"{list_file}:{number}: unknown class {folder_class!r} (not in {class_file})"
            )
        label = by_name[folder_class.lower()]
        if kind == "train":
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(
                    f"{list_file}:{number}: expected '<path> <1-based label>', got {line[:80]!r}"
                )
            given = int(parts[1]) - 1
            if not 0 <= given < len(class_names):
                raise DataError(
                    f"{list_file}:{number}: label {parts[1]} out of range 1..{len(class_names)}"
                )
            if given != label:
                raise DataError(
                    f"{list_file}:{number}: label {parts[1]} ({class_names[given]}) "
                    f"does not match the folder {folder_class!r}"
                )
        elif len(parts) != 1:
            raise DataError(
                f"{list_file}:{number}: expected a single video path, got {line[:80]!r}"
            )
        samples.append(Sample(str(videos / relative), label))
    return Annotations(samples, class_names, str(list_file))


# ------------------------------------------------------------------------------- HMDB51
_HMDB_SPLIT = re.compile(r"^(?P<name>.+)_test_split(?P<split>[123])\.txt$")


def _find_hmdb_splits(root: Path, folder: Path | None) -> Path:
    candidates = (
        [folder]
        if folder
        else [
            root / "testTrainMulti_7030_splits",
            root / "splits",
            root / "test_train_splits",
            root / "annotations",
            root,
        ]
    )
    for candidate in candidates:
        if candidate and candidate.is_dir() and any(candidate.glob("*_test_split1.txt")):
            return candidate
    where = folder or root / "testTrainMulti_7030_splits"
    raise DataError(f"{where}: no HMDB51 split files (<class>_test_split1.txt) found")


def _load_hmdb51(root: Path, split_name: str, split: int, folder: Path | None) -> Annotations:
    split_dir = _find_hmdb_splits(root, folder)
    files: dict[int, dict[str, Path]] = {1: {}, 2: {}, 3: {}}
    for path in split_dir.iterdir():
        match = _HMDB_SPLIT.match(path.name)
        if match:
            files[int(match["split"])][match["name"]] = path
    class_names = sorted(set().union(*(f.keys() for f in files.values())))
    for name in class_names:
        if name not in files[split]:
            raise DataError(
                f"{split_dir / f'{name}_test_split{split}.txt'}: split file missing "
                f"for class {name!r}"
            )
    videos = _first_existing([root / "hmdb51_org", root / "videos", root / "hmdb51"])
    if videos is None or not (videos / class_names[0]).is_dir():
        videos = root
    wanted = 1 if split_name == "train" else 2
    samples = []
    for label, name in enumerate(class_names):
        path = files[split][name]
        for number, line in _lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{path}:{number}: expected '<video> <0|1|2>', got {line[:80]!r}")
            if int(parts[1]) == wanted:
                samples.append(Sample(str(videos / name / parts[0]), label))
    return Annotations(samples, class_names, str(split_dir / f"*_test_split{split}.txt"))


# --------------------------------------------------------------------------------- SSv2
def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def _json_entry_lines(path: Path) -> list[int]:
    """Line number where each top-level list entry starts, for error messages."""
    lines, depth, line, in_string, escape = [], 0, 1, False, False
    for char in path.read_text(encoding="utf-8-sig"):
        if char == "\n":
            line += 1
        if in_string:
            escape = not escape and char == "\\"
            if char == '"' and not escape:
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth == 2:
                lines.append(line)
        elif char in "]}":
            depth -= 1
    return lines


def _load_ssv2(root: Path, split_name: str, split: int, folder: Path | None) -> Annotations:
    labels_dir = folder or _first_existing([root / "labels", root / "annotations"]) or root
    labels_file = _require(labels_dir / "labels.json", "SSv2 labels.json")
    mapping = _read_json(labels_file)
    if not isinstance(mapping, dict):
        raise DataError(f"{labels_file}:1: expected an object mapping template to id")
    class_names = [""] * len(mapping)
    for template, index_text in mapping.items():
        try:
            index = int(index_text)
        except (TypeError, ValueError):
            raise DataError(
                f"{labels_file}: id {index_text!r} of {template!r} is not an integer"
            ) from None
        if not 0 <= index < len(mapping) or class_names[index]:
            raise DataError(
                f"{labels_file}: id {index} of {template!r} is duplicated or out of range"
            )
        class_names[index] = template
    filename = "train.json" if split_name == "train" else "validation.json"
    split_file = _require(labels_dir / filename, f"SSv2 {filename}")
    entries = _read_json(split_file)
    if not isinstance(entries, list):
        raise DataError(f"{split_file}:1: expected a list of entries")
    videos = _first_existing([root / "20bn-something-something-v2", root / "videos"]) or root
    lookup = {name: i for i, name in enumerate(class_names)}
    samples, entry_lines = [], None
    for position, entry in enumerate(entries):
        problem = None
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            problem = "entry needs 'id' and 'template'"
        else:
            template = str(entry["template"]).replace("[", "").replace("]", "")
            if template not in lookup:
                problem = f"unknown class {template!r} (not in {labels_file.name})"
        if problem:
            entry_lines = entry_lines or _json_entry_lines(split_file)
            line = entry_lines[position] if position < len(entry_lines) else "?"
            raise DataError(f"{split_file}:{line}: entry {position}: {problem}")
        samples.append(Sample(str(videos / f"{entry['id']}.webm"), lookup[template]))
    return Annotations(samples, class_names, str(split_file))


# ----------------------------------------------------------------------------- Kinetics
_KINETICS_FILES = {
    "train": ("train.csv",),
    "val": ("validate.csv", "val.csv"),
    "test": ("test.csv",),
}


def _kinetics_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        needed = {"label", "youtube_id", "time_start", "time_end"}
        if header is None or not needed <= {h.strip() for h in header}:
            raise DataError(
                f"{path}:1: expected header with label,youtube_id,time_start,time_end,split"
            )
        header = [h.strip() for h in header]
        rows = []
        for number, values in enumerate(reader, start=2):
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(
                    f"{path}:{number}: expected {len(header)} fields, got {len(values)}"
                )
            rows.append((number, dict(zip(header, (v.strip() for v in values)))))
    return rows


def _kinetics_file(folder: Path, split_name: str) -> Path | None:
    return _first_existing([folder / name for name in _KINETICS_FILES[split_name]])


def _load_kinetics(root: Path, split_name: str, split: int, folder: Path | None) -> Annotations:
    folder = folder or _first_existing([root / "annotations", root / "kinetics400"]) or root
    if not any(_kinetics_file(folder, s) for s in SPLIT_NAMES) and folder != root:
        folder = root
    train_file = _kinetics_file(folder, "train")
    if train_file is None:
        raise DataError(
            f"{folder / 'train.csv'}: Kinetics train.csv not found (it defines the classes)"
        )
    chosen = _kinetics_file(folder, split_name)
    if chosen is None and split_name == "test":
        chosen = _kinetics_file(folder, "val")  # test on the validation set, as is common
    if chosen is None:
        raise DataError(
            f"{folder / _KINETICS_FILES[split_name][0]}: Kinetics {split_name} file not found"
        )
    train_rows = _kinetics_rows(train_file)
    class_names = sorted({row["label"] for _, row in train_rows})
    lookup = {name: i for i, name in enumerate(class_names)}
    rows = train_rows if chosen == train_file else _kinetics_rows(chosen)
    entries = []
    for number, row in rows:
        if row["label"] not in lookup:
            raise DataError(
                f"{chosen}:{number}: unknown class {row['label']!r} (not in {train_file.name})"
            )
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except ValueError:
            raise DataError(f"{chosen}:{number}: time_start/time_end must be numbers") from None
        filename = f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
        split_dir = row.get("split") or split_name
        entries.append((row["label"], split_dir, filename))
    layout = _kinetics_layout(root, chosen.stem, split_name, entries)
    samples = [
        Sample(str(layout(label, split_dir, filename)), lookup[label])
        for label, split_dir, filename in entries
    ]
    return Annotations(samples, class_names, str(chosen))


def _kinetics_layout(root: Path, stem: str, split_name: str, entries):
    """Find how videos are laid out by probing the first entries, then use it for all."""

    def split_dirs(split_dir: str) -> list[Path]:
        names = dict.fromkeys(
            [
                split_dir,
                stem,
                split_name,
                "val" if split_name == "val" else split_name,
                "validate" if split_name == "val" else split_name,
            ]
        )
        return [root / n for n in names]

    layouts = [
        lambda label, s, f: [d / label / f for d in split_dirs(s)],
        lambda label, s, f: [d / label.replace(" ", "_") / f for d in split_dirs(s)],
        lambda label, s, f: [d / f for d in split_dirs(s)],
        lambda label, s, f: [root / label / f, root / label.replace(" ", "_") / f],
        lambda label, s, f: [root / f],
    ]
    for label, split_dir, filename in entries[:50]:
        for layout in layouts:
            for variant, candidate in enumerate(layout(label, split_dir, filename)):
                if candidate.is_file():
                    return lambda lab, s, f, layout=layout, variant=variant: layout(lab, s, f)[
                        variant
                    ]
    return lambda lab, s, f: layouts[0](lab, s, f)[0]
