"""Run folders and runs under hostile conditions: bad output paths, full disks, two writers,
kills at exact points, values out of range, and runs that would train nothing.

Every refusal is one line (``error: ...``), exits non-zero and leaves nothing behind that
the command did not write; a killed run resumes to exactly the uninterrupted result.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from helpers import mounted_tmpfs, tiny_run_config
from safetensors.torch import load_file

from aptune.cli import main as cli_main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A dataset of 12 training videos, a backbone file and the tiny recipe."""
    import aptune
    from aptune.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("runfolder")
    make_synthetic_dataset(root / "ds", format="list", num_classes=4, per_class=5, frames=8, size=(32, 32), seed=1)
    config = tiny_run_config(data={"root": str(root / "ds")}, model={"pretrained": str(root / "backbone.pth")})
    model = aptune.create_model(
        None,
        method="full",
        num_classes=4,
        **{k: v for k, v in config["model"].items() if k not in ("arch", "pretrained")},
    )
    torch.save(
        {
            "model": {
                f"encoder.{k}": v for k, v in model.state_dict().items() if k.startswith(("patch_embed.", "blocks."))
            }
        },
        root / "backbone.pth",
    )
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def run_cli(*args) -> int:
    return cli_main([str(a) for a in args])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert not any(line.startswith("Traceback") for line in err), err
    return lines[0]


# ------------------------------------------------------------------ nothing to train
@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=64", "do not fill one optimiser step"),
        ("train.accum_steps=50", "do not fill one optimiser step"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("optim.base_lr=0", "optim.base_lr must be > 0"),
    ],
)
def test_a_run_that_would_train_nothing_is_refused_before_any_work(setup, tmp_path, capsys, override, message):
    run = tmp_path / "run"
    assert run_cli("train", "--config", setup / "config.yaml", "--set", override, "--output-dir", run) == 2
    assert message in one_error_line(capsys)
    assert not run.exists()  # the folder it would have created is gone again


# ------------------------------------------------------------------ output folders
def test_bad_output_folders_are_one_line_errors(setup, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cases = {
        "": "--output-dir is empty",
        str(a_file): "is a file, not a folder",
        str(a_file / "run"): "a part of the path is a file",
        str(tmp_path / ("x" * 300)): "name is too long",
    }
    for output, message in cases.items():
        assert run_cli("train", "--config", setup / "config.yaml", "--output-dir", output) == 2
        assert message in one_error_line(capsys), output
    assert a_file.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--run", "RUN", "--output-dir", ""],
        ["eval", "--run", "RUN", "--json", " "],
        ["demo", "--quick", "--output-dir", ""],
        ["demo", "--quick", "--cache-dir", ""],
        ["data", "synth", ""],
        ["data", "check", "--config", "CONFIG", "--json", ""],
        ["bench", "--json", ""],
        ["pretrain", "--config", "CONFIG", "--output-dir", ""],
        ["merge", "--adapter", "A", "--pretrained", "B", "--output", ""],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_an_empty_output_path_never_means_the_current_folder(setup, tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    arguments = [
        str(setup / "config.yaml") if a == "CONFIG" else str(tmp_path / a) if a in ("RUN", "A", "B") else a
        for a in command
    ]
    assert run_cli(*arguments) == 2
    assert "is empty" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MiB tmpfs (root and mount(8) needed; skipped otherwise), unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def test_a_read_only_file_system_is_a_one_line_error(setup, small_filesystem, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    assert run_cli("train", "--config", setup / "config.yaml", "--output-dir", small_filesystem / "run") == 2
    assert "read-only" in one_error_line(capsys)


def test_a_full_disk_stops_the_run_in_one_line_and_leaves_no_temporary(setup, small_filesystem, capsys):
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 8 * 1024))  # leave 8 KiB: not enough for a checkpoint
    run = small_filesystem / "run"
    assert run_cli("train", "--config", setup / "config.yaml", "--output-dir", run) == 2
    line = one_error_line(capsys)
    assert "no space left on the device" in line
    assert not list(run.glob(".*.tmp")) if run.exists() else True


def test_a_disk_that_fills_up_mid_run_keeps_the_last_good_checkpoint(setup, tmp_path, capsys, monkeypatch):
    from aptune.engine import checkpoint as checkpoint_module

    saves, original = [], checkpoint_module.torch.save

    def fill_up_on_the_second_save(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", fill_up_on_the_second_save)
    run = tmp_path / "run"
    assert run_cli("train", "--config", setup / "config.yaml", "--output-dir", run) == 2
    line = one_error_line(capsys)
    assert "checkpoint.pt: cannot write (no space left on the device)" in line
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["state"]["epoch"] == 1  # the previous good checkpoint is intact
    assert not list(run.glob(".*.tmp")) and not (run / "metrics.json").exists()
    monkeypatch.setattr(checkpoint_module.torch, "save", original)
    assert run_cli("train", "--config", setup / "config.yaml", "--output-dir", run) == 0  # and it resumes


# ------------------------------------------------------------------ two writers, kills
HOLD_LOCK = """
import sys, time
from aptune.config import load_config
from aptune.engine.runfolder import RunFolder
folder = RunFolder(sys.argv[2])
folder.open(load_config(sys.argv[1]), resume=None)
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_command_on_a_busy_run_folder_refuses_naming_the_holder(setup, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(setup / "config.yaml"), str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in run.iterdir())
        assert run_cli("train", "--config", setup / "config.yaml", "--output-dir", run) == 2
        line = one_error_line(capsys)
        assert f"pid {holder.pid}" in line and "another aptune process" in line
        assert sorted(p.name for p in run.iterdir()) == before  # it wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert (
        run_cli("train", "--config", setup / "config.yaml", "--set", "train.epochs=1", "--output-dir", run) == 0
    )  # the OS freed the lock


KILL_AT = """
import os, signal, sys
from aptune.cli import main
from aptune.engine import trainer
import aptune.fileio as fileio

where, config, output = sys.argv[1:4]
if where == "mid-epoch":  # SIGKILL right after optimiser step 5 (the 2nd of epoch 2; 3 per epoch)
    original_step = trainer.TrainLoop.optimizer_step
    steps = {"n": 0}
    def step(self):
        original_step(self)
        steps["n"] += 1
        if steps["n"] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
    trainer.TrainLoop.optimizer_step = step
elif where == "mid-checkpoint-write":  # SIGKILL between writing the temporary and renaming it
    original_replace = fileio.os.replace
    calls = {"n": 0}
    def replace(source, target):
        if str(target).endswith("checkpoint.pt"):
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return original_replace(source, target)
    fileio.os.replace = replace
sys.exit(main(["train", "--config", config, "--output-dir", output]))
"""


@contextlib.contextmanager
def one_thread():
    """In-process runs use one thread, like the OMP_NUM_THREADS=1 subprocesses they are
    compared with bit for bit (the thread count changes the order of float reductions)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_run(setup, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    with one_thread():
        assert run_cli("train", "--config", setup / "config.yaml", "--output-dir", run) == 0
    return run


@pytest.mark.parametrize("where", ["mid-epoch", "mid-checkpoint-write"])
def test_a_run_killed_at_an_exact_point_resumes_to_the_uninterrupted_result(
    setup, tmp_path, reference_run, where, caplog
):
    script = tmp_path / "kill_at.py"
    script.write_text(KILL_AT)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, str(script), where, str(setup / "config.yaml"), str(run)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run / "metrics.json").exists()
    if where == "mid-checkpoint-write":
        assert list(run.glob(".checkpoint.pt.*.tmp")), "the kill left a temporary behind"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 1
    with caplog.at_level("INFO", logger="aptune"), one_thread():
        assert run_cli("train", "--config", setup / "config.yaml", "--output-dir", run) == 0
    assert any("resumed from" in record.getMessage() for record in caplog.records)
    assert not list(run.glob(".*.tmp"))  # cleaned on start
    expected = json.loads((reference_run / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    for key in ("top1", "top5", "num_videos", "epochs", "per_class_accuracy", "confusion"):
        assert got[key] == expected[key], key
    reference_adapter = load_file(reference_run / "adapter.safetensors")
    for key, value in load_file(run / "adapter.safetensors").items():
        assert torch.equal(value, reference_adapter[key]), key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # the history is not doubled by the resume


def test_a_loss_that_diverges_stops_with_the_last_good_checkpoint(setup, tmp_path, capsys, monkeypatch):
    from aptune.engine import trainer

    calls, original = [], trainer.ClassificationLoss.__call__

    def diverge_in_epoch_two(self, *args, **kwargs):
        calls.append(1)
        loss = original(self, *args, **kwargs)
        return loss * float("inf") if len(calls) == 5 else loss  # 3 steps per epoch: step 2 of epoch 2

    monkeypatch.setattr(trainer.ClassificationLoss, "__call__", diverge_in_epoch_two)
    run = tmp_path / "run"
    assert run_cli("train", "--config", setup / "config.yaml", "--output-dir", run) == 2
    assert "loss became inf at step 5" in one_error_line(capsys)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["state"]["epoch"] == 1 and state["state"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["trainable"].values())


# ------------------------------------------------------------------ values out of range
BAD_VALUES = [
    ("model.num_heads=0", "model.num_heads must be in [1, 1024]"),
    ("model.patch_size=0", "model.patch_size must be in [1,"),
    ("model.tubelet_size=0", "model.tubelet_size must be in [1,"),
    ("model.embed_dim=-8", "model.embed_dim must be"),
    ("model.mlp_ratio=0", "model.mlp_ratio must be in (0, 64]"),
    ("model.head_dropout=1.5", "model.head_dropout must be in"),
    ("model.drop_path_rate=-0.1", "model.drop_path_rate must be in"),
    ("model.num_heads=5", "does not divide"),
    ("method.lora_rank=0", "method.lora_rank must be in [1,"),
    ("method.adapter_dim=-4", "method.adapter_dim must be"),
    ("method.prompt_dropout=1", "method.prompt_dropout must be in"),
    ("method.num_prompts=-1", "method.num_prompts"),
    ("method.prompt_end=-1", "method.prompt_end must be in [0,"),
    ("train.log_every=0", "train.log_every must be in [1,"),
    ("optim.lr=-0.1", "optim.lr must be > 0"),
    ("optim.min_lr=-0.05", "optim.min_lr must be >= 0"),
    ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
    ("optim.warmup_epochs=-3", "optim.warmup_epochs must be in [0,"),
    ("optim.clip_grad=-1", "optim.clip_grad must be > 0"),
    ("optim.clip_grad=0", "optim.clip_grad must be > 0"),
    ("optim.momentum=-0.5", "optim.momentum must be in"),
    ("optim.betas=[0.9,1.0]", "optim.betas[1] must be in"),
    ("optim.betas=[-0.1,0.9]", "optim.betas[0] must be in"),
    ("optim.layer_decay=0", "optim.layer_decay must be in"),
    ("optim.lr=.nan", "optim.lr must be a finite number"),
    ("optim.min_lr=0.5", "is above the peak"),
    ("train.seed=18446744073709551616", "train.seed must be in"),
    ("train.seed=-1", "train.seed must be in"),
    ("data.input_size=8", "smaller than one patch"),
    ("data.short_side_size=16", "smaller than data.input_size"),
    ("data.num_frames=1", "fewer than one tubelet"),
    ("train.device=gpu", "train.device='gpu' is not one of"),
    ("train.label_smoothing=1", "label_smoothing must be in"),
    ("data.max_bad_fraction=2", "data.max_bad_fraction must be in"),
    ("train.mixup=-1", "train.mixup must be >= 0"),
    ("pretrain.decoder_heads=5", "does not divide pretrain.decoder_dim"),
    ("train.epochs=1e400", "train.epochs expects"),
    ("optim.head_lr=0.01", "needs an absolute optim.lr"),
    # typos that would allocate forever: an extra zero or an exponent
    ("model.embed_dim=1000000000", "model.embed_dim must be in [1, 16384]"),
    ("model.depth=100000000", "model.depth must be in [1, 1024]"),
    ("model.mlp_ratio=1e12", "model.mlp_ratio must be in"),
    ("method.num_prompts=100000000", "method.num_prompts must be in"),
    ("data.num_workers=1000000", "data.num_workers must be in [0, 256]"),
    ("data.test_num_segment=10000000", "data.test_num_segment must be in"),
    ("optim.warmup_epochs=1e308", "optim.warmup_epochs must be in"),
    ("model.embed_dim=8192 model.num_heads=16 model.depth=1024", "G parameters (at most 20 G)"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_values_out_of_range_are_one_line_errors_naming_the_key(setup, tmp_path, capsys, override, message):
    overrides = [part for item in override.split() for part in ("--set", item)]
    if override.startswith("optim.head_lr"):
        overrides = ["--set", "optim.lr=null", "--set", "optim.base_lr=0.05", *overrides]
    assert run_cli("train", "--config", setup / "config.yaml", *overrides, "--output-dir", tmp_path / "r") == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_cuda_without_a_gpu_is_a_one_line_error(setup, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert (
        run_cli(
            "train", "--config", setup / "config.yaml", "--set", "train.device=cuda:0", "--output-dir", tmp_path / "r"
        )
        == 2
    )
    assert "no CUDA device is available" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"model:\n  arch: \xff\xfe\n", "is not UTF-8 text"),
        (b"\x00\x01\x02binary\x00", "is binary"),
        (b"model: [unclosed\n", "is not valid YAML"),
        (b"- just\n- a list\n", "expected a mapping of sections"),
    ],
)
def test_unreadable_config_files_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert run_cli("train", "--config", path, "--output-dir", tmp_path / "r") == 2
    line = one_error_line(capsys)
    assert str(path) in line and message in line
    assert run_cli("train", "--config", tmp_path, "--output-dir", tmp_path / "r") == 2  # a folder
    assert "not a regular file" in one_error_line(capsys)


def test_the_pretrainer_refuses_decoder_heads_that_do_not_divide_its_width(setup, tmp_path, capsys):
    assert (
        run_cli(
            "pretrain",
            "--config",
            setup / "config.yaml",
            "--set",
            "pretrain.decoder_heads=7",
            "--output-dir",
            tmp_path / "r",
        )
        == 2
    )
    assert "pretrain.decoder_heads=7 does not divide" in one_error_line(capsys)


def test_a_killed_start_of_the_same_recipe_starts_over_but_another_runs_files_are_refused(setup, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 7, "loss": 1.0}\n')
    (run / "config.yaml").write_text((setup / "config.yaml").read_text())  # this recipe, resolved below
    from aptune.config import load_config, save_config

    save_config(load_config(setup / "config.yaml"), run / "config.yaml")
    assert run_cli("train", "--config", setup / "config.yaml", "--set", "train.epochs=1", "--output-dir", run) == 0
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 7 not in steps  # the killed start's lines are gone, not mixed in

    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("mine\n")
    capsys.readouterr()
    assert run_cli("train", "--config", setup / "config.yaml", "--output-dir", other) == 2
    assert "holds files of another run" in one_error_line(capsys)
    assert (other / "metrics.jsonl").read_text() == "mine\n" and sorted(p.name for p in other.iterdir()) == [
        "metrics.jsonl"
    ]


def test_train_exits_in_seconds_when_interrupted(setup, tmp_path):
    """Ctrl-C ends a run with status 130 and a checkpoint that resumes (not a traceback)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aptune",
            "train",
            "--config",
            str(setup / "config.yaml"),
            "--set",
            "train.epochs=50",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while not (tmp_path / "run" / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "x.mp4", "--top-k", "nan"],
        ["bench", "--frames", "abc"],
        ["data", "bogus"],
        ["data", "synth", "out", "--fps"],
        ["train", "--config"],
        ["eval", "--split", "train"],
        ["nonsense"],
    ],
    ids=lambda c: " ".join(c),
)
def test_usage_errors_are_one_line_too(capsys, command):
    with pytest.raises(SystemExit) as stopped:
        cli_main(command)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: aptune") and "--help" in err[0]
