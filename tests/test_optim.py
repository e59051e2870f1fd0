"""Optimiser groups, the lr and weight-decay schedules, and the classifier's data-dependent start.

The expected values are written from the official recipe's formulas (VideoMAE / APT
``optim_factory.py`` and ``utils.cosine_scheduler``), not from aptune's code.
"""

import math

import numpy as np
import pytest
import torch
from helpers import randomize_, tiny_clip, tiny_model

from aptune.engine.optim import (
    CosineSchedule,
    build_optimizer,
    classifier_lr,
    lr_at,
    weight_decay_at,
)
from aptune.engine.trainer import standardize_head_inputs


def _groups_by_name(model, optimizer):
    by_id = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def test_every_tensor_of_more_than_one_dimension_that_is_not_a_bias_is_decayed():
    model = tiny_model("apt", num_prompts=2)
    groups = _groups_by_name(model, build_optimizer(model, "adamw", lr=0.05, weight_decay=0.1))
    expected = {
        name: p.ndim > 1 and not name.endswith(".bias") for name, p in model.named_parameters() if p.requires_grad
    }
    assert set(groups) == set(expected)  # frozen tensors never reach the optimiser
    assert expected["kv_prompts.scales"]  # (layers, 2, P): the official code decays it
    for name, decays in expected.items():
        assert groups[name]["weight_decay"] == (0.1 if decays else 0.0), name


def test_exempting_the_prompt_scales_is_an_explicit_option():
    model = tiny_model("apt", num_prompts=2)
    groups = _groups_by_name(
        model, build_optimizer(model, "adamw", lr=0.05, weight_decay=0.1, decay_prompt_scales=False)
    )
    assert groups["kv_prompts.scales"]["weight_decay"] == 0.0
    assert groups["kv_prompts.keys"]["weight_decay"] == 0.1


def test_layer_decay_scales_each_block_by_the_official_exponent():
    model = tiny_model("full")  # depth 3
    decay = 0.75
    groups = _groups_by_name(model, build_optimizer(model, "adamw", lr=1.0, weight_decay=0.05, layer_decay=decay))
    depth = 3
    expected = {
        "patch_embed.proj.weight": decay ** (depth + 1),  # layer id 0
        "blocks.0.attn.qkv.weight": decay**depth,  # layer id 1
        "blocks.2.mlp.fc2.bias": decay**1,  # layer id 3
        "fc_norm.weight": 1.0,
        "head.weight": 1.0,
    }  # layer id depth + 1
    for name, scale in expected.items():
        assert groups[name]["lr_scale"] == pytest.approx(scale), name


def test_the_head_lr_scale_rides_on_the_classifier_groups_only():
    model = tiny_model("apt", num_prompts=2)
    optimizer = build_optimizer(model, "adamw", lr=0.05, weight_decay=0.1, head_lr_scale=0.2)
    schedule = CosineSchedule(optimizer, total_steps=10, warmup_steps=0, base_lr=0.05, min_lr=0.0)
    groups = _groups_by_name(model, optimizer)
    for _ in range(5):
        schedule.step()
    body = lr_at(5, 10, 0, 0.05, 0.0)
    assert groups["kv_prompts.keys"]["lr"] == pytest.approx(body)
    assert groups["head.weight"]["lr"] == pytest.approx(body * 0.2)
    assert groups["fc_norm.bias"]["lr"] == pytest.approx(body * 0.2)
    assert classifier_lr(optimizer) == pytest.approx(body * 0.2)  # what the progress log shows


def test_without_a_head_lr_every_group_follows_the_schedule():
    model = tiny_model("full")
    optimizer = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0)
    CosineSchedule(optimizer, total_steps=4, warmup_steps=3, base_lr=0.1, min_lr=0.0)
    assert [group["lr"] for group in optimizer.param_groups] == [0.0] * len(optimizer.param_groups)
    assert classifier_lr(optimizer) is None  # the log then shows one lr


def _official_lr(total: int, warmup: int, peak: float, min_lr: float) -> np.ndarray:
    """np.linspace(0, peak, W), then min + (peak - min)(1 + cos(pi i / R)) / 2 for i < R."""
    remaining = np.arange(total - warmup)
    cosine = min_lr + 0.5 * (peak - min_lr) * (1 + np.cos(np.pi * remaining / len(remaining)))
    return np.concatenate([np.linspace(0, peak, warmup), cosine])


@pytest.mark.parametrize("total, warmup", [(20, 5), (7, 1), (12, 0), (30, 10)])
def test_the_lr_of_every_step_is_the_official_schedule(total, warmup):
    expected = _official_lr(total, warmup, 0.4, 0.01)
    got = np.array([lr_at(step, total, warmup, 0.4, 0.01) for step in range(total)])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    if warmup > 1:
        assert got[0] == 0.0 and got[warmup - 1] == pytest.approx(0.4)


def test_the_weight_decay_follows_a_cosine_to_its_end_value_on_decayed_groups_only():
    total = 8
    expected = [0.01 + 0.5 * (0.05 - 0.01) * (1 + math.cos(math.pi * i / total)) for i in range(total)]
    assert [weight_decay_at(i, total, 0.05, 0.01) for i in range(total)] == pytest.approx(expected)
    assert [weight_decay_at(i, total, 0.05, None) for i in range(total)] == [0.05] * total
    model = tiny_model("apt", num_prompts=2)
    optimizer = build_optimizer(model, "adamw", lr=0.1, weight_decay=0.05)
    schedule = CosineSchedule(
        optimizer, total_steps=total, warmup_steps=0, base_lr=0.1, min_lr=0.0, weight_decay_end=0.01
    )
    groups = _groups_by_name(model, optimizer)
    for step in range(1, 4):
        schedule.step()
        assert groups["kv_prompts.keys"]["weight_decay"] == pytest.approx(expected[step])
        assert groups["head.bias"]["weight_decay"] == 0.0


@pytest.mark.parametrize("head", ["linear", "attentive"])
def test_standardized_fc_norm_gives_features_of_zero_mean_and_unit_std(head):
    # attentive: what is standardised is the probe's output at its start, as it reaches the classifier
    model = tiny_model("linear", embed_dim=32, head=head).train()
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


def test_a_method_names_the_tensors_it_keeps_out_of_weight_decay():
    model = tiny_model("lora")
    assert _groups_by_name(model, build_optimizer(model, "adamw", lr=0.05, weight_decay=0.1))["qkv_adapters.down"][
        "weight_decay"
    ] == pytest.approx(0.1)
    model.tuning_method.NO_WEIGHT_DECAY = ("qkv_adapters.down",)  # as a method class would declare it
    groups = _groups_by_name(model, build_optimizer(model, "adamw", lr=0.05, weight_decay=0.1))
    assert groups["qkv_adapters.down"]["weight_decay"] == 0.0
    assert groups["qkv_adapters.up"]["weight_decay"] == pytest.approx(0.1)
