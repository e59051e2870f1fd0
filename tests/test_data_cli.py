"""``aptune data synth`` and ``aptune data check`` end to end, with exit codes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import mounted_tmpfs

from aptune.cli import main


def test_synth_then_check_is_usable(tmp_path, capsys):
    out = tmp_path / "ucf"
    status = main(
        [
            "data",
            "synth",
            str(out),
            "--format",
            "ucf101",
            "--classes",
            "3",
            "--per-class",
            "4",
            "--frames",
            "10",
            "--size",
            "24x32",
            "--seed",
            "3",
        ]
    )
    assert status == 0
    assert (out / "ucfTrainTestlist" / "classInd.txt").is_file()
    assert len(list((out / "UCF-101").rglob("*.avi"))) == 12
    report = tmp_path / "report.json"
    status = main(
        [
            "data",
            "check",
            "--set",
            "data.format=ucf101",
            "--set",
            f"data.root={out}",
            "--set",
            "data.num_workers=2",
            "--json",
            str(report),
            "--no-progress",
        ]
    )
    assert status == 0
    summary = json.loads(report.read_text())
    assert (summary["ok"], summary["missing"], summary["unreadable"]) == (12, 0, 0)
    assert summary["num_classes"] == 3 and summary["clips_per_second"] > 0
    assert summary["resolutions"] == {"32x24": 12} and summary["mean_frames"] == 10
    assert summary["splits"]["train"]["videos"] + summary["splits"]["test"]["videos"] == 12
    printed = capsys.readouterr().out
    assert "usable" in printed and "ok 12, missing 0, unreadable 0" in printed


def test_check_fails_on_too_many_bad_videos(tmp_path, synthetic, capsys):
    source = synthetic("list")
    root = tmp_path / "broken"
    root.mkdir()
    (root / "zero.avi").write_bytes(b"")
    for split in ("train", "val", "test"):
        lines = [f"{source.root / line}" for line in (source.root / f"{split}.csv").read_text().splitlines()]
        if split == "train":
            lines += ["gone.avi 0", "zero.avi 1"]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    config = tmp_path / "recipe.yaml"
    config.write_text(f"data:\n  format: list\n  root: {root}\n  num_workers: 0\n")
    report = tmp_path / "report.json"
    assert main(["data", "check", "--config", str(config), "--json", str(report), "--no-progress"]) == 1
    summary = json.loads(report.read_text())
    assert (summary["ok"], summary["missing"], summary["unreadable"]) == (18, 1, 1)
    assert summary["missing_files"] == [str(root / "gone.avi")]
    assert summary["usable"] is False
    out = capsys.readouterr().out
    assert "missing: " + str(root / "gone.avi") in out and "NOT usable" in out
    # a higher limit makes the same data usable
    assert (
        main(
            [
                "data",
                "check",
                "--config",
                str(config),
                "--set",
                "data.max_bad_fraction=0.2",
                "--no-progress",
            ]
        )
        == 0
    )


def test_check_annotation_error_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("a.avi zero\n")
    status = main(
        [
            "data",
            "check",
            "--set",
            "data.format=list",
            "--set",
            f"data.root={tmp_path}",
            "--no-progress",
        ]
    )
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "train.csv:1" in err[-1]


def test_synth_cli_subprocess_ssv2(tmp_path):
    out = tmp_path / "ssv2"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aptune",
            "data",
            "synth",
            str(out),
            "--format",
            "ssv2",
            "--classes",
            "2",
            "--per-class",
            "2",
            "--frames",
            "6",
            "--size",
            "16x16",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((out / "20bn-something-something-v2").glob("*.webm"))) == 4
    labels = json.loads((out / "labels" / "labels.json").read_text())
    assert sorted(labels.values()) == ["0", "1"]


def test_synth_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path), "--classes", "99"]) == 2
    assert "error: --classes" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path), "--size", "big"]) == 2


# ------------------------------------------------------------------ bad input, one line
def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[-1]


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        (["--fps", "0"], "--fps"),
        (["--fps", "-1"], "--fps"),
        (["--fps", "nan"], "--fps"),
        (["--fps", "inf"], "--fps"),
        (["--fps", "1e9"], "--fps"),
        (["--gop", "-1"], "--gop"),
        (["--gop", "0"], "--gop"),
        (["--classes", "0"], "--classes"),
        (["--classes", "-3"], "--classes"),
        (["--classes", "99"], "--classes"),
        (["--per-class", "0"], "--per-class"),
        (["--per-class", "1000000000"], "--per-class"),
        (["--frames", "0"], "--frames"),
        (["--frames", "-5"], "--frames"),
        (["--frames", "100000000"], "--frames"),
        (["--workers", "0"], "--workers"),
        (["--workers", "1000000"], "--workers"),
        (["--seed", "-1"], "--seed"),
        (["--size", "0x64"], "--size"),
        (["--size", "64x99999"], "--size"),
        (["--size", "64x64x64"], "--size"),
        (["--size", "x"], "--size"),
        (["--size", "1_0x10"], "--size"),
        (["--frames", "10000", "--size", "4096x4096"], "--frames"),
        (["--motions", "right,right"], "--motions"),
        (["--motions", ""], "--motions"),
        (["--motions", "sideways"], "--motions"),
    ],
)
def test_synth_rejects_out_of_range_values_in_one_line(tmp_path, capsys, options, flag):
    out = tmp_path / "out"
    assert main(["data", "synth", str(out), *options]) == 2
    assert flag in _one_line_error(capsys)
    assert not out.exists()  # refused before anything was written


def test_synth_into_a_file_or_below_one_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way\n")
    small = ["--classes", "1", "--per-class", "1", "--frames", "2", "--size", "8x8"]
    assert main(["data", "synth", str(blocker), *small]) == 2
    message = _one_line_error(capsys)
    assert str(blocker) in message and "a file of that name is in the way" in message
    assert main(["data", "synth", str(blocker / "below"), *small]) == 2
    assert str(blocker) in _one_line_error(capsys)
    assert blocker.read_text() == "in the way\n"


def test_synth_full_disk_is_one_line_and_leaves_no_partial_video(tmp_path, capsys, monkeypatch):
    import aptune.data.synth.dataset as synth  # where the dataset writer looks write_video up

    def full_disk(path, *args, **kwargs):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"\0" * 100)  # what a writer leaves before the disk fills up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(synth, "write_video", full_disk)
    out = tmp_path / "out"
    assert (
        main(["data", "synth", str(out), "--classes", "2", "--per-class", "2", "--frames", "4", "--size", "16x16"]) == 2
    )
    message = _one_line_error(capsys)
    assert "no space left on the device" in message and ".avi" in message
    assert not list(out.rglob("*.avi"))  # the partial file was removed


@pytest.mark.parametrize("workers", ["1", "2"])
def test_synth_onto_a_really_full_disk(tmp_path, capsys, workers):
    with mounted_tmpfs(tmp_path / "disk", "256k") as disk:
        status = main(
            [
                "data",
                "synth",
                str(disk / "ds"),
                "--classes",
                "4",
                "--per-class",
                "10",
                "--frames",
                "16",
                "--size",
                "64x64",
                "--workers",
                workers,
            ]
        )
        message = _one_line_error(capsys)
    assert status == 2 and "no space left on the device" in message


def test_check_json_into_a_new_folder_and_into_places_that_cannot_be_written(tmp_path, synthetic, capsys, monkeypatch):
    root = synthetic("list").root
    check = [
        "data",
        "check",
        "--set",
        "data.format=list",
        "--set",
        f"data.root={root}",
        "--set",
        "data.num_workers=0",
        "--no-progress",
    ]
    report = tmp_path / "new" / "deeper" / "report.json"
    assert main([*check, "--json", str(report)]) == 0
    assert json.loads(report.read_text())["ok"] == 18
    capsys.readouterr()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for target, reason in (
        (blocker / "report.json", "in the way"),
        (tmp_path / "new", "a folder of that name is in the way"),
    ):
        assert main([*check, "--json", str(target)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # refused before decoding anything
        assert reason in captured.err and "Traceback" not in captured.err

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("aptune.fileio.os.fsync", disk_full)
    assert main([*check, "--json", str(tmp_path / "full.json")]) == 2
    message = _one_line_error(capsys)
    assert "full.json: cannot write (no space left on the device)" in message
    assert not (tmp_path / "full.json").exists()


def test_check_json_onto_a_really_full_disk(tmp_path, synthetic, capsys):
    root = synthetic("list").root
    with mounted_tmpfs(tmp_path / "disk", "64k") as disk:
        descriptor = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:  # fill the disk to the last block
                os.write(descriptor, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(descriptor)
        status = main(
            [
                "data",
                "check",
                "--set",
                "data.format=list",
                "--set",
                f"data.root={root}",
                "--set",
                "data.num_workers=0",
                "--no-progress",
                "--json",
                str(disk / "report.json"),
            ]
        )
        message = _one_line_error(capsys)
    assert status == 2 and "no space left on the device" in message


def _strict_json(path: Path) -> dict:
    def refuse(name):
        raise AssertionError(f"{name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_check_where_every_video_is_bad_is_clear_and_strict(tmp_path, capsys):
    (tmp_path / "zero.avi").write_bytes(b"")
    (tmp_path / "text.avi").write_text("not a video\n" * 20)
    lines = "missing.avi 0\nzero.avi 1\ntext.avi 0\n"
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text(lines)
    report = tmp_path / "out" / "report.json"
    status = main(
        [
            "data",
            "check",
            "--set",
            "data.format=list",
            "--set",
            f"data.root={tmp_path}",
            "--set",
            "data.num_workers=0",
            "--set",
            "data.max_bad_fraction=1.0",
            "--json",
            str(report),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "ok 0, missing 1, unreadable 2" in out
    assert out.strip().splitlines()[-1] == "NOT usable: none of the 3 videos could be decoded"
    assert "nan" not in out.lower()
    summary = _strict_json(report)
    assert summary["usable"] is False and summary["mean_frames"] is None
    assert summary["resolutions"] == {} and summary["bad_fraction"] == 1.0
    assert all(split["usable"] is False for split in summary["splits"].values())


def test_check_names_the_split_that_is_all_bad(tmp_path, synthetic, capsys):
    source = synthetic("list")
    train = (source.root / "train.csv").read_text().splitlines()
    (tmp_path / "train.csv").write_text("".join(f"{source.root / line}\n" for line in train))
    (tmp_path / "test.csv").write_text("gone1.avi 0\ngone2.avi 1\n")
    report = tmp_path / "report.json"
    status = main(
        [
            "data",
            "check",
            "--set",
            "data.format=list",
            "--set",
            f"data.root={tmp_path}",
            "--set",
            "data.num_workers=0",
            "--set",
            "data.max_bad_fraction=0.5",
            "--json",
            str(report),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1  # 2 of 14 videos bad overall (14 %), but nothing to test on
    last = out.strip().splitlines()[-1]
    assert last.startswith("NOT usable: too many bad videos (limit 50.00%)")
    assert "test: 2 of 2 videos bad (100.00%)" in last and "train" not in last
    summary = _strict_json(report)
    assert summary["splits"]["train"]["usable"] is True
    assert summary["splits"]["test"]["usable"] is False
