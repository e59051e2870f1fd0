"""The official training recipe, re-implemented here from its formulas, against aptune's engine.

The reference below is written from the rules of the official code (VideoMAE's and APT's
``run_class_*.py``, ``optim_factory.py`` and ``utils.cosine_scheduler``), not from aptune:

* lr-scaling batch = batch_size x update_freq x world_size (repeated-augmentation samples
  do not count); ``lr`` and ``min_lr`` are both multiplied by it / 256;
* parameter groups: trainable tensors only; no weight decay for 1-D tensors, names ending
  in ``.bias`` and ``pos_embed``/``cls_token``; with layer decay d, a tensor of layer id j
  gets lr scale d^(L + 1 - j) (id 0: patch embedding, i + 1: block i, L + 1: the rest);
* per step i: lr = schedule[i] x lr_scale with schedule = linspace(0, peak, W) followed by
  min + (peak - min)(1 + cos(pi k / R)) / 2, k < R; weight decay (groups that decay) =
  the same cosine from its start to end value over all steps;
* label-smoothed cross-entropy, divided by update_freq, summed over the micro-batches of a
  step; AdamW.

aptune's real training loop (``TrainLoop.run_epoch``) runs the same recipe on an identical
copy of a tiny model; the parameters after every optimiser step must agree to ~1e-6.
Dropout and drop path are off so that both sides do the same arithmetic.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_, tiny_model
from torch.utils.data import Dataset

from aptune.config import config_from_dict, switch_method
from aptune.data import TrainItem
from aptune.engine.checkpoint import TrainState
from aptune.engine.distributed import DistInfo
from aptune.engine.loaders import DataBundle
from aptune.engine.loop import TrainLoop, build_optimisation
from aptune.engine.metrics import MetricsLog
from aptune.engine.trainer import ClassificationLoss

NUM_VIDEOS, NUM_CLASSES = 24, 5


class FixedClips(Dataset):
    """Videos whose clips are fixed tensors: the batches are the same however often they are read."""

    def __init__(self, num_sample: int) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.clips = torch.randn(NUM_VIDEOS, num_sample, 3, 4, 32, 32, generator=generator)
        self.labels = torch.randint(0, NUM_CLASSES, (NUM_VIDEOS,), generator=generator)

    def __len__(self) -> int:
        return NUM_VIDEOS

    def __getitem__(self, index: int) -> TrainItem:
        return TrainItem(self.clips[index].clone(), int(self.labels[index]), ())


# ------------------------------------------------------------------ the reference
def official_lr_schedule(
    peak: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: int
) -> np.ndarray:
    warmup = warmup_epochs * steps_per_epoch
    warmup_values = np.linspace(0, peak, warmup) if warmup_epochs > 0 else np.array([])
    rest = np.arange(epochs * steps_per_epoch - warmup)
    cosine = np.array([final + 0.5 * (peak - final) * (1 + math.cos(math.pi * i / len(rest))) for i in rest])
    return np.concatenate([warmup_values, cosine])


def official_groups(model, weight_decay: float, layer_decay: float) -> list[dict]:
    depth = len(model.blocks)
    scales = [layer_decay ** (depth + 1 - j) for j in range(depth + 2)]

    def layer_of(name: str) -> int:
        if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks"):
            return int(name.split(".")[1]) + 1
        return depth + 1

    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = len(param.shape) == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
        key = ("no_decay" if no_decay else "decay") + (f"_{layer_of(name)}" if layer_decay < 1 else "")
        scale = scales[layer_of(name)] if layer_decay < 1 else 1.0
        groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale})[
            "params"
        ].append(param)
    return list(groups.values())


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    log_probs = F.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(1, target[:, None]).squeeze(1)
    return ((1 - smoothing) * nll - smoothing * log_probs.mean(dim=-1)).mean()


def run_reference(model, micro_batches, recipe: dict, steps_per_epoch: int) -> list[dict]:
    optim, train = recipe["optim"], recipe["train"]
    total_batch = train["batch_size"] * train["accum_steps"] * 1  # one rank
    peak, final = optim["base_lr"] * total_batch / 256, optim["min_lr"] * total_batch / 256
    lrs = official_lr_schedule(peak, final, train["epochs"], steps_per_epoch, optim["warmup_epochs"])
    wd_end = optim.get("weight_decay_end", optim["weight_decay"])
    wds = official_lr_schedule(optim["weight_decay"], wd_end, train["epochs"], steps_per_epoch, 0)
    optimizer = torch.optim.AdamW(
        official_groups(model, optim["weight_decay"], optim.get("layer_decay", 1.0)),
        lr=peak,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    update_freq = train["accum_steps"]
    snapshots = []
    for index, (clips, labels) in enumerate(micro_batches):
        step = index // update_freq
        for group in optimizer.param_groups:
            group["lr"] = lrs[step] * group["lr_scale"]
            if group["weight_decay"] > 0:
                group["weight_decay"] = wds[step]
        loss = smoothed_cross_entropy(model(clips), labels, train["label_smoothing"]) / update_freq
        loss.backward()
        if (index + 1) % update_freq == 0:
            optimizer.step()
            optimizer.zero_grad()
            snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    return snapshots


# ------------------------------------------------------------------ aptune
def run_aptune(model, recipe: dict) -> tuple[list[dict], list, int]:
    config = config_from_dict(recipe, source="trajectory test")
    info = DistInfo()
    dataset = FixedClips(config.data.num_sample)
    data = DataBundle(dataset, None, None, [str(i) for i in range(NUM_CLASSES)])
    optimizer, schedule, scaler, steps_per_epoch = build_optimisation(config, model, len(dataset), info)
    loop = TrainLoop(
        config,
        model,
        model,
        optimizer,
        schedule,
        scaler,
        torch.device("cpu"),
        data,
        info,
        MetricsLog(None, enabled=False),
        ClassificationLoss(config, NUM_CLASSES),
    )
    seen, snapshots = [], []
    forward, optimizer_step = loop.forward, loop.optimizer_step

    def recording_forward(batch):
        seen.append((batch.clips.clone(), batch.labels.clone()))
        return forward(batch)

    def recording_step():
        optimizer_step()
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    loop.forward, loop.optimizer_step = recording_forward, recording_step
    state = TrainState()
    for epoch in range(config.train.epochs):
        loop.run_epoch(epoch, state, steps_per_epoch)
    return snapshots, seen, steps_per_epoch


def recipe(method: str, **optim) -> dict:
    return {
        "model": {
            "arch": None,
            "embed_dim": 32,
            "depth": 3,
            "num_heads": 4,
            "num_frames": 4,
            "img_size": 32,
            "patch_size": 16,
        },
        "method": switch_method({"name": "apt", "num_prompts": 3, "prompt_dropout": 0.0, "reparam": True}, method),
        "data": {"num_frames": 4, "input_size": 32, "short_side_size": 32, "num_workers": 0, "num_sample": 2},
        "optim": {"name": "adamw", "base_lr": 0.05, "weight_decay": 0.05, "warmup_epochs": 1, "min_lr": 1e-3, **optim},
        "train": {"epochs": 4, "batch_size": 4, "accum_steps": 1, "label_smoothing": 0.1, "seed": 3},
    }


CASES = {
    # APT's scripts: AdamW, base lr scaled, every >1-D tensor decayed (the prompt scales too)
    "apt": recipe("apt"),
    # the same with gradient accumulation: two micro-batches of 2 videos per step
    "apt, accumulated": {**recipe("apt"), "train": {**recipe("apt")["train"], "batch_size": 2, "accum_steps": 2}},
    # VideoMAE full fine-tuning: layer-wise lr decay; here also a weight-decay schedule
    "full": recipe("full", base_lr=0.01, layer_decay=0.75, weight_decay_end=0.2),
    # the official linear probe: AdamW on fc_norm and head
    "linear": recipe("linear", base_lr=0.01, weight_decay=1e-5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parameters_follow_the_official_trajectory_step_by_step(name):
    case = copy.deepcopy(CASES[name])
    torch.manual_seed(0)
    model = tiny_model(
        case["method"]["name"],
        num_classes=NUM_CLASSES,
        depth=3,
        **({"num_prompts": 3, "prompt_dropout": 0.0} if case["method"]["name"] == "apt" else {}),
    )
    randomize_(model, seed=1)  # non-trivial values everywhere, the head included
    reference_model = copy.deepcopy(model)
    got, batches, steps_per_epoch = run_aptune(model, case)
    expected = run_reference(reference_model, batches, case, steps_per_epoch)
    assert steps_per_epoch == NUM_VIDEOS // (case["train"]["batch_size"] * case["train"]["accum_steps"])
    assert len(got) == len(expected) == steps_per_epoch * case["train"]["epochs"] >= 20
    moved = False
    for step, (ours, theirs) in enumerate(zip(got, expected)):
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(
                ours[key], theirs[key], rtol=1e-6, atol=1e-6, msg=lambda m, k=key, s=step: f"step {s + 1}, {k}: {m}"
            )
        moved = moved or any(not torch.equal(ours[k], got[0][k]) for k in ours)
    assert moved  # the parameters really changed along the way


@pytest.mark.parametrize("world_size, accum, num_sample", [(1, 1, 2), (2, 1, 2), (4, 2, 1), (8, 1, 2)])
def test_lr_scaling_counts_videos_per_step_not_repeated_samples(world_size, accum, num_sample):
    config = config_from_dict(
        {
            **recipe("apt"),
            "data": {**recipe("apt")["data"], "num_sample": num_sample},
            "train": {**recipe("apt")["train"], "accum_steps": accum, "batch_size": 3},
        }
    )
    model = tiny_model("apt", num_classes=NUM_CLASSES, num_prompts=3)
    info = DistInfo(rank=0, world_size=world_size)
    _, schedule, _, steps_per_epoch = build_optimisation(config, model, 960, info)
    total_batch = 3 * accum * world_size  # the official args.batch_size * update_freq * world size
    assert steps_per_epoch == 960 // total_batch
    assert schedule.base_lr == pytest.approx(0.05 * total_batch / 256)
    assert schedule.min_lr == pytest.approx(1e-3 * total_batch / 256)


def test_accumulated_gradients_equal_the_large_batch_ones():
    """2 micro-batches of 2 videos, loss / 2 each, give the gradient of one batch of 4."""
    grads = {}
    for batch_size, accum in ((4, 1), (2, 2)):
        case = copy.deepcopy(CASES["apt"])
        case["train"].update(batch_size=batch_size, accum_steps=accum, epochs=1)
        torch.manual_seed(0)
        model = tiny_model("apt", num_classes=NUM_CLASSES, num_prompts=3, prompt_dropout=0.0)
        randomize_(model, seed=1)
        config = config_from_dict(case)
        data = DataBundle(FixedClips(config.data.num_sample), None, None, [str(i) for i in range(NUM_CLASSES)])
        optimizer, schedule, scaler, steps = build_optimisation(config, model, NUM_VIDEOS, DistInfo())
        loop = TrainLoop(
            config,
            model,
            model,
            optimizer,
            schedule,
            scaler,
            torch.device("cpu"),
            data,
            DistInfo(),
            MetricsLog(None, enabled=False),
            ClassificationLoss(config, NUM_CLASSES),
        )
        captured = []

        def capture_then_stop(model=model, captured=captured):
            captured.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
            raise StopIteration  # one optimiser step is enough

        loop.optimizer_step = capture_then_stop
        with pytest.raises(StopIteration):
            loop.run_epoch(0, TrainState(), steps)
        grads[accum] = captured[0]
    assert grads[1].keys() == grads[2].keys()
    for key in grads[1]:
        torch.testing.assert_close(grads[2][key], grads[1][key], rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads[1].values())
