"""Multi-process runs that fail together: a fault on one gloo rank stops every rank, with one line.

Each test starts two real processes (under ``torchrun``, or by hand with the same
environment) on a tiny model and injects a fault on rank 1 only, in its second epoch,
through a wrapper script that patches aptune before running ``aptune train``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_run_config, tiny_vjepa2

pytestmark = pytest.mark.distributed

STEPS_PER_EPOCH = 4  # 16 training videos / (2 per rank x 2 ranks)

FAULTS = """
import os, sys, torch
from aptune.cli import main
from aptune.engine import loaders, trainer
from aptune.models import vit

where, config, output = sys.argv[1:4]
FAULT_CALL = 5  # the first step of epoch 2: epoch 1 is checkpointed
calls = {"n": 0}

def hit():
    calls["n"] += 1
    return int(os.environ["RANK"]) == 1 and calls["n"] == FAULT_CALL

if where == "data":
    original_item = loaders.SeededItems.__getitem__
    def item(self, index):
        if int(os.environ["RANK"]) == 1 and self.epoch == 1:
            raise ValueError("injected: this clip cannot be augmented")
        return original_item(self, index)
    loaders.SeededItems.__getitem__ = item
elif where == "forward":
    original_forward = vit.VisionTransformer.forward
    def forward(self, x):
        if self.training and hit():
            raise torch.OutOfMemoryError("injected: out of memory in the forward pass")
        return original_forward(self, x)
    vit.VisionTransformer.forward = forward
elif where == "loss":
    original_loss = trainer.ClassificationLoss.__call__
    def loss(self, *args, **kwargs):
        value = original_loss(self, *args, **kwargs)
        return value * float("nan") if hit() else value
    trainer.ClassificationLoss.__call__ = loss
elif where == "backward":
    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()
        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("injected: fault in the backward pass")
    original_backward = trainer.TrainLoop.backward
    def backward(self, loss, accum):
        return original_backward(self, Boom.apply(loss) if hit() else loss, accum)
    trainer.TrainLoop.backward = backward
sys.exit(main(["train", "--config", config, "--output-dir", output]))
"""


@pytest.fixture(scope="module")
def fault_setup(tmp_path_factory):
    from aptune.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("faults")
    make_synthetic_dataset(root / "ds", format="list", num_classes=4, per_class=6, frames=8, size=(32, 32), seed=0)
    config = tiny_run_config(train={"epochs": 3, "batch_size": 2}, data={"root": str(root / "ds")})
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "faults.py").write_text(FAULTS)
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _checkpoint_epoch(run: Path) -> int:
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["trainable"].values())
    return state["state"]["epoch"]


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize(
    "where, message",
    [
        ("data", "ValueError: injected: this clip cannot be augmented"),
        ("forward", "OutOfMemoryError: injected: out of memory in the forward pass"),
        ("loss", "loss became nan"),
        ("backward", "RuntimeError: injected: fault in the backward pass"),
    ],
)
def test_a_fault_on_one_rank_stops_both_with_one_line_and_keeps_the_last_checkpoint(fault_setup, where, message):
    run = fault_setup / f"run-{where}"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(fault_setup / "faults.py"),
        where,
        str(fault_setup / "config.yaml"),
        str(run),
    ]
    started = time.time()
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    elapsed = time.time() - started
    assert result.returncode != 0
    assert elapsed < 60, f"took {elapsed:.0f} s"
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: rank 1: ") and message in errors[0]
    assert "[rank0]" not in result.stderr and "[rank1]" not in result.stderr  # no worker traceback
    assert _checkpoint_epoch(run) == 1  # the last good one: epoch 2 never finished
    assert not (run / "metrics.json").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_without_a_launcher_both_ranks_stop_on_their_own(fault_setup):
    """No torchrun agent to kill the survivor: rank 0 must stop by itself, at the consensus point."""
    run = fault_setup / "run-manual"
    port = _free_port()
    processes = []
    started = time.time()
    for rank in (0, 1):
        env = {
            **_env(),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, str(fault_setup / "faults.py"), "data", str(fault_setup / "config.yaml"), str(run)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [process.communicate(timeout=120) for process in processes]
    assert time.time() - started < 60
    assert [process.returncode for process in processes] == [2, 2]
    assert _error_lines(outputs[0][1]) == []  # rank 0 did not fail: it stays quiet
    (line,) = _error_lines(outputs[1][1])
    assert "rank 1: ValueError: injected" in line and "every rank stopped at step 5 (epoch 2)" in line
    assert _checkpoint_epoch(run) == 1


RANK_CHECK = """
import functools, json, os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from aptune.config import load_config
from aptune.engine import trainer

# inductor's code generation takes minutes on two cores; aot_eager keeps what matters here:
# Dynamo tracing the DDP-wrapped model (split at DDP's buckets) and AOT autograd
torch.compile = functools.partial(torch.compile, backend="aot_eager")
reductions = {"count": 0}
original_init = DistributedDataParallel.__init__
@functools.wraps(original_init)  # aptune reads the signature to pick DDP's buffer-sync option
def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    def counting(state, bucket):
        reductions["count"] += 1
        return allreduce_hook(state, bucket)
    self.register_comm_hook(None, counting)
DistributedDataParallel.__init__ = init

original_finish = trainer.finish
def finish(config, model, *args, **kwargs):
    flat = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], g) for g in gathered), "ranks diverged"
    report = os.path.join(os.path.dirname(sys.argv[2]), f"{os.path.basename(sys.argv[2])}-rank{dist.get_rank()}.json")
    with open(report, "w") as handle:  # one file per rank: lines on a shared stderr can interleave
        json.dump({"rank": dist.get_rank(), "reductions": reductions["count"]}, handle)
    return original_finish(config, model, *args, **kwargs)
trainer.finish = finish
trainer.train(load_config(sys.argv[1], sys.argv[3:]), sys.argv[2])
"""


def _ranks_report(run: Path) -> list[dict]:
    return [json.loads((run.parent / f"{run.name}-rank{rank}.json").read_text()) for rank in (0, 1)]


def _train_two_ranks(tmp_path: Path, config: Path, run: Path, *overrides: str) -> list[dict]:
    script = tmp_path / "check_ranks.py"
    script.write_text(RANK_CHECK)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(config),
        str(run),
        *overrides,
    ]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return _ranks_report(run)


def test_two_ranks_accumulating_and_compiled_match_one_process(tmp_path, fault_setup):
    """1 process x batch 4 == 2 ranks x batch 1 x 2 accumulated micro-batches, compiled with DDP
    wrapped first: the same clips per step, the same lr, the same tensors, and one gradient
    all-reduce per optimiser step (``no_sync`` on the first micro-batch)."""
    from safetensors.torch import load_file

    config = fault_setup / "config.yaml"
    one = ["train.epochs=1", "data.num_sample=2"]
    single = tmp_path / "single"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aptune",
            "train",
            "--config",
            str(config),
            "--output-dir",
            str(single),
            *[f"--set={o}" for o in [*one, "train.batch_size=4"]],
        ],
        check=True,
        env=_env(),
        capture_output=True,
    )
    ranks = _train_two_ranks(
        tmp_path, config, tmp_path / "accum", *one, "train.batch_size=1", "train.accum_steps=2", "train.compile=true"
    )
    # one bucket on this tiny model: one all-reduce per step, not one per micro-batch
    assert [r["reductions"] for r in ranks] == [STEPS_PER_EPOCH, STEPS_PER_EPOCH]
    reference = load_file(single / "adapter.safetensors")
    got = load_file(tmp_path / "accum" / "adapter.safetensors")
    for key in reference:
        torch.testing.assert_close(got[key], reference[key], rtol=1e-4, atol=1e-6)
    single_metrics = json.loads((single / "metrics.json").read_text())
    ddp_metrics = json.loads((tmp_path / "accum" / "metrics.json").read_text())
    assert ddp_metrics["num_videos"] == single_metrics["num_videos"]  # every video scored once
    assert ddp_metrics["confusion"] == single_metrics["confusion"]


CLASSIFIER_ADAPTER_KEYS = {
    *("kv_prompts.keys", "kv_prompts.values", "kv_prompts.scales"),
    *("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"),
}


def test_two_ranks_on_a_transformers_folder_match_one_process(tmp_path, fault_setup):
    """A V-JEPA 2 folder trained through transformers (aptune's TransformersVideoClassifier):
    2 ranks x batch 2 end with the tensors of 1 process x batch 2 x 2 accumulated micro-batches
    (the same global batch of 4), and the ranks with each other's.  Prompts start from training
    tokens through the attention interface (``prompt_init: tokens``), from the first
    train.batch_size clips on both sides.  (``train.compile`` on this classifier is tested in
    one process, tests/test_transformers_video.py: under DDP here it would add ~5 s.)"""
    from safetensors.torch import load_file

    from aptune.cli import main

    folder = tmp_path / "vjepa2"
    tiny_vjepa2().save_pretrained(folder)
    config = tiny_run_config(
        train={"epochs": 1, "batch_size": 2},
        data={"root": str(fault_setup / "ds"), "num_sample": 2},
        method={"prompt_init": "tokens"},
    )
    config["model"] = {"arch": None, "pretrained": str(folder)}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    single = tmp_path / "single"
    assert main(["train", "--config", str(path), "--output-dir", str(single), "--set=train.accum_steps=2"]) == 0
    ranks = _train_two_ranks(tmp_path, path, tmp_path / "ddp")
    assert [r["reductions"] for r in ranks] == [STEPS_PER_EPOCH, STEPS_PER_EPOCH]  # every rank took every step
    reference = load_file(single / "adapter.safetensors")
    got = load_file(tmp_path / "ddp" / "adapter.safetensors")
    assert set(got) == set(reference) == CLASSIFIER_ADAPTER_KEYS
    for key in reference:
        torch.testing.assert_close(got[key], reference[key], rtol=1e-4, atol=1e-6)
    single_metrics = json.loads((single / "metrics.json").read_text())
    ddp_metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp_metrics["num_videos"] == single_metrics["num_videos"] > 0
    assert ddp_metrics["confusion"] == single_metrics["confusion"]
