"""What aptune 0.1.0 wrote, today's code must read and reproduce, to the bit.

``tests/fixtures/release_0_1_0/`` was written by ``make.py`` there at commit 59caa43, before
the redesign of issue 16: a random tiny backbone, one adapter per method, their logits on a
fixed clip, multi-task and injected-model logits, multiply-add counts of ViT-S/B and a run
folder's recipe.  Each test rebuilds a model as a user would and compares exactly: the
redesign promised no change in what any method computes, saves or counts.  (The comparison
is exact on the CPU build the fixtures were made with; another kernel family could differ
in the last bit, which would show here first.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY
from safetensors import safe_open
from safetensors.torch import load_file

import aptune
from aptune.config import load_config
from aptune.flops import count_macs

FIXTURES = Path(__file__).parent / "fixtures" / "release_0_1_0"
CASES = {  # as in make.py: the options each adapter was trained with
    "apt": {"num_prompts": 3, "prompt_start": 1},
    "apt-noreparam": {"num_prompts": 2, "reparam": False},
    "vpt-shallow": {"num_prompts": 2, "prompt_start": 1},
    "vpt-deep": {"num_prompts": 2},
    "linear": {},
    "full": {},
    "lora": {"lora_rank": 2, "prompt_start": 1},
    "adaptformer": {"adapter_dim": 4},
}


@pytest.fixture(scope="module")
def recorded():
    return load_file(str(FIXTURES / "logits.safetensors"))


def rebuild(case: str) -> torch.nn.Module:
    method = "apt" if case.startswith("apt") else case
    model = aptune.create_model(None, num_classes=5, method=method, method_options=CASES[case], **TINY)
    model.load_state_dict(load_file(str(FIXTURES / "backbone.safetensors")), strict=False)
    aptune.load_adapter(model, FIXTURES / f"{case}.safetensors")
    return model.eval()


@pytest.mark.parametrize("case", CASES)
def test_every_method_computes_the_recorded_logits(case, recorded):
    with torch.no_grad():
        logits = rebuild(case)(recorded["clip"])
    assert torch.equal(logits, recorded[case])


def assert_same_adapter(written: Path, recorded: Path) -> None:
    """Same header entries and the same tensors, bit for bit (safetensors orders its header's
    metadata as a hash map, so the files' bytes are not compared as a whole)."""
    with safe_open(str(written), "pt") as new, safe_open(str(recorded), "pt") as old:
        assert new.metadata() == old.metadata()
        assert sorted(new.keys()) == sorted(old.keys())
        for key in old.keys():
            a, b = new.get_tensor(key), old.get_tensor(key)
            assert a.dtype == b.dtype and torch.equal(a, b), key


@pytest.mark.parametrize("case", CASES)
def test_a_loaded_adapter_saves_back_to_the_same_file(case, tmp_path):
    path = aptune.save_adapter(rebuild(case), tmp_path / "again.safetensors")
    assert_same_adapter(path, FIXTURES / f"{case}.safetensors")


def test_multitask_batch_computes_the_recorded_logits(recorded):
    backbone = aptune.create_model(None, num_classes=5, method="linear", **TINY)
    backbone.load_state_dict(load_file(str(FIXTURES / "backbone.safetensors")), strict=False)
    adapters = {case: FIXTURES / f"{case}.safetensors" for case in ("apt", "apt-noreparam", "linear")}
    model = aptune.MultiAdapterModel(backbone, adapters)
    with torch.no_grad():
        logits = model(recorded["clip"], [0, 1]) + model(recorded["clip"], [2, 0])
    assert torch.equal(torch.stack(logits), recorded["multitask"])


@pytest.mark.parametrize("method", ["apt", "vpt-deep"])
def test_injected_huggingface_model_computes_the_recorded_logits(method, recorded, tmp_path):
    from helpers import tiny_hf_model

    model = aptune.inject(tiny_hf_model(), method, num_prompts=2, prompt_start=1)
    aptune.load_adapter(model, FIXTURES / f"hf-{method}.safetensors")
    with torch.no_grad():
        logits = model(pixel_values=recorded["clip"].transpose(1, 2)).logits
    assert torch.equal(logits, recorded[f"hf-{method}"])
    again = aptune.save_adapter(model, tmp_path / "again.safetensors")
    assert_same_adapter(again, FIXTURES / f"hf-{method}.safetensors")


def full_prompt_backward(q, kv, prompts):
    """What 0.1.0 ran in every prompted block: the fused kernel's full backward."""
    shape = (2, kv.shape[1], kv.shape[2], prompts.shape[-2], kv.shape[-1])
    k, v = torch.cat((kv, prompts.to(kv.dtype).expand(shape)), dim=3).unbind(0)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_multiply_add_counts_are_the_recorded_ones(monkeypatch):
    """Forward counts are 0.1.0's.  Training counts are too with the first prompted block's
    backward as it was then; since then that block computes only the prompts' gradients
    (PromptsOnlyAttention), a deliberate saving, so APT's training counts are now lower."""
    from aptune.models import attention

    recorded = json.loads((FIXTURES / "macs.json").read_text())
    shape = (1, 3, 16, 224, 224)
    for key, expected in recorded.items():
        arch, method, text = key.split("/")
        options = {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}
        model = aptune.create_model(arch, num_classes=400, method=method, num_frames=16, method_options=options)
        train_now = count_macs(model, shape, backward=True)
        with monkeypatch.context() as patch:
            patch.setattr(attention.PromptsOnlyAttention, "apply", full_prompt_backward)
            counted = {"forward": count_macs(model, shape), "train": count_macs(model, shape, backward=True)}
        assert counted == expected, key
        if method == "apt":
            assert train_now < expected["train"], key
        else:
            assert train_now == expected["train"], key


def test_a_run_folder_recipe_of_the_release_still_loads():
    config = load_config(FIXTURES / "run_config.yaml")
    assert config.method.name == "lora"
    assert (config.method.lora_rank, config.method.prompt_start) == (4, 1)
    assert config.model.arch == "vit_small_patch16_224"
