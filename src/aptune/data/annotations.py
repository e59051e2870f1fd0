"""Annotation formats -> one in-memory form: ``Annotations(samples, class_names)``.

Parsers for VideoMAE/APT list files and the native layouts of UCF101, HMDB51,
Something-Something-v2 and Kinetics.  Every problem with an annotation file (a
malformed line, an unknown class, a label out of range, a missing split file, text that
is not UTF-8, a NaN or an infinity, JSON of the wrong type or nested absurdly deep) is a
one-line :class:`~aptune.errors.DataError` naming the file and line, raised before any
training starts.  Numbers are plain ASCII digits: ``1_000``, ``+1``, ``1e3`` or ``١``
are errors, not whatever Python's ``int`` or ``float`` would make of them.  Video files
themselves are not opened here; a missing video is found (and counted) when it is decoded.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from aptune.errors import DataError

__all__ = ["Sample", "Annotations", "load_annotations", "SPLIT_NAMES"]

SPLIT_NAMES = ("train", "val", "test")
# Labels at or past this are refused when no class list bounds them: the largest video
# benchmarks have a few thousand classes, and a stray huge number must not become a class
# list of billions of names.
MAX_CLASSES = 100_000
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only, unlike int() and str.isdigit()
_SECONDS = re.compile(r"-?[0-9]+(\.[0-9]+)?")


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
    if isinstance(split, bool) or split not in (1, 2, 3):
        raise DataError(f"data.split must be 1, 2 or 3, got {split!r}")
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
        if root.exists():
            raise DataError(f"{root}: data root is a file, not a folder")
        raise DataError(f"{root}: data root folder not found")
    try:
        result = loaders[format](root, split_name, split, folder)
    except OSError as exc:  # a folder that cannot be listed, a file that cannot be read
        where = exc.filename or root
        raise DataError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if not result.samples:
        raise DataError(f"{result.source}: no videos in the {split_name} split")
    return result


# ------------------------------------------------------------------------------ helpers
def _read_text(path: Path) -> str:
    """The file as text: UTF-8 (a BOM is fine), else a DataError naming file and line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{path}:{line}: contains a NUL byte (a binary file, or UTF-16 text?)")
    return text


def _split_lines(text: str) -> list[str]:
    # Only CR, LF and CRLF end a line: str.splitlines() would also split on form feeds,
    # U+0085 or U+2028, which may sit inside a file name and would shift line numbers.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _lines(path: Path):
    """(line number, stripped text) for non-empty lines; tolerant of BOM and CRLF."""
    for number, line in enumerate(_split_lines(_read_text(path)), start=1):
        line = line.strip()
        if line:
            yield number, line


def _integer(text: str) -> int | None:
    """``text`` as an int when it is plain ASCII digits (with an optional minus), else None."""
    return int(text) if len(text) <= 100 and _INTEGER.fullmatch(text) else None


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
        parts = line.rsplit(None, 1)  # paths may contain spaces; labels never do
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected '<video path> <label>', got {line[:80]!r}")
        video, label_text = parts
        video = video.strip()
        label = _integer(label_text)
        if label is None:
            raise DataError(f"{path}:{number}: label {label_text[:40]!r} is not an integer (plain digits 0-9)")
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
        class_names = _class_list(classes_file)
        for name, rows in parsed.items():
            for _, label, number in rows:
                if label >= len(class_names):
                    raise DataError(
                        f"{files[name]}:{number}: label {label} out of range "
                        f"({len(class_names)} classes in {classes_file})"
                    )
    else:
        for name, rows in parsed.items():
            for _, label, number in rows:
                if label >= MAX_CLASSES:
                    raise DataError(
                        f"{files[name]}:{number}: label {label} is implausibly large (more than "
                        f"{MAX_CLASSES} classes); list the class names in {classes_file}"
                    )
        highest = max((label for rows in parsed.values() for _, label, _ in rows), default=-1)
        class_names = [str(i) for i in range(highest + 1)]
    samples = [Sample(p, label) for p, label, _ in parsed[chosen.stem]]
    return Annotations(samples, class_names, str(chosen))


def _class_list(path: Path) -> list[str]:
    """One class name per line; a name given twice is an error (labels would be ambiguous)."""
    names: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in _lines(path):
        if line in first_line:
            raise DataError(f"{path}:{number}: class {line[:80]!r} listed twice (also line {first_line[line]})")
        first_line[line] = number
        names.append(line)
    return names


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
        raise DataError(f"{root / 'ucfTrainTestlist' / 'classInd.txt'}: UCF101 class index not found")
    videos = _first_existing([root / "UCF-101", root / "UCF101", root / "videos"]) or root
    class_file = lists / "classInd.txt"
    class_names: list[str] = []
    for number, line in _lines(class_file):
        parts = line.split()
        if len(parts) != 2 or _integer(parts[0]) is None:
            raise DataError(f"{class_file}:{number}: expected '<index> <ClassName>', got {line[:80]!r}")
        if _integer(parts[0]) != len(class_names) + 1:
            raise DataError(
                f"{class_file}:{number}: class index {parts[0][:20]} out of order (expected {len(class_names) + 1})"
            )
        if parts[1].lower() in (name.lower() for name in class_names):
            raise DataError(f"{class_file}:{number}: class {parts[1][:80]!r} listed twice")
        class_names.append(parts[1])
    by_name = {name.lower(): i for i, name in enumerate(class_names)}
    kind = "train" if split_name == "train" else "test"
    list_file = _require(lists / f"{kind}list0{split}.txt", f"UCF101 {kind} list for split {split}")
    samples = []
    for number, line in _lines(list_file):
        parts = line.split()
        relative = parts[0]
        if "/" not in relative:
            raise DataError(f"{list_file}:{number}: expected 'Class/v_Class_gXX_cYY.avi', got {line[:80]!r}")
        folder_class = relative.split("/")[0]
        if folder_class.lower() not in by_name:
            raise DataError(f"{list_file}:{number}: unknown class {folder_class!r} (not in {class_file})")
        label = by_name[folder_class.lower()]
        if kind == "train":
            if len(parts) != 2 or _integer(parts[1]) is None:
                raise DataError(f"{list_file}:{number}: expected '<path> <1-based label>', got {line[:80]!r}")
            given = _integer(parts[1]) - 1
            if not 0 <= given < len(class_names):
                raise DataError(f"{list_file}:{number}: label {parts[1][:20]} out of range 1..{len(class_names)}")
            if given != label:
                raise DataError(
                    f"{list_file}:{number}: label {parts[1]} ({class_names[given]}) "
                    f"does not match the folder {folder_class!r}"
                )
        elif len(parts) != 1:
            raise DataError(f"{list_file}:{number}: expected a single video path, got {line[:80]!r}")
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
            raise DataError(f"{split_dir / f'{name}_test_split{split}.txt'}: split file missing for class {name!r}")
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
def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _read_json(path: Path) -> tuple[object, str]:
    """(parsed value, text).  Strict JSON: NaN and Infinity are errors, as in the standard."""
    text = _read_text(path)
    try:
        return json.loads(text, parse_constant=_no_constant), text
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON (nested too deeply to be an annotation file)") from None
    except ValueError as exc:  # NaN/Infinity, or an integer of thousands of digits
        reason = str(exc)
        if "integer string conversion" in reason:
            reason = "a number of thousands of digits"
        raise DataError(f"{path}: invalid JSON ({reason[:100]})") from None


def _json_entry_lines(text: str) -> list[int]:
    """Line number where each top-level list entry starts (of any JSON type), for messages."""
    lines, depth, line = [], 0, 1
    in_string = escaped = expecting = False
    for char in text:
        if char == "\n":
            line += 1
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if expecting and not char.isspace():  # the first character of a top-level entry
            if char != "]":
                lines.append(line)
            expecting = False
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            expecting = depth == 1 and char == "["
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 1:
            expecting = True
    return lines


def _load_ssv2(root: Path, split_name: str, split: int, folder: Path | None) -> Annotations:
    labels_dir = folder or _first_existing([root / "labels", root / "annotations"]) or root
    labels_file = _require(labels_dir / "labels.json", "SSv2 labels.json")
    mapping, _ = _read_json(labels_file)
    if not isinstance(mapping, dict):
        raise DataError(f"{labels_file}:1: expected an object mapping template to id")
    if not mapping:
        raise DataError(f"{labels_file}: no classes (an empty object)")
    class_names = [""] * len(mapping)
    for template, index_value in mapping.items():
        index = _json_index(index_value)
        if index is None:
            raise DataError(
                f"{labels_file}: id {_clip(index_value)} of {template[:80]!r} is not an integer "
                "(a number or a string of digits)"
            )
        if not 0 <= index < len(mapping) or class_names[index]:
            raise DataError(f"{labels_file}: id {index} of {template!r} is duplicated or out of range")
        class_names[index] = template
    filename = "train.json" if split_name == "train" else "validation.json"
    split_file = _require(labels_dir / filename, f"SSv2 {filename}")
    entries, text = _read_json(split_file)
    if not isinstance(entries, list):
        raise DataError(f"{split_file}:1: expected a list of entries")
    videos = _first_existing([root / "20bn-something-something-v2", root / "videos"]) or root
    lookup = {name: i for i, name in enumerate(class_names)}
    samples, entry_lines = [], None
    for position, entry in enumerate(entries):
        problem = None
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            problem = "entry needs 'id' and 'template'"
        elif not _valid_video_id(entry["id"]):
            problem = f"'id' must be a video name or a whole number, got {_clip(entry['id'])}"
        elif not isinstance(entry["template"], str):
            problem = f"'template' must be a string, got {_clip(entry['template'])}"
        else:
            template = entry["template"].replace("[", "").replace("]", "")
            if template not in lookup:
                problem = f"unknown class {template[:80]!r} (not in {labels_file.name})"
        if problem:
            entry_lines = entry_lines or _json_entry_lines(text)
            line = entry_lines[position] if position < len(entry_lines) else "?"
            raise DataError(f"{split_file}:{line}: entry {position}: {problem}")
        samples.append(Sample(str(videos / f"{entry['id']}.webm"), lookup[template]))
    return Annotations(samples, class_names, str(split_file))


def _json_index(value) -> int | None:
    """A class id of labels.json: a JSON integer or a string of digits (the real file's)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _integer(value.strip())
    return None


def _valid_video_id(value) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    return isinstance(value, str) and bool(value.strip()) and not any(char in value for char in "\x00\n\r/\\")


def _clip(value) -> str:
    """A short readable form of a JSON value for an error message."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- Kinetics
_KINETICS_FILES = {
    "train": ("train.csv",),
    "val": ("validate.csv", "val.csv"),
    "test": ("test.csv",),
}


def _kinetics_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader, None)
        needed = {"label", "youtube_id", "time_start", "time_end"}
        if header is None or not needed <= {h.strip() for h in header}:
            raise DataError(f"{path}:1: expected header with label,youtube_id,time_start,time_end,split")
        header = [h.strip() for h in header]
        rows = []
        for values in reader:
            number = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(f"{path}:{number}: expected {len(header)} fields, got {len(values)}")
            rows.append((number, dict(zip(header, (v.strip() for v in values)))))
    except csv.Error as exc:  # an unclosed quote, a field past the size limit
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return rows


def _kinetics_seconds(path: Path, number: int, row: dict[str, str]) -> tuple[int, int]:
    """(time_start, time_end) as whole seconds, as in the file names; plain numbers only."""
    times = []
    for key in ("time_start", "time_end"):
        text = row[key]
        if not _SECONDS.fullmatch(text) or not math.isfinite(float(text)):
            raise DataError(
                f"{path}:{number}: {key} {text[:40]!r} is not a number of seconds (plain digits, e.g. 14 or 14.5)"
            )
        if float(text) < 0:
            raise DataError(f"{path}:{number}: {key} {text[:40]} is negative")
        times.append(int(float(text)))
    start, end = times
    if end < start:
        raise DataError(f"{path}:{number}: time_end {end} is before time_start {start}")
    return start, end


def _kinetics_file(folder: Path, split_name: str) -> Path | None:
    return _first_existing([folder / name for name in _KINETICS_FILES[split_name]])


def _load_kinetics(root: Path, split_name: str, split: int, folder: Path | None) -> Annotations:
    folder = folder or _first_existing([root / "annotations", root / "kinetics400"]) or root
    if not any(_kinetics_file(folder, s) for s in SPLIT_NAMES) and folder != root:
        folder = root
    train_file = _kinetics_file(folder, "train")
    if train_file is None:
        raise DataError(f"{folder / 'train.csv'}: Kinetics train.csv not found (it defines the classes)")
    chosen = _kinetics_file(folder, split_name)
    if chosen is None and split_name == "test":
        chosen = _kinetics_file(folder, "val")  # test on the validation set, as is common
    if chosen is None:
        raise DataError(f"{folder / _KINETICS_FILES[split_name][0]}: Kinetics {split_name} file not found")
    train_rows = _kinetics_rows(train_file)
    for number, row in train_rows:
        if not row["label"]:
            raise DataError(f"{train_file}:{number}: empty label")
    class_names = sorted({row["label"] for _, row in train_rows})
    lookup = {name: i for i, name in enumerate(class_names)}
    rows = train_rows if chosen == train_file else _kinetics_rows(chosen)
    entries = []
    for number, row in rows:
        if row["label"] not in lookup:
            raise DataError(f"{chosen}:{number}: unknown class {row['label'][:80]!r} (not in {train_file.name})")
        if not row["youtube_id"]:
            raise DataError(f"{chosen}:{number}: empty youtube_id")
        start, end = _kinetics_seconds(chosen, number, row)
        filename = f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
        split_dir = row.get("split") or split_name
        entries.append((row["label"], split_dir, filename))
    layout = _kinetics_layout(root, chosen.stem, split_name, entries)
    samples = [Sample(str(layout(label, split_dir, filename)), lookup[label]) for label, split_dir, filename in entries]
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
                    return lambda lab, s, f, layout=layout, variant=variant: layout(lab, s, f)[variant]
    return lambda lab, s, f: layouts[0](lab, s, f)[0]
