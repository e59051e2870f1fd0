"""Optimiser groups, the lr schedule, and the classifier's data-dependent start."""

import math

import pytest
import torch
from helpers import randomize_, tiny_clip, tiny_model

from aptune.engine.optim import CosineSchedule, build_optimizer, cosine_with_warmup
from aptune.engine.trainer import classifier_lr, standardize_head_inputs


def _groups_by_tensor(optimizer):
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


def test_no_decay_on_one_dimensional_tensors_and_the_head_has_its_own_lr():
    model = tiny_model("apt", num_prompts=2)
    optimizer = build_optimizer(model, "adamw", lr=0.05, weight_decay=0.1, head_lr=0.01)
    schedule = CosineSchedule(optimizer, total_steps=10, warmup_steps=0, base_lr=0.05, min_lr=0.0)
    groups = _groups_by_tensor(optimizer)
    named = dict(model.named_parameters())
    assert groups[id(named["head.weight"])]["lr"] == pytest.approx(0.01)
    assert groups[id(named["fc_norm.bias"])]["lr"] == pytest.approx(0.01)
    assert groups[id(named["kv_prompts.keys"])]["lr"] == pytest.approx(0.05)
    assert groups[id(named["kv_prompts.keys"])]["weight_decay"] == 0.1
    for one_dim in ("kv_prompts.scales", "head.bias", "fc_norm.weight"):
        assert groups[id(named[one_dim])]["weight_decay"] == 0.0, one_dim
    assert not any(id(p) in groups for n, p in named.items() if not p.requires_grad)
    for _ in range(5):
        schedule.step()
    half = cosine_with_warmup(5, 10, 0, 0.05, 0.0)
    assert groups[id(named["head.weight"])]["lr"] == pytest.approx(half * 0.01 / 0.05)
    assert groups[id(named["kv_prompts.keys"])]["lr"] == pytest.approx(half)
    assert classifier_lr(optimizer) == pytest.approx(half * 0.01 / 0.05)  # what the progress log shows


def test_without_head_lr_every_group_follows_lr():
    model = tiny_model("full")
    optimizer = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0)
    CosineSchedule(optimizer, total_steps=4, warmup_steps=2, base_lr=0.1, min_lr=0.0)
    assert [group["lr"] for group in optimizer.param_groups] == [pytest.approx(0.05)] * 2  # decayed or not
    assert classifier_lr(optimizer) is None  # the log then shows one lr


def test_schedule_warms_up_linearly_then_decays_to_min_lr():
    values = [cosine_with_warmup(step, 10, 2, 1.0, 0.1) for step in range(11)]
    assert values[:2] == [0.5, 1.0]
    assert values[2] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[2:], values[3:]))
    assert values[6] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))


def test_standardized_fc_norm_gives_features_of_zero_mean_and_unit_std():
    model = tiny_model("linear", embed_dim=32).train()
    randomize_(model)
    batches = [tiny_clip(batch=8, seed=s) for s in range(3)]
    with torch.no_grad():
        before = torch.cat([model.eval().forward_features(b) for b in batches])
    model.train()
    standardize_head_inputs(model, batches)
    assert model.training
    with torch.no_grad():
        after = torch.cat([model.eval().forward_features(b) for b in batches])
    assert before.std(dim=0).sub(1).abs().max() > 0.1  # there was something to correct
    torch.testing.assert_close(after.mean(dim=0), torch.zeros(32), atol=1e-4, rtol=0)
    torch.testing.assert_close(after.std(dim=0), torch.ones(32), atol=1e-3, rtol=0)  # BatchNorm eps
