"""aptune eval / predict on a tiny adapter and a synthetic dataset: exit codes, strict JSON, one-line
errors for bad flags and full disks, and class names that cannot reach the terminal raw."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
import yaml
from helpers import TINY, mounted_tmpfs, randomize_, tiny_model

import aptune
from aptune.cli import main

PREPROCESS = {
    "format": "list",
    "sampling": "dense",
    "num_frames": 4,
    "sampling_rate": 1,
    "input_size": 32,
    "short_side_size": 32,
    "test_num_segment": 1,
    "test_num_crop": 1,
}
HOSTILE = ["\x1b[2J\x1b[Hfake output", "two\nlines", "moving down"]


def strict_json(text: str):
    """json.loads that refuses NaN and infinities, as strict parsers (JavaScript, Go, jq) do."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from aptune.data.synth import make_synthetic_dataset

    folder = tmp_path_factory.mktemp("evalpredict")
    dataset = make_synthetic_dataset(
        folder / "data", format="list", num_classes=3, per_class=4, frames=8, size=(32, 32), seed=0
    )
    model = tiny_model("apt", num_classes=3, num_prompts=2).eval()
    randomize_(model, seed=3)
    model.class_names = list(dataset.class_names)
    backbone = folder / "backbone.pth"
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}, backbone)
    adapter = aptune.save_adapter(model, folder / "adapter.safetensors", preprocess=PREPROCESS)
    model.class_names = HOSTILE
    hostile = aptune.save_adapter(model, folder / "hostile.safetensors", preprocess=PREPROCESS)

    bad = folder / "bad_data"
    shutil.copytree(dataset.root, bad)
    for video in (bad / "videos").rglob("*.avi"):
        video.write_bytes(b"not a video at all")
    config = {
        "model": {"arch": None, **TINY, "pretrained": str(backbone)},
        "method": {"name": "apt", "num_prompts": 2},
        "data": {
            "format": "list",
            "root": str(dataset.root),
            "num_frames": 4,
            "sampling_rate": 1,
            "input_size": 32,
            "short_side_size": 32,
            "num_workers": 0,
            "test_num_segment": 1,
            "test_num_crop": 1,
        },
        "train": {"device": "cpu"},
    }
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    videos = sorted(str(v) for v, _ in dataset.videos)
    return {
        "dataset": dataset,
        "backbone": backbone,
        "adapter": adapter,
        "hostile": hostile,
        "config": config_path,
        "bad": bad,
        "videos": videos,
        "bad_videos": sorted(str(v) for v in (bad / "videos").rglob("*.avi")),
    }


def run(*args) -> int:
    return main([str(a) for a in args])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs filled to the last byte; skipped where tmpfs cannot be mounted."""
    with mounted_tmpfs(tmp_path / "full", "64k", fill=True) as mount:
        yield mount


# ------------------------------------------------------------------------- eval
def test_eval_writes_strict_json_into_folders_it_creates(setup, tmp_path, capsys):
    target = tmp_path / "not" / "yet" / "there" / "eval.json"
    assert (
        run(
            "eval",
            "--config",
            setup["config"],
            "--adapter",
            setup["adapter"],
            "--output-dir",
            tmp_path / "out",
            "--json",
            target,
        )
        == 0
    )
    summary = strict_json(target.read_text())
    assert summary["num_videos"] == 3 and summary["skipped_videos"] == 0
    assert 0 <= summary["top1"] <= 100
    metrics = strict_json((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["class_names"] == list(setup["dataset"].class_names)
    assert "videos 3" in capsys.readouterr().out


def test_eval_of_a_split_with_no_readable_video_writes_null_and_exits_1(setup, tmp_path, capsys):
    out = tmp_path / "out"
    status = run(
        "eval",
        "--config",
        setup["config"],
        "--adapter",
        setup["adapter"],
        "--set",
        f"data.root={setup['bad']}",
        "--set",
        "data.max_bad_fraction=1.0",
        "--output-dir",
        out,
        "--json",
        tmp_path / "summary.json",
    )
    assert status == 1
    assert "0 videos evaluated (3 could not be decoded)" in capsys.readouterr().out
    for path in (out / "metrics.json", tmp_path / "summary.json"):
        values = strict_json(path.read_text())
        assert values["top1"] is None and values["top5"] is None and values["num_videos"] == 0, path
        assert values["skipped_videos"] == 3
    report = (out / "report.md").read_text()
    assert "0 videos evaluated" in report and "nan" not in report.lower()


@pytest.mark.parametrize("where", ["json", "output-dir"])
def test_eval_onto_a_full_disk_is_a_one_line_error(setup, tmp_path, capsys, monkeypatch, where):
    import aptune.fileio

    monkeypatch.setattr(aptune.fileio.os, "fsync", no_space)
    extra = ["--json", tmp_path / "eval.json"] if where == "json" else ["--output-dir", tmp_path / "out"]
    assert run("eval", "--config", setup["config"], "--adapter", setup["adapter"], *extra) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "cannot write (no space left on the device)" in errors[0]
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "out" / "metrics.json").exists()


def test_eval_json_onto_a_real_full_disk(setup, full_disk, capsys):
    assert (
        run("eval", "--config", setup["config"], "--adapter", setup["adapter"], "--json", full_disk / "eval.json") == 2
    )
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "no space left" in errors[0]
    assert not (full_disk / "eval.json").exists()


def test_eval_refuses_another_backbone_unless_allowed(setup, tmp_path, capsys, caplog):
    other = tiny_model("apt", num_classes=3, num_prompts=2)
    weights = tmp_path / "other.pth"
    torch.save({k: v for k, v in other.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}, weights)
    assert run("eval", "--config", setup["config"], "--adapter", setup["adapter"], "--pretrained", weights) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "fingerprint" in errors[0] and "--allow-backbone-mismatch" in errors[0]
    assert (
        run(
            "eval",
            "--config",
            setup["config"],
            "--adapter",
            setup["adapter"],
            "--pretrained",
            weights,
            "--allow-backbone-mismatch",
        )
        == 0
    )
    assert "allowed by allow_backbone_mismatch" in caplog.text  # still said, as a warning


def test_eval_names_hostile_class_names_escaped(setup, capsys):
    assert run("eval", "--config", setup["config"], "--adapter", setup["hostile"]) == 2
    err = capsys.readouterr().err
    errors = error_lines(err)
    assert len(errors) == 1 and "\\x1b[2J" in errors[0] and "\x1b" not in err


def test_eval_report_escapes_the_datas_class_names(setup, tmp_path):
    from aptune.engine.evaluate import render_report

    metrics = {
        "method": "apt",
        "top1": 50.0,
        "top5": 100.0,
        "num_videos": 2,
        "skipped_videos": 0,
        "trainable_params": 1,
        "total_params": 2,
        "gflops_per_view": 0.1,
        "epochs": None,
        "train_seconds": None,
        "per_class_accuracy": {HOSTILE[0]: 0.0, HOSTILE[1]: 100.0},
    }
    config = aptune.config.load_config(setup["config"])
    report = render_report(metrics, {}, tmp_path, config)
    assert "\x1b" not in report and "two\\nlines" in report and "\\x1b[2J" in report


# ---------------------------------------------------------------------- predict
def test_predict_exits_1_when_no_video_could_be_scored(setup, capsys):
    assert (
        run("predict", *setup["bad_videos"][:2], "--adapter", setup["adapter"], "--pretrained", setup["backbone"]) == 1
    )
    captured = capsys.readouterr()
    assert captured.out.count("not evaluated") == 2
    errors = error_lines(captured.err)
    assert len(errors) == 1 and "none of the 2 videos could be scored" in errors[0]
    assert (
        run(
            "predict",
            setup["bad_videos"][0],
            "/no/such/video.mp4",
            "--adapter",
            setup["adapter"],
            "--pretrained",
            setup["backbone"],
            "--json",
        )
        == 1
    )
    answers = json.loads(capsys.readouterr().out)
    assert [("error" in a) for a in answers] == [True, True]


def test_predict_with_some_videos_scored_exits_0(setup, capsys):
    assert (
        run(
            "predict",
            setup["bad_videos"][0],
            setup["videos"][0],
            "--adapter",
            setup["adapter"],
            "--pretrained",
            setup["backbone"],
            "--top-k",
            "2",
            "--json",
        )
        == 0
    )
    answers = json.loads(capsys.readouterr().out)
    assert "error" in answers[0] and len(answers[1]["top"]) == 2


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--top-k", "-1"], "--top-k must be a positive integer, got -1"),
        (["--top-k", "0"], "--top-k must be a positive integer, got 0"),
        (["--device", "gpu"], "'gpu'"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:999"], "cuda"),
        (["--device", "tpu:1"], "'tpu:1'"),
    ],
    ids=["top-k-negative", "top-k-zero", "device-gpu", "device-cuda-missing", "device-tpu"],
)
def test_predict_bad_flags_are_one_line_errors(setup, capsys, flags, words):
    assert (
        run("predict", setup["videos"][0], "--adapter", setup["adapter"], "--pretrained", setup["backbone"], *flags)
        == 2
    )
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and words in errors[0], errors


def test_predict_prints_class_names_escaped_and_json_keeps_them_exact(setup, capsys):
    assert (
        run(
            "predict",
            setup["videos"][0],
            "--adapter",
            setup["hostile"],
            "--pretrained",
            setup["backbone"],
            "--top-k",
            "3",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\\x1b[2J\\x1b[Hfake output" in out and "two\\nlines" in out
    assert len(out.splitlines()) == 4  # the video, then one line per class: no name breaks a line
    assert (
        run(
            "predict",
            setup["videos"][0],
            "--adapter",
            setup["hostile"],
            "--pretrained",
            setup["backbone"],
            "--top-k",
            "3",
            "--json",
        )
        == 0
    )
    answers = json.loads(capsys.readouterr().out)
    assert {entry["class"] for entry in answers[0]["top"]} == set(HOSTILE)


def test_predict_refuses_another_backbone_unless_allowed(setup, tmp_path, capsys):
    other = tiny_model("apt", num_classes=3, num_prompts=2)
    weights = tmp_path / "other.pth"
    torch.save({k: v for k, v in other.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}, weights)
    assert run("predict", setup["videos"][0], "--adapter", setup["adapter"], "--pretrained", weights) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "fingerprint" in errors[0]
    assert (
        run(
            "predict",
            setup["videos"][0],
            "--adapter",
            setup["adapter"],
            "--pretrained",
            weights,
            "--allow-backbone-mismatch",
        )
        == 0
    )


def test_predict_refuses_a_crafted_adapter_in_one_line(setup, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(setup["adapter"]), framework="pt") as handle:
        meta = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    for key, value in (
        ("format_version", "x"),
        ("arch", "[]"),
        ("preprocess", json.dumps({**PREPROCESS, "num_frames": 0})),
    ):
        save_file(tensors, str(tmp_path / "crafted.safetensors"), metadata={**meta, key: value})
        assert (
            run(
                "predict",
                setup["videos"][0],
                "--adapter",
                tmp_path / "crafted.safetensors",
                "--pretrained",
                setup["backbone"],
            )
            == 2
        )
        errors = error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and "crafted.safetensors" in errors[0] and key in errors[0]
