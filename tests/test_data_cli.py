"""``aptune data synth`` and ``aptune data check`` end to end, with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

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
        lines = [
            f"{source.root / line}"
            for line in (source.root / f"{split}.csv").read_text().splitlines()
        ]
        if split == "train":
            lines += ["gone.avi 0", "zero.avi 1"]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    config = tmp_path / "recipe.yaml"
    config.write_text(f"data:\n  format: list\n  root: {root}\n  num_workers: 0\n")
    report = tmp_path / "report.json"
    assert (
        main(["data", "check", "--config", str(config), "--json", str(report), "--no-progress"])
        == 1
    )
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
