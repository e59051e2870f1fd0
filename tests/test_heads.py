"""The attentive-probe head (``model.head: attentive``): its math against an explicit
re-computation, where it reads the tokens, its options and errors, and what refuses it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_, tiny_clip, tiny_model
from safetensors import safe_open
from safetensors.torch import save_file

import aptune
from aptune.cli.merge import merge_adapter
from aptune.config import load_config
from aptune.errors import CheckpointError, ConfigError
from aptune.flops import closed_form_macs, count_macs
from aptune.models.heads import AttentiveHead, AttentiveProbe


def reference_probe(probe: AttentiveProbe, tokens: torch.Tensor) -> torch.Tensor:
    """The probe written out with an explicit softmax, reading its raw parameters."""
    batch, length, dim = tokens.shape
    heads = probe.num_heads
    head_dim = dim // heads
    normed = F.layer_norm(tokens, (dim,), probe.token_norm.weight, probe.token_norm.bias, probe.token_norm.eps)
    w_k, w_v = probe.kv.weight.chunk(2, dim=0)
    b_k, b_v = probe.kv.bias.chunk(2)
    queries = probe.queries[None].expand(batch, -1, -1)  # (B, Q, D)
    q = (queries @ probe.q.weight.T + probe.q.bias).view(batch, -1, heads, head_dim).transpose(1, 2)
    k = (normed @ w_k.T + b_k).view(batch, length, heads, head_dim).transpose(1, 2)
    v = (normed @ w_v.T + b_v).view(batch, length, heads, head_dim).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5, dim=-1)  # (B, h, Q, N)
    attended = (weights @ v).transpose(1, 2).reshape(batch, -1, dim)
    out = queries + attended @ probe.proj.weight.T + probe.proj.bias
    normed_out = F.layer_norm(out, (dim,), probe.mlp_norm.weight, probe.mlp_norm.bias, probe.mlp_norm.eps)
    out = out + probe.fc2(F.gelu(probe.fc1(normed_out)))
    return out.mean(dim=1)


def random_probe(dim=32, heads=4, queries=3, seed=0) -> AttentiveProbe:
    probe = AttentiveProbe(dim, heads, queries)
    randomize_(probe, seed=seed)
    return probe


@pytest.mark.parametrize("heads, queries", [(4, 3), (1, 1), (8, 2)])
def test_probe_equals_explicit_softmax_cross_attention(heads, queries):
    probe = random_probe(heads=heads, queries=queries)
    tokens = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled = probe(tokens)
        assert pooled.shape == (2, 32)
        torch.testing.assert_close(pooled, reference_probe(probe, tokens), rtol=1e-5, atol=1e-5)
        assert probe.forward_queries(tokens).shape == (2, queries, 32)


def test_probe_state_dict_names_and_init():
    """The names a wrapper of another backbone relies on, and V-JEPA's start."""
    probe = AttentiveProbe(64, 8, num_queries=4)
    assert sorted(probe.state_dict()) == sorted(
        ["queries"]
        + [f"{m}.{k}" for m in ("token_norm", "q", "kv", "proj", "mlp_norm", "fc1", "fc2") for k in ("weight", "bias")]
    )
    assert probe.queries.shape == (4, 64) and probe.fc1.out_features == 256 and probe.kv.out_features == 128
    assert all(torch.count_nonzero(probe.get_submodule(m).bias) == 0 for m in ("q", "kv", "proj", "fc1", "fc2"))
    assert 0.017 < probe.queries.std() < 0.023  # a (truncated) normal of std 0.02
    assert 0.019 < probe.kv.weight.std() < 0.021
    for name in ("proj", "fc2"):  # the ends of the residual branches: divided by sqrt(2)
        assert 0.0134 < probe.get_submodule(name).weight.std() < 0.0149, name
    with pytest.raises(ValueError, match="num_heads=5 does not divide"):
        AttentiveProbe(64, 5)
    with pytest.raises(ValueError, match="at least one query"):
        AttentiveProbe(64, 8, num_queries=0)


def test_attentive_head_is_the_linear_head_plus_its_probe():
    head = AttentiveHead(32, 5, num_heads=4, num_queries=2)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 5
    assert {k for k in head.state_dict() if not k.startswith("probe.")} == {"weight", "bias"}
    features = torch.randn(3, 32)
    torch.testing.assert_close(head(features), features @ head.weight.T + head.bias)


@pytest.mark.parametrize("method", ["linear", "vpt-deep"])
def test_the_model_pools_its_patch_tokens_with_the_probe(method):
    """Logits = head(fc_norm(probe(last block's patch tokens))): VPT's prompt tokens are not read."""
    options = {"num_prompts": 3} if method == "vpt-deep" else {}
    model = tiny_model(method, head="attentive", attentive_queries=2, **options).eval()
    randomize_(model)
    seen = {}
    model.blocks[-1].register_forward_hook(lambda m, i, out: seen.__setitem__("tokens", out))
    x = tiny_clip()
    with torch.no_grad():
        logits = model(x)
        patches = seen["tokens"][:, : model.config.num_patches]
        features = model.fc_norm(reference_probe(model.head.probe, patches))
        expected = features @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    if method == "vpt-deep":
        assert seen["tokens"].shape[1] == model.config.num_patches + 3


def test_heads_default_to_the_backbones_and_are_recorded(tmp_path):
    model = tiny_model("linear", head="attentive")
    assert (model.head.probe.num_heads, model.head.probe.num_queries) == (4, 1)
    assert model.config.attentive_heads == 4  # written as a number, not "the backbone's"
    other = tiny_model("linear", head="attentive", attentive_heads=2, attentive_queries=3)
    assert (other.head.probe.num_heads, other.head.probe.num_queries) == (2, 3)
    _, meta = aptune.read_adapter(aptune.save_adapter(other, tmp_path / "a.safetensors"))
    assert {k: meta["arch"][k] for k in ("head", "attentive_queries", "attentive_heads")} == {
        "head": "attentive",
        "attentive_queries": 3,
        "attentive_heads": 2,
    }
    _, meta = aptune.read_adapter(aptune.save_adapter(tiny_model("linear"), tmp_path / "b.safetensors"))
    assert not {"head", "attentive_queries", "attentive_heads"} & set(meta["arch"])  # as before the option


def test_model_from_adapter_rebuilds_the_attentive_head(tmp_path):
    model = tiny_model("apt", num_prompts=2, head="attentive", attentive_queries=2).eval()
    randomize_(model)
    backbone = tmp_path / "backbone.pth"
    torch.save(
        {"model": {k: v for k, v in model.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}}, backbone
    )
    path = aptune.save_adapter(model, tmp_path / "apt.safetensors")
    rebuilt = aptune.model_from_adapter(path, pretrained=backbone).eval()
    assert rebuilt.config.head == "attentive" and rebuilt.head.probe.num_queries == 2
    x = tiny_clip()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_an_adapter_loads_only_onto_its_own_head(tmp_path):
    attentive = aptune.save_adapter(tiny_model("linear", head="attentive"), tmp_path / "attentive.safetensors")
    linear = aptune.save_adapter(tiny_model("linear"), tmp_path / "linear.safetensors")
    with pytest.raises(CheckpointError, match="head='attentive', the model has head='linear'"):
        aptune.load_adapter(tiny_model("linear"), attentive)
    with pytest.raises(CheckpointError, match="head='linear', the model has head='attentive'"):
        aptune.load_adapter(tiny_model("linear", head="attentive"), linear)
    with pytest.raises(CheckpointError, match="attentive_queries=1, the model has attentive_queries=2"):
        aptune.load_adapter(tiny_model("linear", head="attentive", attentive_queries=2), attentive)


def edited_header(path, tmp_path, **arch):
    with safe_open(str(path), "pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    metadata["arch"] = json.dumps({**json.loads(metadata["arch"]), **arch})
    out = tmp_path / "edited.safetensors"
    save_file(tensors, str(out), metadata=metadata)
    return out


@pytest.mark.parametrize(
    "arch, message",
    [
        ({"head": "mlp"}, "key 'head' is 'mlp', expected one of: linear, attentive"),
        ({"attentive_queries": 10**9}, "key 'attentive_queries' is 1000000000"),
        ({"attentive_heads": 5}, "embed_dim=32 is not divisible by attentive_heads=5"),
        ({"attentive_heads": "four"}, "key 'attentive_heads' is 'four'"),
    ],
)
def test_crafted_head_entries_in_an_adapter_header_are_one_line_errors(tmp_path, arch, message):
    path = aptune.save_adapter(tiny_model("linear", head="attentive"), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=message) as error:
        aptune.read_adapter(edited_header(path, tmp_path, **arch))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.head=mlp"], "model.head='mlp' is not one of: linear, attentive"),
        (["model.head=attentive", "model.attentive_queries=0"], "model.attentive_queries must be in [1, 1024]"),
        (
            ["model.head=attentive", "model.attentive_heads=5"],
            "model.attentive_heads=5 does not divide model.embed_dim=384",
        ),
        (["model.attentive_queries=4"], "model.attentive_queries needs model.head=attentive, not linear"),
        (
            ["model.head=attentive", "method.name=linear", "train.cache_features=true"],
            "train.cache_features keeps one pooled vector per clip, but model.head=attentive",
        ),
    ],
)
def test_recipe_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_create_model_errors():
    with pytest.raises(ConfigError, match="head='mlp' is not one of"):
        tiny_model("linear", head="mlp")
    with pytest.raises(ConfigError, match="attentive_heads=3 must be a positive integer dividing embed_dim=32"):
        tiny_model("linear", head="attentive", attentive_heads=3)
    with pytest.raises(ConfigError, match="attentive_queries must be an integer in"):
        tiny_model("linear", head="attentive", attentive_queries=0)


def test_recipe_keys_reach_the_model():
    config = load_config(None, ["model.head=attentive", "model.attentive_queries=4", "model.attentive_heads=2"])
    overrides = config.model.arch_overrides()
    assert overrides["head"] == "attentive" and overrides["attentive_queries"] == 4
    model = aptune.create_model(config.model.arch, num_classes=3, method="linear", **overrides)
    assert (model.head.probe.num_queries, model.head.probe.num_heads) == (4, 2)
    assert "head" not in load_config(None, []).model.arch_overrides()  # the paper's head: nothing to override


@pytest.mark.parametrize("meta", [True, False], ids=["meta", "cpu"])
@pytest.mark.parametrize(
    "method, options", [("linear", {}), ("apt", {"num_prompts": 3}), ("vpt-deep", {"num_prompts": 2})]
)
def test_flop_counter_counts_the_probe(method, options, meta):
    linear = tiny_model(method, **options)
    attentive = tiny_model(method, head="attentive", attentive_queries=3, **options)
    shape = (1, 3, 4, 32, 32)
    counted = count_macs(attentive, shape, meta=meta)
    assert counted == closed_form_macs(attentive.config, method, options.get("num_prompts", 0))
    tokens, dim, queries = attentive.config.num_patches, 32, 3
    # keys and values of every patch token, q and proj of the queries, the attention, the MLP (4 D wide)
    probe = 2 * tokens * dim * dim + 2 * queries * dim * dim + 2 * queries * tokens * dim + 2 * queries * dim * 4 * dim
    assert counted - count_macs(linear, shape, meta=meta) == probe


def test_multitask_and_merge_refuse_an_attentive_adapter(tmp_path):
    model = tiny_model("linear", head="attentive")
    backbone_state = {k: v for k, v in model.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}
    path = aptune.save_adapter(model, tmp_path / "attentive.safetensors")
    backbone = tiny_model("linear")
    backbone.load_state_dict(backbone_state, strict=False)
    with pytest.raises(ConfigError, match="head='attentive' cannot share a backbone pass"):
        aptune.MultiAdapterModel(backbone, {"task": path})
    checkpoint = tmp_path / "backbone.pth"
    torch.save({"model": backbone_state}, checkpoint)
    with pytest.raises(CheckpointError, match="head='attentive' cannot be merged"):
        merge_adapter(path, checkpoint, tmp_path / "merged.safetensors")
    assert not (tmp_path / "merged.safetensors").exists()


def test_a_file_that_brings_its_architecture_keeps_it_under_an_attentive_head(tmp_path):
    """The head is not the backbone's shape: --set model.head=attentive on a merged checkpoint
    still takes the checkpoint's own architecture (not the recipe's default arch)."""
    from aptune.engine.trainer import build_model

    model = tiny_model("linear")
    randomize_(model)
    checkpoint = tmp_path / "backbone.pth"
    torch.save(
        {"model": {k: v for k, v in model.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}},
        checkpoint,
    )
    merged = merge_adapter(
        aptune.save_adapter(model, tmp_path / "a.safetensors"), checkpoint, tmp_path / "m.safetensors"
    )
    config = load_config(None, [f"model.pretrained={merged}", "model.head=attentive", "method.name=linear"])
    built = build_model(config, [f"class{i}" for i in range(5)])
    assert (built.config.embed_dim, built.config.head) == (32, "attentive")
    torch.testing.assert_close(built.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
