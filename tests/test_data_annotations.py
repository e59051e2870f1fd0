"""Annotation formats: synthetic round trips and every kind of malformed input."""

from __future__ import annotations

import json
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
        frozenset(s.path for s in load_annotations(data_format, root, "test", split).samples)
        for split in (1, 2, 3)
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
    assert (
        load_annotations("ssv2", ssv2.root, "val").samples
        == load_annotations("ssv2", ssv2.root, "test").samples
    )
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
    assert (
        load_annotations("list", tmp_path, "val").samples
        == load_annotations("list", tmp_path, "test").samples
    )
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    (elsewhere / "train.csv").write_text("v.avi 0\n")
    assert load_annotations("list", tmp_path, "train", annotations=elsewhere).samples[
        0
    ].path == str(tmp_path / "v.avi")


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
    assert (
        load_annotations("kinetics", root, "test").samples
        == load_annotations("kinetics", root, "val").samples
    )


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="split name"):
        load_annotations("list", tmp_path, "training")
    with pytest.raises(DataError, match="unknown data format"):
        load_annotations("csv", tmp_path, "train")
    with pytest.raises(DataError, match="data root folder not found"):
        load_annotations("list", tmp_path / "missing", "train")
