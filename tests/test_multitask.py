"""MultiAdapterModel: one backbone pass for a batch mixing tasks gives each task's own logits."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_, tiny_clip, tiny_model

import aptune
from aptune.errors import CheckpointError, ConfigError


@pytest.fixture
def backbone_state():
    model = tiny_model("linear")
    randomize_(model, seed=0)
    return {k: v for k, v in model.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}


def task_model(backbone_state, method="apt", num_classes=5, seed=1, **options):
    """A tuned model on the shared backbone weights, with random prompts, scales and head."""
    model = tiny_model(method, num_classes=num_classes, **options).eval()
    model.load_state_dict(backbone_state, strict=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                if name.endswith("scales"):
                    param.copy_(torch.rand(param.shape, generator=generator) * 1.7 + 0.3)
                else:
                    param.copy_(
                        torch.randn(param.shape, generator=generator) * 0.3 + (1.0 if name == "fc_norm.weight" else 0.0)
                    )
    model.class_names = [f"{method}{seed}_{i}" for i in range(num_classes)]
    return model


@pytest.fixture
def tasks(backbone_state, tmp_path):
    """Four tasks: differing prompt counts and layer ranges, reparam on and off, a linear probe."""
    models = {
        "ucf": task_model(backbone_state, num_classes=5, seed=1, num_prompts=4),
        "hmdb": task_model(backbone_state, num_classes=3, seed=2, num_prompts=2, prompt_start=1, reparam=False),
        "ssv2": task_model(backbone_state, num_classes=7, seed=3, num_prompts=6, prompt_end=1),
        "probe": task_model(backbone_state, method="linear", num_classes=4, seed=4),
    }
    paths = {name: aptune.save_adapter(m, tmp_path / f"{name}.safetensors") for name, m in models.items()}
    return models, paths


def backbone(backbone_state):
    model = tiny_model("linear", num_classes=2)
    model.load_state_dict(backbone_state, strict=False)
    return model


def separate(models, clips, names):
    with torch.no_grad():
        return [models[name](clips[i : i + 1])[0] for i, name in enumerate(names)]


@pytest.mark.parametrize(
    "names",
    [
        ["ucf", "hmdb", "ssv2", "probe", "hmdb", "ucf"],  # every task, padded prompts in every layer
        ["ucf", "ucf", "ucf"],  # one task: no padding, the backbone's own block code
        ["hmdb", "probe", "hmdb"],  # a layer where only some samples have prompts
    ],
)
def test_mixed_batch_equals_separate_models(tasks, backbone_state, names):
    models, paths = tasks
    multi = aptune.MultiAdapterModel(backbone(backbone_state), paths)
    clips = tiny_clip(batch=len(names), seed=5)
    expected = separate(models, clips, names)
    with torch.no_grad():
        got = multi(clips, names)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    # integer ids (a tensor) mean the same as names
    index = torch.tensor([multi.tasks.index(n) for n in names])
    with torch.no_grad():
        for a, b in zip(multi(clips, index), got):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_padding_is_exact_against_unpadded_attention(tasks, backbone_state):
    """A padded sample equals the same sample in a batch of its task alone."""
    models, paths = tasks
    multi = aptune.MultiAdapterModel(backbone(backbone_state), paths)
    clips = tiny_clip(batch=2, seed=6)
    with torch.no_grad():
        mixed = multi(clips, ["hmdb", "ssv2"])  # hmdb (2 prompts) padded to 6 with -inf
        alone = multi(clips[:1], ["hmdb"])
    torch.testing.assert_close(mixed[0], alone[0], rtol=1e-6, atol=1e-6)


def test_mask_is_broadcast_not_quadratic(tasks, backbone_state):
    models, paths = tasks
    multi = aptune.MultiAdapterModel(backbone(backbone_state), paths)
    index = multi.task_index(["ucf", "hmdb"], 2)
    extra_kv, mask = multi._layer_prompts(1, index, num_tokens=8)
    assert extra_kv[0].shape == (2, 1, 4, 8) and mask.shape == (2, 1, 1, 12)
    assert torch.isinf(mask[1, 0, 0, 10:]).all() and not torch.isinf(mask[0]).any()


def test_from_files_predict_and_class_names(tasks, backbone_state, tmp_path):
    models, paths = tasks
    weights = tmp_path / "backbone.pth"
    torch.save(backbone_state, weights)
    multi = aptune.MultiAdapterModel.from_files(paths, pretrained=weights)
    assert multi.tasks == ["ucf", "hmdb", "ssv2", "probe"]
    assert multi.class_names("hmdb") == [f"apt2_{i}" for i in range(3)]
    clips = tiny_clip(batch=2, seed=7)
    answers = multi.predict(clips, ["ssv2", "hmdb"], top_k=5)
    assert len(answers[0]) == 5 and len(answers[1]) == 3  # top_k clipped to the task's classes
    with torch.no_grad():
        expected = models["ssv2"](clips[:1])[0].softmax(-1)
    top_name, top_prob = answers[0][0]
    assert top_name == f"apt3_{int(expected.argmax())}"
    assert abs(top_prob - float(expected.max())) < 1e-5
    assert all(a[1] >= b[1] for a, b in zip(answers[0], answers[0][1:]))
    assert len(multi.predict(clips, "probe")) == 2  # one name for the whole batch


def test_already_read_adapters_and_errors(tasks, backbone_state):
    models, paths = tasks
    read = {name: aptune.read_adapter(path) for name, path in paths.items()}
    multi = aptune.MultiAdapterModel(backbone(backbone_state), read)
    with pytest.raises(ConfigError, match="unknown task 'kinetics'"):
        multi(tiny_clip(batch=1), ["kinetics"])
    with pytest.raises(ConfigError, match="2 task ids for a batch of 1"):
        multi(tiny_clip(batch=1), ["ucf", "ucf"])
    vpt = tiny_model("vpt-deep", num_prompts=2)
    with pytest.raises(ConfigError, match="method 'vpt-deep' cannot share"):
        aptune.MultiAdapterModel(
            backbone(backbone_state),
            {"v": (aptune.read_adapter(aptune.save_adapter(vpt, paths["ucf"].parent / "v.safetensors")))},
        )
    wide = tiny_model("apt", num_prompts=2, embed_dim=64)
    with pytest.raises(CheckpointError, match="embed_dim=64"):
        aptune.MultiAdapterModel(
            backbone(backbone_state),
            {"w": (aptune.read_adapter(aptune.save_adapter(wide, paths["ucf"].parent / "w.safetensors")))},
        )
    with pytest.raises(ConfigError, match="qkv_adapters"):
        aptune.MultiAdapterModel(tiny_model("lora"), paths)


def test_task_heads_use_the_classifier_norms_own_eps(tmp_path):
    """Hugging Face backbones norm the blocks with 1e-12 and fc_norm with 1e-5; here exaggerated."""
    eps = dict(layer_norm_eps=1e-6, fc_norm_eps=0.5)
    source = tiny_model("linear", **eps)
    randomize_(source, seed=0)
    state = {k: v for k, v in source.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}
    models = {"a": task_model(state, num_prompts=3, seed=1, **eps), "b": task_model(state, "linear", seed=2, **eps)}
    paths = {name: aptune.save_adapter(m, tmp_path / f"{name}.safetensors") for name, m in models.items()}
    shared = tiny_model("linear", num_classes=2, **eps)
    shared.load_state_dict(state, strict=False)
    multi = aptune.MultiAdapterModel(shared, paths)
    assert multi.heads["a"].fc_norm.eps == 0.5
    clips = tiny_clip(batch=2, seed=8)
    expected = separate(models, clips, ["a", "b"])
    with torch.no_grad():
        got = multi(clips, ["a", "b"])
        features = multi.forward_features(clips, multi.task_index(["a", "b"], 2))
        block_eps = (
            torch.nn.functional.layer_norm(
                features[1:], (32,), models["b"].fc_norm.weight, models["b"].fc_norm.bias, 1e-6
            )
            @ models["b"].head.weight.T
        )
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(block_eps[0] + models["b"].head.bias, expected[1], atol=1e-3)  # the eps matters


def test_adapters_of_other_backbone_weights_are_refused(tasks, backbone_state, tmp_path):
    models, paths = tasks
    other = tiny_model("linear", num_classes=2)
    randomize_(other, seed=42)
    with pytest.raises(CheckpointError, match="task 'ucf'.*fingerprint"):
        aptune.MultiAdapterModel(other, paths)
    multi = aptune.MultiAdapterModel(other, paths, allow_backbone_mismatch=True)
    assert multi.tasks == list(paths)
    weights = tmp_path / "other.pth"
    torch.save({k: v for k, v in other.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}, weights)
    with pytest.raises(CheckpointError, match="fingerprint"):
        aptune.MultiAdapterModel.from_files(paths, pretrained=weights)
    assert aptune.MultiAdapterModel.from_files(paths, pretrained=weights, allow_backbone_mismatch=True).tasks


def _edited(path, tensors=None, drop=(), **header):

    tensors_in, meta = aptune.read_adapter(path)
    tensors_in = {k: v for k, v in tensors_in.items() if k not in drop}
    tensors_in.update(tensors or {})
    meta = dict(meta)
    for key, value in header.items():
        meta[key] = {**meta[key], **value} if isinstance(value, dict) else value
    return tensors_in, meta


@pytest.mark.parametrize(
    "edit, words",
    [
        (dict(drop=("kv_prompts.scales",)), "reparam=True but has no 'kv_prompts.scales'"),
        (dict(drop=("kv_prompts.keys",)), "lacks 'kv_prompts.keys'"),
        (dict(method={"num_prompts": 5}), "'kv_prompts.keys' has shape (3, 4, 8)"),
        (dict(method={"prompt_start": 3}), "prompt_start"),
        (dict(tensors={"kv_prompts.scales": torch.ones(3, 4)}), "'kv_prompts.scales' has shape (3, 4)"),
        (dict(tensors={"qkv_adapters.down": torch.ones(1)}), "tensor 'qkv_adapters.down' has no place"),
        (dict(tensors={"head.bias": torch.ones(3)}), "'head.bias' has shape (3,), expected (5,)"),
        (dict(drop=("fc_norm.bias",)), "lacks 'fc_norm.bias'"),
        (dict(class_names=["a", "b"]), "2 class names for a head of 5"),
        (dict(arch={"layer_norm_eps": 1e-3}), "layer_norm_eps=0.001"),
    ],
)
def test_an_adapter_that_contradicts_its_own_options_is_refused(tasks, backbone_state, edit, words):
    models, paths = tasks
    with pytest.raises(CheckpointError) as caught:
        aptune.MultiAdapterModel(backbone(backbone_state), {"ucf": _edited(paths["ucf"], **edit)})
    assert words in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
