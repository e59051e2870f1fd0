"""Every registered method on a tiny model, with either head (the mean-pooled linear head and the
attentive probe): forward, backward, exact trainable set, adapter round trip."""

import pytest
import torch
from helpers import randomize_, tiny_clip, tiny_model

import aptune
from aptune.errors import ConfigError
from aptune.methods import METHODS, build_method

PROMPT_METHODS = {"apt", "vpt-shallow", "vpt-deep"}
EXPECTED_PREFIXES = {
    "apt": ("kv_prompts.", "fc_norm.", "head."),
    "vpt-shallow": ("token_prompts.", "fc_norm.", "head."),
    "vpt-deep": ("token_prompts.", "fc_norm.", "head."),
    "linear": ("fc_norm.", "head."),
    "full": ("",),
    "lora": ("qkv_adapters.", "fc_norm.", "head."),
    "adaptformer": ("mlp_adapters.", "fc_norm.", "head."),
    "bitfit": ("fc_norm.", "head."),  # and every bias: see expected_trainable
}
HEADS = ("linear", "attentive")
# what the attentive head adds to a model, whatever the method: its probe, trained with the head
PROBE_TENSORS = {
    f"head.probe.{name}"
    for name in (
        "queries",
        *(
            f"{layer}.{kind}"
            for layer in ("token_norm", "q", "kv", "proj", "mlp_norm", "fc1", "fc2")
            for kind in ("weight", "bias")
        ),
    )
}


def expected_trainable(method: str, name: str) -> bool:
    if method == "bitfit" and name.endswith("bias"):
        return True
    return name.startswith(EXPECTED_PREFIXES[method])


def make(method, head="linear"):
    options = {"num_prompts": 3} if method in PROMPT_METHODS else {}
    if head == "attentive":
        options.update(head=head, attentive_queries=2)
    model = tiny_model(method, **options)
    randomize_(model)
    if model.extension("kv_prompts") is not None:
        with torch.no_grad():  # scales on both sides of 1 (below 1 they get no gradient)
            scales = model.kv_prompts.scales
            scales.copy_(torch.linspace(0.5, 2.0, scales.numel()).view_as(scales))
    return model


build_method("apt")  # fills the registry
ALL_METHODS = sorted(METHODS)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_forward_shape(method, head):
    model = make(method, head).eval()
    assert model(tiny_clip()).shape == (2, 5)
    probe = {name for name in model.state_dict() if name.startswith("head.probe.")}
    assert probe == (PROBE_TENSORS if head == "attentive" else set())


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_gradients_reach_only_trainable_tensors(method, head):
    model = make(method, head).train()
    model(tiny_clip()).logsumexp(-1).sum().backward()
    trained = set()
    for name, param in model.named_parameters():
        trainable = expected_trainable(method, name)
        assert param.requires_grad == trainable, name
        if trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            trained.add(name)
        else:
            assert param.grad is None, name
    assert trained >= (PROBE_TENSORS if head == "attentive" else {"head.weight", "head.bias"})


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_adapter_round_trip(method, head, tmp_path):
    model = make(method, head).eval()
    path = aptune.save_adapter(model, tmp_path / "adapter.safetensors")
    tensors, meta = aptune.read_adapter(path)
    assert set(tensors) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert meta["method"]["name"] == method
    assert meta["arch"].get("head", "linear") == head

    fresh = make(method, head).eval()
    torch.manual_seed(123)
    randomize_(fresh, seed=99)  # different trainable tensors before loading
    frozen = {k: v for k, v in model.state_dict().items() if k not in tensors}
    fresh.load_state_dict(frozen, strict=False)
    x = tiny_clip()
    if method != "full":
        assert not torch.allclose(fresh(x), model(x))
    aptune.load_adapter(fresh, path)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_adapter_is_small_and_holds_no_backbone(tmp_path):
    model = aptune.create_model("vit_small_patch16_224", num_classes=10, method="apt", num_prompts=2)
    path = aptune.save_adapter(model, tmp_path / "a.safetensors")
    tensors, _ = aptune.read_adapter(path)
    assert not any(k.startswith(("blocks.", "patch_embed.")) for k in tensors)
    assert path.stat().st_size < 100_000


def test_load_adapter_rejects_another_method(tmp_path):
    from aptune.errors import CheckpointError

    path = aptune.save_adapter(make("apt"), tmp_path / "apt.safetensors")
    with pytest.raises(CheckpointError, match="method 'apt'"):
        aptune.load_adapter(make("linear"), path)
    with pytest.raises(CheckpointError, match="num_prompts=3, the model has num_prompts=4"):
        aptune.load_adapter(tiny_model("apt", num_prompts=4), path)


def test_model_from_adapter_rebuilds_the_model(tmp_path):
    model = make("apt").eval()
    model.class_names = [f"class{i}" for i in range(5)]
    backbone = tmp_path / "backbone.pth"
    torch.save(
        {"model": {k: v for k, v in model.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}}, backbone
    )
    path = aptune.save_adapter(model, tmp_path / "apt.safetensors")
    rebuilt = aptune.model_from_adapter(path, pretrained=backbone).eval()
    x = tiny_clip()
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    assert rebuilt.class_names == model.class_names


def test_vpt_tokens_are_not_pooled_and_zero_prompts_is_backbone():
    backbone = tiny_model("full").eval()
    randomize_(backbone)
    for method in ("vpt-shallow", "vpt-deep"):
        empty = tiny_model(method, num_prompts=0).eval()
        empty.load_state_dict(backbone.state_dict())
        x = tiny_clip()
        torch.testing.assert_close(empty(x), backbone(x), rtol=0, atol=0)


def test_vpt_shallow_and_deep_shapes():
    shallow = tiny_model("vpt-shallow", num_prompts=3)
    deep = tiny_model("vpt-deep", num_prompts=3)
    assert shallow.token_prompts.tokens.shape == (1, 3, 32)
    assert deep.token_prompts.tokens.shape == (3, 3, 32)


def test_frozen_blocks_before_the_first_prompt_build_no_graph():
    model = tiny_model("apt", num_prompts=2, prompt_start=2, depth=3).train()
    seen = {}
    for index, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, i, o, index=index: seen.__setitem__(index, o.requires_grad))
    model(tiny_clip()).sum().backward()
    assert seen == {0: False, 1: False, 2: True}


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make("apt").train()
    x = tiny_clip()
    model(x).sum().backward()
    expected = model.kv_prompts.keys.grad.clone()
    model.zero_grad()
    model.grad_checkpointing = True
    model(x).sum().backward()
    torch.testing.assert_close(model.kv_prompts.keys.grad, expected)


def test_unknown_options_are_clear_errors():
    from aptune.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown method 'lorax'"):
        tiny_model("lorax")
    with pytest.raises(ConfigError, match="takes no option 'num_prompts'"):
        tiny_model("linear", num_prompts=3)
    with pytest.raises(ConfigError, match="unknown arch"):
        aptune.create_model("vit_tiny")
    with pytest.raises(ConfigError, match="unknown architecture option 'embed'"):
        aptune.create_model("vit_small_patch16_224", embed=3)


def test_registry_refuses_duplicates():
    from aptune.methods import register

    with pytest.raises(ValueError, match="already registered"):
        register("apt")(type("Other", (), {}))


def test_other_clip_sizes_interpolate_the_position_table():
    model = tiny_model("apt", num_prompts=2).eval()
    out = model(torch.randn(1, 3, 8, 48, 48))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_lora_and_adaptformer_start_as_the_backbone():
    backbone = tiny_model("full").eval()
    randomize_(backbone)
    x = tiny_clip()
    for method in ("lora", "adaptformer"):
        tuned = tiny_model(method).eval()
        tuned.load_state_dict(backbone.state_dict(), strict=False)
        torch.testing.assert_close(tuned(x), backbone(x), rtol=0, atol=0)


def test_merged_lora_gives_the_same_logits():
    from aptune.methods.lora import merge_lora

    model = make("lora").eval()
    x = tiny_clip()
    before = model(x)
    merge_lora(model)
    assert model.extension("qkv_adapters") is None
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


def _block_activations(model, x):
    """Every block's input tokens and its per-head keys/values, read with hooks (no prompts attached)."""
    seen = []

    def capture(block, args):
        keys, values = block.attn.project_qkv(block.norm1(args[0]))[1:]
        seen.append((args[0].flatten(0, 1), keys.flatten(0, 2), values.flatten(0, 2)))

    hooks = [block.register_forward_pre_hook(capture) for block in model.blocks]
    with torch.no_grad():
        model.forward_pooled(x)
    for hook in hooks:
        hook.remove()
    return seen


def _is_row_of(rows, table):
    gaps = (rows[:, None, :] - table[None, :, :]).abs().amax(dim=-1)  # exact, unlike cdist's matmul path
    return gaps.min(dim=1).values.max().item() < 1e-5


def test_token_init_copies_real_keys_values_and_tokens_layer_by_layer():
    x = tiny_clip(batch=2)
    backbone = tiny_model("linear").eval()
    randomize_(backbone)
    activations = _block_activations(backbone, x)
    for method in ("apt", "vpt-deep"):
        model = tiny_model(method, num_prompts=5, prompt_init="tokens", prompt_start=1)
        model.load_state_dict(backbone.state_dict(), strict=False)
        model.tuning_method.init_from_clips(model, x, torch.Generator().manual_seed(0))
        for layer in (1, 2):
            inputs, keys, values = activations[layer]
            if method == "apt":
                assert _is_row_of(model.kv_prompts.keys[layer - 1], keys)
                assert _is_row_of(model.kv_prompts.values[layer - 1], values)
                assert not _is_row_of(model.kv_prompts.keys[layer - 1], activations[0][1])
            else:
                assert _is_row_of(model.token_prompts.tokens[layer - 1], inputs)
        assert model.training  # the init ran in eval mode and put the mode back


def test_token_init_prompts_get_attention_that_uniform_ones_do_not():
    """On a backbone with sharp attention, uniform prompts receive almost none of it."""
    x = tiny_clip(batch=2)
    shares = {}
    for init in ("uniform", "tokens"):
        model = tiny_model("apt", num_prompts=4, prompt_init=init).eval()
        randomize_(model)
        with torch.no_grad():
            for block in model.blocks:  # large q/k weights: logits of tens, as in a collapsed backbone
                block.attn.qkv.weight[: 2 * 32].mul_(8)
            model.kv_prompts.scales.fill_(1.0)
        model.tuning_method.init_from_clips(model, x, torch.Generator().manual_seed(0))
        block = model.blocks[1]
        seen = {}
        block.register_forward_pre_hook(lambda m, a, seen=seen: seen.__setitem__("x", a[0]))
        with torch.no_grad():
            model(x)
            q, k, _ = block.attn.project_qkv(block.norm1(seen["x"]))
            prompt_keys = model.kv_prompts.keys[1][None, None]
            logits = torch.cat((q @ k.transpose(-1, -2), q @ prompt_keys.transpose(-1, -2)), -1) / 8**0.5
            shares[init] = logits.softmax(-1)[..., -4:].sum(-1).mean().item()
    assert shares["uniform"] < 1e-3 < 0.05 < shares["tokens"]


def test_prompt_init_must_be_known():
    from aptune.errors import ConfigError

    with pytest.raises(ConfigError, match="prompt_init 'data' is not one of: uniform, tokens"):
        tiny_model("apt", num_prompts=2, prompt_init="data")


def test_an_adapter_with_an_unknown_prompt_init_still_loads():
    from aptune.methods import method_from_dict

    method = method_from_dict({"name": "apt", "num_prompts": 2, "prompt_init": "from-a-newer-version"})
    assert method.prompt_init == "uniform" and method.num_prompts == 2


def test_lists_of_methods_elsewhere_are_derived_from_the_registry():
    """A method registered later (as a plugin or a new file would) is known to the recipe
    checks and to every capability list without an edit anywhere else."""
    from dataclasses import dataclass
    from typing import ClassVar

    from aptune.config import config_from_dict
    from aptune.methods import methods_that, register

    @register("probe-test-only")
    @dataclass
    class ProbeOnly:
        shareable: ClassVar[bool] = True

        def attach(self, model) -> None:
            pass

        def trainable_prefixes(self) -> tuple[str, ...]:
            return ("head.",)

    try:
        assert config_from_dict({"method": {"name": "probe-test-only"}}).method.name == "probe-test-only"
        assert "probe-test-only" in methods_that("shareable")
        assert "probe-test-only" not in methods_that("mergeable")
        with pytest.raises(ValueError, match="already registered"):
            register("probe-test-only")(ProbeOnly)
    finally:
        METHODS.pop("probe-test-only")
    with pytest.raises(ConfigError, match="probe-test-only"):
        config_from_dict({"method": {"name": "probe-test-only"}})
    with pytest.raises(ValueError, match="unknown method capability"):
        methods_that("fast")


def test_capabilities_of_the_built_in_methods():
    from aptune.methods import method_names, methods_that

    assert method_names() == ("apt", "vpt-shallow", "vpt-deep", "linear", "full", "lora", "adaptformer", "bitfit")
    assert methods_that("prompted") == ("apt", "vpt-shallow", "vpt-deep")
    assert methods_that("injectable") == ("apt", "vpt-shallow", "vpt-deep", "linear")
    assert methods_that("mergeable") == ("linear", "full", "lora", "bitfit")
    assert methods_that("shareable") == ("apt", "linear")
    assert methods_that("adapter") == ("lora", "adaptformer")
    assert methods_that("trains_backbone") == ("full",)


def test_bitfit_trains_exactly_the_biases_and_keeps_the_backbone_fingerprint(tmp_path):
    """BitFit, added as one file (methods/bitfit.py), through the same engine and adapter files."""
    model = make("bitfit")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks.0.attn.q_bias" in trained and "blocks.1.mlp.fc1.bias" in trained
    assert "patch_embed.proj.bias" in trained and "blocks.0.norm1.bias" in trained
    assert not any(n.endswith("weight") and not n.startswith(("fc_norm.", "head.")) for n in trained)
    before = aptune.backbone_fingerprint(model)
    with torch.no_grad():
        model.blocks[0].attn.q_bias.add_(1.0)  # training a bias must not change what the adapter is for
    assert aptune.backbone_fingerprint(model) == before
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.add_(1.0)  # a frozen weight does
    assert aptune.backbone_fingerprint(model) != before
