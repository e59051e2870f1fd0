"""Annotation formats: synthetic round trips and every kind of malformed input."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from aptune.data.annotations import load_annotations
from aptune.errors import DataError

FORMATS = ("list", "ucf101", "hmdb51", "ssv2", "kinetics")


@pytest.mark.parametrize("data_format", FORMATS)
def test_round_trip_every_video_once_with_its_label(synthetic, data_format):
    dataset = synthetic(data_format)
    truth = {str(path): label for path, label in dataset.videos}
    seen: Counter = Counter()
    for split_name in ("train", "val", "test"):
        annotations = load_annotations(data_format, dataset.root, split_name)
        assert annotations.class_names == dataset.class_names
        assert len(annotations) > 0
        for path, label in annotations.samples:
            assert Path(path).is_file(), path
            assert truth[path] == label, path
            seen[(split_name, path)] += 1
    train = {p for (s, p) in seen if s == "train"}
    test = {p for (s, p) in seen if s == "test"}
    assert not train & test  # no video both trained and tested on
    assert all(count == 1 for count in seen.values())
    # every class occurs in training
    train_labels = {truth[p] for p in train}
    assert train_labels == set(range(len(dataset.class_names)))


@pytest.mark.parametrize("data_format", ("ucf101", "hmdb51"))
def test_official_splits_differ(synthetic, data_format):
    root = synthetic(data_format).root
    tests = [
        frozenset(s.path for s in load_annotations(data_format, root, "test", split).samples) for split in (1, 2, 3)
    ]
    assert len(set(tests)) == 3
    for split in (1, 2, 3):
        train = {s.path for s in load_annotations(data_format, root, "train", split).samples}
        assert not train & tests[split - 1]
        # validation falls back to the test list for datasets without one
        val = {s.path for s in load_annotations(data_format, root, "val", split).samples}
        assert val == tests[split - 1]


def test_counts_per_format(synthetic):
    ucf = synthetic("ucf101")
    # 6 videos per class spread over groups 1,5,9,13,17,21: split 1 tests groups 1-7
    assert len(load_annotations("ucf101", ucf.root, "test", 1)) == 3 * 2
    assert len(load_annotations("ucf101", ucf.root, "train", 1)) == 3 * 4
    ssv2 = synthetic("ssv2")
    assert load_annotations("ssv2", ssv2.root, "val").samples == load_annotations("ssv2", ssv2.root, "test").samples
    hmdb = synthetic("hmdb51")
    assert load_annotations("hmdb51", hmdb.root, "train", 1).class_names == sorted(hmdb.class_names)


def _copy(dataset, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(dataset.root, target)
    return target


def _expect(match: str, *args, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        load_annotations(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_list_format_errors_name_file_and_line(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "test.csv").write_text("x.avi 0\n")
    (tmp_path / "train.csv").write_text("ok.avi 1\nno_label_here\n")
    message = _expect(r"train\.csv:2: expected", "list", tmp_path, "train")
    assert "no_label_here" in message
    (tmp_path / "train.csv").write_text("ok.avi 1\nbad.avi one\n")
    _expect(r"train\.csv:2: label 'one' is not an integer", "list", tmp_path, "train")
    (tmp_path / "train.csv").write_text("ok.avi 1\n\nbig.avi 2\n")
    _expect(r"train\.csv:3: label 2 out of range \(2 classes", "list", tmp_path, "train")
    (tmp_path / "train.csv").write_text("neg.avi -1\n")
    _expect(r"train\.csv:1: label -1 is negative", "list", tmp_path, "train")
    (tmp_path / "test.csv").unlink()
    _expect(r"test\.csv: test list file not found", "list", tmp_path, "test")


def test_list_format_paths_with_spaces_and_defaults(tmp_path):
    (tmp_path / "train.csv").write_text("my videos/clip one.avi 2\n/abs/path.avi 0\n")
    (tmp_path / "test.csv").write_text("t.avi 1\n")
    train = load_annotations("list", tmp_path, "train")
    assert train.samples[0].path == str(tmp_path / "my videos" / "clip one.avi")
    assert train.samples[0].label == 2
    assert train.samples[1].path == "/abs/path.avi"
    assert train.class_names == ["0", "1", "2"]  # no classes.txt: names are the numbers
    assert load_annotations("list", tmp_path, "val").samples == load_annotations("list", tmp_path, "test").samples
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    (elsewhere / "train.csv").write_text("v.avi 0\n")
    assert load_annotations("list", tmp_path, "train", annotations=elsewhere).samples[0].path == str(tmp_path / "v.avi")


def test_ucf101_errors(synthetic, tmp_path):
    root = _copy(synthetic("ucf101"), tmp_path)
    lists = root / "ucfTrainTestlist"
    lines = (lists / "trainlist01.txt").read_text().splitlines()
    lines[2] = "NoSuchClass/v_NoSuchClass_g01_c01.avi 1"
    (lists / "trainlist01.txt").write_text("\n".join(lines))
    _expect(r"trainlist01\.txt:3: unknown class 'NoSuchClass'", "ucf101", root, "train")
    lines[2] = lines[0].split()[0] + " 99"
    (lists / "trainlist01.txt").write_text("\n".join(lines))
    _expect(r"trainlist01\.txt:3: label 99 out of range 1\.\.3", "ucf101", root, "train")
    (lists / "testlist02.txt").unlink()
    _expect(r"testlist02\.txt: UCF101 test list for split 2 not found", "ucf101", root, "test", 2)
    (lists / "classInd.txt").write_text("1 A\n2\n")
    _expect(r"classInd\.txt:2: expected", "ucf101", root, "train")


def test_hmdb51_errors(synthetic, tmp_path):
    root = _copy(synthetic("hmdb51"), tmp_path)
    splits = root / "testTrainMulti_7030_splits"
    first = sorted(splits.glob("*_test_split1.txt"))[0]
    lines = first.read_text().splitlines()
    lines[1] = lines[1].split()[0] + " 7"
    first.write_text("\n".join(lines))
    _expect(rf"{first.name}:2: expected '<video> <0\|1\|2>'", "hmdb51", root, "train")
    sorted(splits.glob("*_test_split3.txt"))[1].unlink()
    _expect(r"_test_split3\.txt: split file missing for class", "hmdb51", root, "train", 3)
    # the split folder can be given explicitly
    moved = tmp_path / "elsewhere"
    shutil.move(str(splits), moved)
    with pytest.raises(DataError, match="no HMDB51 split files"):
        load_annotations("hmdb51", root, "train")
    with pytest.raises(DataError, match=r"_test_split1\.txt:2"):
        load_annotations("hmdb51", root, "train", annotations=moved)


def test_ssv2_errors(synthetic, tmp_path):
    root = _copy(synthetic("ssv2"), tmp_path)
    train_file = root / "labels" / "train.json"
    entries = json.loads(train_file.read_text())
    entries[2]["template"] = "Juggling [something] unknown"
    train_file.write_text(json.dumps(entries, indent=1))
    message = _expect(
        r"train\.json:\d+: entry 2: unknown class 'Juggling something unknown'",
        "ssv2",
        root,
        "train",
    )
    line = int(message.split("train.json:")[1].split(":")[0])
    text_lines = train_file.read_text().splitlines()
    assert text_lines[line - 1].strip() == "{"  # the line where entry 2 starts
    assert sum(t.strip() == "{" for t in text_lines[: line - 1]) == 2
    train_file.write_text('[{"id": 1,,}]')
    _expect(r"train\.json:1: invalid JSON", "ssv2", root, "train")
    (root / "labels" / "validation.json").unlink()
    _expect(r"validation\.json: SSv2 validation\.json not found", "ssv2", root, "test")


def test_kinetics_errors_and_flat_layout(synthetic, tmp_path):
    root = _copy(synthetic("kinetics"), tmp_path)
    val = root / "validate.csv"
    lines = val.read_text().splitlines()
    lines[2] = "not a class,abcdefghijk,1,11,val"
    val.write_text("\n".join(lines) + "\n")
    _expect(r"validate\.csv:3: unknown class 'not a class'", "kinetics", root, "val")
    val.write_text(lines[0] + "\nmoving right,abc\n")
    _expect(r"validate\.csv:2: expected 5 fields, got 2", "kinetics", root, "val")
    (root / "train.csv").unlink()
    _expect(r"train\.csv: Kinetics train\.csv not found", "kinetics", root, "train")


def test_kinetics_finds_flat_layout(synthetic, tmp_path):
    source = synthetic("kinetics")
    root = tmp_path / "flat"
    root.mkdir()
    for name in ("train.csv", "validate.csv"):
        shutil.copy(source.root / name, root / name)
    for path, _ in source.videos:
        if path.parts[-3] == "train":
            shutil.copy(path, root / path.name)  # all videos directly under root
    train = load_annotations("kinetics", root, "train")
    assert all(Path(p).parent == root and Path(p).is_file() for p, _ in train.samples)
    # no test.csv: the validation set is the test set
    assert load_annotations("kinetics", root, "test").samples == load_annotations("kinetics", root, "val").samples


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="split name"):
        load_annotations("list", tmp_path, "training")
    with pytest.raises(DataError, match="unknown data format"):
        load_annotations("csv", tmp_path, "train")
    with pytest.raises(DataError, match="data root folder not found"):
        load_annotations("list", tmp_path / "missing", "train")


# ------------------------------------------------ hostile annotation files, every parser
@pytest.mark.parametrize("label", ["1_000", "+1", "1e3", "1.0", "0x1", "١", "²", "１", "one"])
def test_list_labels_are_plain_ascii_digits(tmp_path, label):
    (tmp_path / "train.csv").write_text(f"ok.avi 0\nbad.avi {label}\n")
    message = _expect(r"train\.csv:2: label .* is not an integer", "list", tmp_path, "train")
    assert repr(label) in message


def test_list_label_forms_that_are_fine(tmp_path):
    (tmp_path / "train.csv").write_text("a.avi 007\nb.avi\t1\nc d.avi   0\r\n")
    samples = load_annotations("list", tmp_path, "train").samples
    assert [s.label for s in samples] == [7, 1, 0]
    assert samples[2].path == str(tmp_path / "c d.avi")


def test_list_huge_label_without_classes_is_refused_not_a_billion_names(tmp_path):
    (tmp_path / "train.csv").write_text("a.avi 0\nb.avi 99999999999\n")
    _expect(r"train\.csv:2: label 99999999999 is implausibly large", "list", tmp_path, "train")
    (tmp_path / "train.csv").write_text("a.avi 0\nb.avi " + "9" * 5000 + "\n")
    _expect(r"train\.csv:2: label .* is not an integer", "list", tmp_path, "train")


def test_list_class_named_twice(tmp_path):
    (tmp_path / "train.csv").write_text("a.avi 0\n")
    (tmp_path / "classes.txt").write_text("run\nwalk\nrun\n")
    _expect(r"classes\.txt:3: class 'run' listed twice \(also line 1\)", "list", tmp_path, "train")


def _bad_bytes(path: Path, line: int, data: bytes = b"caf\xe9 \xff") -> None:
    """Put bytes that are not UTF-8 at the start of line ``line`` (1-based) of ``path``."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = data + lines[line - 1]
    path.write_bytes(b"\n".join(lines))


# (format, file under the root, line to spoil, split to load)
TEXT_FILES = [
    ("list", "train.csv", 2, "train"),
    ("list", "classes.txt", 3, "train"),
    ("ucf101", "ucfTrainTestlist/classInd.txt", 2, "train"),
    ("ucf101", "ucfTrainTestlist/trainlist01.txt", 3, "train"),
    ("ucf101", "ucfTrainTestlist/testlist01.txt", 2, "test"),
    ("hmdb51", "testTrainMulti_7030_splits/moving_left_test_split1.txt", 2, "train"),
    ("ssv2", "labels/labels.json", 2, "train"),
    ("ssv2", "labels/train.json", 4, "train"),
    ("ssv2", "labels/validation.json", 3, "test"),
    ("kinetics", "train.csv", 3, "train"),
    ("kinetics", "validate.csv", 2, "val"),
]


@pytest.mark.parametrize(
    ("data_format", "name", "line", "split"), TEXT_FILES, ids=[f"{f}:{n.split('/')[-1]}" for f, n, _, _ in TEXT_FILES]
)
def test_text_that_is_not_utf8_names_the_file_and_line(synthetic, tmp_path, data_format, name, line, split):
    root = _copy(synthetic(data_format), tmp_path)
    _bad_bytes(root / name, line)
    file_name = re.escape(name.split("/")[-1])
    _expect(rf"{file_name}:{line}: not UTF-8 text", data_format, root, split)


@pytest.mark.parametrize(
    ("data_format", "name", "line", "split"), TEXT_FILES, ids=[f"{f}:{n.split('/')[-1]}" for f, n, _, _ in TEXT_FILES]
)
def test_nul_bytes_name_the_file_and_line(synthetic, tmp_path, data_format, name, line, split):
    root = _copy(synthetic(data_format), tmp_path)
    _bad_bytes(root / name, line, b"a\x00b")
    _expect(rf"{re.escape(name.split('/')[-1])}:{line}: contains a NUL byte", data_format, root, split)


def test_utf16_annotation_file_is_named(tmp_path):
    (tmp_path / "train.csv").write_text("a.avi 0\n", encoding="utf-16")
    _expect(r"train\.csv:1: not UTF-8 text", "list", tmp_path, "train")


def test_unreadable_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "train.csv").write_text("a.avi 0\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    _expect(r"train\.csv: cannot read \(Permission denied\)", "list", tmp_path, "train")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1_0 MovingLeft", "expected '<index> <ClassName>'"),
        ("٢ MovingLeft", "expected '<index> <ClassName>'"),
        ("-2 MovingLeft", "class index -2 out of order"),
        ("2 movingright", "class 'movingright' listed twice"),
    ],
)
def test_ucf101_class_index_errors(synthetic, tmp_path, line, message):
    root = _copy(synthetic("ucf101"), tmp_path)
    class_file = root / "ucfTrainTestlist" / "classInd.txt"
    lines = class_file.read_text().splitlines()
    lines[1] = line
    class_file.write_text("\n".join(lines) + "\n")
    _expect(rf"classInd\.txt:2: {re.escape(message)}", "ucf101", root, "train")


@pytest.mark.parametrize("label", ["+1", "1_0", "١", "-1", "0", "4"])
def test_ucf101_train_labels(synthetic, tmp_path, label):
    root = _copy(synthetic("ucf101"), tmp_path)
    train = root / "ucfTrainTestlist" / "trainlist01.txt"
    lines = train.read_text().splitlines()
    lines[0] = f"{lines[0].split()[0]} {label}"
    train.write_text("\n".join(lines) + "\n")
    _expect(r"trainlist01\.txt:1: (expected '<path> <1-based label>'|label .* out of range)", "ucf101", root, "train")


@pytest.mark.parametrize("tag", ["3", "-1", "１", "1.0", ""])
def test_hmdb51_tags(synthetic, tmp_path, tag):
    root = _copy(synthetic("hmdb51"), tmp_path)
    split_file = root / "testTrainMulti_7030_splits" / "moving_left_test_split1.txt"
    lines = split_file.read_text().splitlines()
    lines[1] = f"{lines[1].split()[0]} {tag}"
    split_file.write_text("\n".join(lines) + "\n")
    _expect(r"moving_left_test_split1\.txt:2: expected '<video> <0\|1\|2>'", "hmdb51", root, "train")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("time_start", "inf", "time_start 'inf' is not a number of seconds"),
        ("time_start", "-inf", "time_start '-inf' is not a number of seconds"),
        ("time_end", "nan", "time_end 'nan' is not a number of seconds"),
        ("time_start", "1e3", "time_start '1e3' is not a number of seconds"),
        ("time_start", "1_0", "time_start '1_0' is not a number of seconds"),
        ("time_start", "", "time_start '' is not a number of seconds"),
        ("time_start", "1" + "0" * 400, "time_start '100000000"),
        ("time_start", "-5", "time_start -5 is negative"),
        ("time_end", "3", "time_end 3 is before time_start"),
        ("youtube_id", "", "empty youtube_id"),
    ],
)
def test_kinetics_times_and_ids(synthetic, tmp_path, field, value, message):
    root = _copy(synthetic("kinetics"), tmp_path)
    rows = list(csv.DictReader((root / "validate.csv").open()))
    rows[1][field] = value
    with open(root / "validate.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _expect(rf"validate\.csv:3: {re.escape(message)}", "kinetics", root, "val")


def test_kinetics_fractional_seconds_are_whole_seconds_in_file_names(synthetic, tmp_path):
    root = _copy(synthetic("kinetics"), tmp_path)
    text = (root / "validate.csv").read_text().splitlines()
    label, youtube_id, start, end, split = text[1].split(",")
    text[1] = ",".join([label, youtube_id, f"{start}.5", f"{end}.25", split])
    (root / "validate.csv").write_text("\n".join(text) + "\n")
    first = load_annotations("kinetics", root, "val").samples[0]
    assert Path(first.path).name == f"{youtube_id}_{int(start):06d}_{int(end):06d}.mp4"


def test_kinetics_malformed_csv(synthetic, tmp_path):
    root = _copy(synthetic("kinetics"), tmp_path)
    header = (root / "train.csv").read_text().splitlines()[0]
    (root / "train.csv").write_text(f"{header}\nmoving right,{'a' * 200_000},1,11,train\n")
    _expect(r"train\.csv:2: malformed CSV \(field larger than field limit", "kinetics", root, "train")
    (root / "train.csv").write_text(f"{header}\n,abc,1,11,train\n")
    _expect(r"train\.csv:2: empty label", "kinetics", root, "train")


@pytest.mark.parametrize("which", ["labels.json", "train.json"])
def test_ssv2_json_nested_thousands_deep(synthetic, tmp_path, which):
    root = _copy(synthetic("ssv2"), tmp_path)
    (root / "labels" / which).write_text("[" * 100_000 + "]" * 100_000)
    _expect(rf"{re.escape(which)}: invalid JSON \(nested too deeply", "ssv2", root, "train")


@pytest.mark.parametrize(
    ("which", "text", "message"),
    [
        ("labels.json", '{"Something moving right": NaN}', r"invalid JSON \(NaN is not a JSON"),
        ("labels.json", '{"Something moving right": Infinity}', r"invalid JSON \(Infinity is"),
        ("labels.json", '{"a": ' + "1" * 5000 + "}", r"invalid JSON \(a number of thousands"),
        ("labels.json", '["Something moving right"]', r"labels\.json:1: expected an object"),
        ("labels.json", "{}", r"labels\.json: no classes"),
        ("labels.json", '{"Something moving right": 0.5}', r"id 0\.5 of .* is not an integer"),
        ("labels.json", '{"Something moving right": true}', r"id true of .* is not an integer"),
        ("labels.json", '{"Something moving right": null}', r"id null of .* is not an integer"),
        ("labels.json", '{"Something moving right": "1_0"}', r"id '1_0' of .* is not an integer"),
        ("labels.json", '{"Something moving right": [0]}', r"id \[0\] of .* is not an integer"),
        ("labels.json", '{"Something moving right": -1}', r"id -1 of .* duplicated or out of"),
        ("train.json", '{"id": "1"}', r"train\.json:1: expected a list of entries"),
        ("train.json", '[{"id": -Infinity, "template": "x"}]', r"-Infinity is not a JSON"),
        ("train.json", "[1, 2]", r"train\.json:1: entry 0: entry needs 'id' and 'template'"),
    ],
)
def test_ssv2_json_values_and_types(synthetic, tmp_path, which, text, message):
    root = _copy(synthetic("ssv2"), tmp_path)
    (root / "labels" / which).write_text(text)
    _expect(message, "ssv2", root, "train")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", [1], r"'id' must be a video name or a whole number, got \[1\]"),
        ("id", None, r"'id' must be a video name or a whole number, got null"),
        ("id", True, r"'id' must be a video name or a whole number, got true"),
        ("id", 1.5, r"'id' must be a video name or a whole number, got 1\.5"),
        ("id", "", r"'id' must be a video name"),
        ("id", "a/b", r"'id' must be a video name"),
        ("id", -3, r"'id' must be a video name or a whole number, got -3"),
        ("template", 7, r"'template' must be a string, got 7"),
        ("template", None, r"'template' must be a string, got null"),
        ("template", {"a": 1}, r"'template' must be a string"),
    ],
)
def test_ssv2_entry_types_name_the_entry_and_line(synthetic, tmp_path, field, value, message):
    root = _copy(synthetic("ssv2"), tmp_path)
    train_file = root / "labels" / "train.json"
    entries = json.loads(train_file.read_text())
    entries[1][field] = value
    train_file.write_text(json.dumps(entries, indent=1))
    found = _expect(rf"train\.json:\d+: entry 1: {message}", "ssv2", root, "train")
    line = int(found.split("train.json:")[1].split(":")[0])
    assert train_file.read_text().splitlines()[line - 1].strip() == "{"


def test_ssv2_integer_ids_are_fine(synthetic, tmp_path):
    root = _copy(synthetic("ssv2"), tmp_path)
    train_file = root / "labels" / "train.json"
    entries = json.loads(train_file.read_text())
    entries[0]["id"] = 12345
    train_file.write_text(json.dumps(entries))
    labels = root / "labels" / "labels.json"
    labels.write_text(json.dumps({k: int(v) for k, v in json.loads(labels.read_text()).items()}))
    first = load_annotations("ssv2", root, "train").samples[0]
    assert Path(first.path).name == "12345.webm"


def test_line_numbers_count_only_real_line_breaks(tmp_path):
    # U+2028 and a form feed inside a path: str.splitlines() would cut the path there
    (tmp_path / "train.csv").write_text("odd\u2028name.avi 0\nform\x0cfeed.avi 0\nbad.avi x\n")
    _expect(r"train\.csv:3: label 'x'", "list", tmp_path, "train")
    (tmp_path / "train.csv").write_text("odd\u2028name.avi 0\n")
    assert load_annotations("list", tmp_path, "train").samples[0].path.endswith("odd\u2028name.avi")


def test_bad_split_and_root_arguments(tmp_path):
    (tmp_path / "train.csv").write_text("a.avi 0\n")
    with pytest.raises(DataError, match="data.split must be 1, 2 or 3, got True"):
        load_annotations("ucf101", tmp_path, "train", split=True)
    with pytest.raises(DataError, match="data root is a file, not a folder"):
        load_annotations("list", tmp_path / "train.csv", "train")


def test_ssv2_entry_lines_survive_escaped_quotes_and_plain_values(synthetic, tmp_path):
    root = _copy(synthetic("ssv2"), tmp_path)
    train_file = root / "labels" / "train.json"
    entries = json.loads(train_file.read_text())
    entries[0]["label"] = 'a "quoted" [thing] \\'  # escaped quotes and a backslash
    entries[2]["template"] = "Juggling [something] unknown"
    train_file.write_text(json.dumps(entries, indent=1))
    message = _expect(r"train\.json:\d+: entry 2: unknown class", "ssv2", root, "train")
    line = int(message.split("train.json:")[1].split(":")[0])
    lines = train_file.read_text().splitlines()
    assert lines[line - 1].strip() == "{" and sum(t.strip() == "{" for t in lines[: line - 1]) == 2
    train_file.write_text('[\n {"id": "1", "template": "Something moving right"},\n\n 7\n]')
    _expect(r"train\.json:4: entry 1: entry needs 'id' and 'template'", "ssv2", root, "train")
