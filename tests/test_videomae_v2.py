"""VideoMAE V2: the ViT-g/14 preset and its exact MLP width, V2 checkpoints in their original
layout, and ViT-g's multiply-adds against the closed form.

The V2 files here are written from the layout's description (Wang et al., CVPR 2023, and
the names its official code saves), not from aptune's model: a small random ViT with 14-pixel
patches and an MLP width (98 for width 44) that ``int(44 * (98 / 44))`` gets wrong (97), as a
float ratio cannot hold ViT-g's 6144 / 1408 = 48/11 either.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

import aptune
from aptune.adapters import model_from_adapter
from aptune.bench.run import _static_row, build_cases
from aptune.errors import CheckpointError
from aptune.flops import closed_form_macs, count_macs
from aptune.models.checkpoints import arch_from_hf_config, check_arch_values
from aptune.models.vit import ViTConfig, arch_config

# a ViT with V2-style odd sizes: 14-pixel patches, MLP 98 wide (ratio 98/44, not an integer)
V2_TINY = dict(embed_dim=44, depth=2, num_heads=4, patch_size=14, tubelet_size=2, num_frames=4, img_size=28)
WIDTH = 98
CLASSES = 5


def tiny_v2_model(method="linear", num_classes=CLASSES, **overrides):
    """aptune's own model of the V2 file's shape, the MLP width given exactly."""
    options = {**V2_TINY, "mlp_ratio": WIDTH / 44, "mlp_hidden_dim": WIDTH, **overrides}
    return aptune.create_model(None, num_classes=num_classes, method=method, **options)


def v2_clip(batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, V2_TINY["num_frames"], 28, 28, generator=generator)


def v2_finetuned_state(seed=0, dim=44, depth=2, width=WIDTH, patch=14, classes=CLASSES) -> dict:
    """Names of a VideoMAE V2 fine-tuned / distilled classifier (mean pooling): the fused ``qkv``
    weight without bias plus ``q_bias``/``v_bias``, GELU MLP ``fc1``/``fc2``, ``fc_norm``, ``head``;
    no class token and no position table (V2's is the fixed sin-cos one, not saved)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, offset=0.0):
        return torch.randn(*shape, generator=generator) * 0.2 + offset

    state = {"patch_embed.proj.weight": rand(dim, 3, 2, patch, patch), "patch_embed.proj.bias": rand(dim)}
    for i in range(depth):
        block = {
            "norm1.weight": rand(dim, offset=1.0),
            "norm1.bias": rand(dim),
            "attn.qkv.weight": rand(3 * dim, dim),
            "attn.q_bias": rand(dim),
            "attn.v_bias": rand(dim),
            "attn.proj.weight": rand(dim, dim),
            "attn.proj.bias": rand(dim),
            "norm2.weight": rand(dim, offset=1.0),
            "norm2.bias": rand(dim),
            "mlp.fc1.weight": rand(width, dim),
            "mlp.fc1.bias": rand(width),
            "mlp.fc2.weight": rand(dim, width),
            "mlp.fc2.bias": rand(dim),
        }
        state.update({f"blocks.{i}.{name}": value for name, value in block.items()})
    state.update({"fc_norm.weight": rand(dim, offset=1.0), "fc_norm.bias": rand(dim)})
    state.update({"head.weight": rand(classes, dim), "head.bias": rand(classes)})
    return state


def v2_pretrain_state(seed=0) -> dict:
    """A V2 pre-training file: the encoder under ``encoder.`` with its last ``norm`` (and an
    identity head, so no tensor), then the decoder side, which a classifier does not use."""
    backbone = {k: v for k, v in v2_finetuned_state(seed).items() if not k.startswith(("fc_norm.", "head."))}
    state = {f"encoder.{k}": v for k, v in backbone.items()}
    state.update(
        {
            "encoder.norm.weight": torch.ones(44),
            "encoder.norm.bias": torch.zeros(44),
            "encoder_to_decoder.weight": torch.zeros(16, 44),
            "mask_token": torch.zeros(1, 1, 16),
            "decoder.blocks.0.attn.qkv.weight": torch.zeros(48, 16),
            "decoder.norm.weight": torch.ones(16),
            "decoder.head.weight": torch.zeros(3 * 2 * 14 * 14, 16),
        }
    )
    return state


def v2_reference_logits(state: dict, x: torch.Tensor, heads: int = 4, eps: float = 1e-6) -> torch.Tensor:
    """The V2 classifier written out from its description: tubelet Conv3d, the sin-cos table
    p / 10000^(2 (j // 2) / D) (sin on even j, cos on odd), pre-norm blocks (LayerNorm eps 1e-6,
    softmax attention with no key bias, GELU MLP), mean over tokens, ``fc_norm``, ``head``."""
    weight = state["patch_embed.proj.weight"]
    tokens = F.conv3d(x, weight, state["patch_embed.proj.bias"], stride=weight.shape[2:]).flatten(2).transpose(1, 2)
    batch, count, dim = tokens.shape
    positions = torch.arange(count, dtype=torch.float64)[:, None]
    angles = positions / 10000 ** (2 * (torch.arange(dim) // 2).double() / dim)
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angles), torch.cos(angles)).float()
    tokens = tokens + table
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        block = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        p = block.__getitem__
        h = F.layer_norm(tokens, (dim,), p("norm1.weight"), p("norm1.bias"), eps)
        bias = torch.cat([p("attn.q_bias"), torch.zeros(dim), p("attn.v_bias")])
        q, k, v = (h @ p("attn.qkv.weight").T + bias).reshape(batch, count, 3, heads, -1).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, count, dim)
        tokens = tokens + attended @ p("attn.proj.weight").T + p("attn.proj.bias")
        h = F.layer_norm(tokens, (dim,), p("norm2.weight"), p("norm2.bias"), eps)
        hidden = F.gelu(h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"))
        tokens = tokens + hidden @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    pooled = F.layer_norm(tokens.mean(1), (dim,), state["fc_norm.weight"], state["fc_norm.bias"], eps)
    return pooled @ state["head.weight"].T + state["head.bias"]


def in_own_layout(state: dict) -> torch.nn.Module:
    """The same weights put into aptune's model directly, by its own state-dict names."""
    model = tiny_v2_model().eval()
    assert not model.load_state_dict(state, strict=False).unexpected_keys
    return model


# ---------------------------------------------------------------- presets
def test_vit_giant_preset_is_videomae_v2_vit_g():
    config = arch_config("vit_giant_patch14_224")
    shape = (config.embed_dim, config.depth, config.num_heads, config.patch_size, config.tubelet_size)
    assert shape == (1408, 40, 16, 14, 2)
    assert (config.mlp_width, config.num_frames, config.img_size, config.num_patches) == (6144, 16, 224, 2048)
    assert config.mlp_ratio == pytest.approx(48 / 11)
    # the rest as VideoMAE V2's ViT-g is built: q/v biases, LayerNorm eps 1e-6, no layer scale
    assert config.qkv_bias and config.layer_norm_eps == 1e-6 and config.layer_scale_init == 0.0
    with torch.device("meta"):  # 1 G parameters: shapes only
        model = aptune.create_model("vit_giant_patch14_224", method="linear")
    assert tuple(model.blocks[39].mlp.fc1.weight.shape) == (6144, 1408)
    assert tuple(model.patch_embed.proj.weight.shape) == (1408, 3, 2, 14, 14)
    assert model.blocks[0].gamma_1 is None and model.blocks[0].attn.q_bias is not None


def test_a_preset_width_is_dropped_only_when_its_shape_is_overridden():
    assert arch_config("vit_giant_patch14_224", embed_dim=1408).mlp_width == 6144
    assert arch_config("vit_giant_patch14_224", mlp_ratio=4.0).mlp_width == 5632
    wider = arch_config("vit_giant_patch14_224", embed_dim=1664)
    assert wider.mlp_hidden_dim is None and wider.mlp_width == int(1664 * 48 / 11)
    assert arch_config("vit_giant_patch14_224", embed_dim=1664, mlp_hidden_dim=8192).mlp_width == 8192


def test_the_mlp_width_is_exact_where_a_float_ratio_is_not():
    assert int(44 * (WIDTH / 44)) == WIDTH - 1  # why the width is a field of its own
    assert ViTConfig(embed_dim=44, num_heads=4, mlp_ratio=WIDTH / 44).mlp_width == WIDTH - 1
    config = ViTConfig(embed_dim=44, num_heads=4, mlp_ratio=WIDTH / 44, mlp_hidden_dim=WIDTH)
    assert config.mlp_width == WIDTH
    model = tiny_v2_model()
    assert all(tuple(block.mlp.fc1.weight.shape) == (WIDTH, 44) for block in model.blocks)


def test_the_width_is_stored_only_when_set():
    plain = ViTConfig()
    assert "mlp_hidden_dim" not in plain.to_dict()  # headers of such models are as before the field
    assert ViTConfig.from_dict(plain.to_dict()) == plain
    exact = ViTConfig(embed_dim=44, num_heads=4, mlp_hidden_dim=WIDTH)
    assert exact.to_dict()["mlp_hidden_dim"] == WIDTH
    assert ViTConfig.from_dict(exact.to_dict()) == exact
    with pytest.raises(CheckpointError, match="key 'mlp_hidden_dim' is 0, expected a positive integer"):
        check_arch_values({"mlp_hidden_dim": 0}, "x.safetensors: adapter header 'arch'")
    assert check_arch_values({"mlp_hidden_dim": None}, "x") == {"mlp_hidden_dim": None}


def test_an_adapter_records_the_width_and_refuses_another(tmp_path):
    model = tiny_v2_model("apt", num_prompts=2)
    path = aptune.save_adapter(model, tmp_path / "v2.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert '"mlp_hidden_dim": 98' in handle.metadata()["arch"]
    backbone = tmp_path / "backbone.safetensors"
    save_file({k: v for k, v in model.state_dict().items() if not k.startswith("kv_prompts.")}, str(backbone))
    rebuilt = model_from_adapter(path, pretrained=backbone)
    assert tuple(rebuilt.blocks[0].mlp.fc1.weight.shape) == (WIDTH, 44)
    x = v2_clip()
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))
    rounded = tiny_v2_model("apt", num_prompts=2, mlp_hidden_dim=None)  # same ratio, 97 wide
    with pytest.raises(CheckpointError, match="mlp_hidden_dim=98, the model has mlp_hidden_dim=97"):
        aptune.load_adapter(rounded, path)


def test_a_hugging_face_config_keeps_an_inexact_width():
    def config(hidden, intermediate):
        return {
            "model_type": "videomae",
            "hidden_size": hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": intermediate,
        }

    arch, _ = arch_from_hf_config(config(44, WIDTH), "config.json")
    assert arch["mlp_hidden_dim"] == WIDTH and ViTConfig.from_dict(arch).mlp_width == WIDTH
    arch, _ = arch_from_hf_config(config(32, 128), "config.json")
    assert "mlp_hidden_dim" not in arch  # the ratio gives it exactly: nothing more to record


# ------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    "wrapper, prefix", [("module", ""), ("model", ""), ("model", "backbone."), ("module", "_orig_mod.")]
)
def test_a_finetuned_v2_file_gives_the_logits_of_its_own_layout(wrapper, prefix, tmp_path):
    state = v2_finetuned_state()
    path = tmp_path / "vit_s_k710_dl_from_giant.pth"
    torch.save({wrapper: {prefix + k: v for k, v in state.items()}, "epoch": 9}, path)
    model = tiny_v2_model(pretrained=path).eval()
    assert tuple(model.blocks[1].mlp.fc1.weight.shape) == (WIDTH, 44)
    assert tuple(model.patch_embed.proj.weight.shape) == (44, 3, 2, 14, 14)
    x = v2_clip()
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, in_own_layout(state)(x))
    torch.testing.assert_close(logits, v2_reference_logits(state, x), rtol=1e-5, atol=1e-5)


def test_a_pretrained_v2_file_loads_its_encoder(tmp_path):
    path = tmp_path / "vit_g_hybrid_pt_1200e.pth"
    torch.save({"model": v2_pretrain_state()}, path)
    model = tiny_v2_model("apt", num_classes=3, num_prompts=2, pretrained=path).eval()
    assert model.head.out_features == 3
    reference = in_own_layout(v2_finetuned_state())
    x = v2_clip()
    with torch.no_grad(), model.extensions_disabled():
        assert torch.equal(model.forward_pooled(x), reference.forward_pooled(x))


def test_a_head_of_another_size_is_dropped(tmp_path):
    state = v2_finetuned_state(classes=710)  # V2's Kinetics-710 classifiers
    path = tmp_path / "vit_g_k710_ft.pth"
    torch.save({"module": state}, path)
    model = tiny_v2_model(num_classes=CLASSES, pretrained=path).eval()
    assert model.head.out_features == CLASSES
    reference = in_own_layout({k: v for k, v in state.items() if not k.startswith("head.")})
    with torch.no_grad():
        assert torch.equal(model.forward_features(v2_clip()), reference.forward_features(v2_clip()))


def test_a_patch_size_that_does_not_fit_is_named(tmp_path):
    path = tmp_path / "giant.pth"
    torch.save({"module": v2_finetuned_state()}, path)
    with pytest.raises(CheckpointError) as caught:
        tiny_v2_model(pretrained=path, patch_size=16, img_size=32)
    message = str(caught.value)
    assert "\n" not in message and "giant.pth: 'patch_embed.proj.weight' embeds 14x14-pixel patches" in message
    assert "patch_size=16" in message and "vit_giant_patch14_224" in message


def test_an_mlp_width_that_does_not_fit_is_named(tmp_path):
    path = tmp_path / "giant.pth"
    torch.save({"module": v2_finetuned_state()}, path)
    with pytest.raises(CheckpointError) as caught:
        tiny_v2_model(pretrained=path, mlp_hidden_dim=None)  # the float ratio: 97 wide
    message = str(caught.value)
    assert "\n" not in message
    assert "giant.pth: 'blocks.0.mlp.fc1.weight' has an MLP hidden width of 98 but the model's is 97" in message
    assert "set mlp_hidden_dim=98" in message


def test_a_class_token_or_a_first_token_classifier_is_refused(tmp_path):
    state = v2_finetuned_state()
    path = tmp_path / "cls.pth"
    torch.save({"module": {**state, "cls_token": torch.zeros(1, 1, 44)}}, path)
    with pytest.raises(CheckpointError, match="cls.pth: 'cls_token' is a class token"):
        tiny_v2_model(pretrained=path)
    # --use_cls: a last norm on every token and no fc_norm; the head reads the first token
    first_token = {k: v for k, v in state.items() if not k.startswith("fc_norm.")}
    first_token.update({"norm.weight": torch.ones(44), "norm.bias": torch.zeros(44)})
    path = tmp_path / "use_cls.pth"
    torch.save({"module": first_token}, path)
    with pytest.raises(CheckpointError, match="use_cls.pth: has 'norm.weight' but no 'fc_norm.weight'"):
        tiny_v2_model(pretrained=path)
    backbone_only = tiny_v2_model(num_classes=CLASSES + 1, pretrained=path).eval()  # its head dropped
    reference = in_own_layout({k: v for k, v in state.items() if k.startswith(("patch_embed.", "blocks."))})
    with torch.no_grad():
        assert torch.equal(backbone_only.forward_pooled(v2_clip()), reference.forward_pooled(v2_clip()))


# ------------------------------------------------------------ multiply-adds
def vit_g(method, **options):
    with torch.device("meta"):  # shapes only: nothing of ViT-g's 4 GB is allocated
        return aptune.create_model("vit_giant_patch14_224", num_classes=400, method=method, **options)


VIEW = (1, 3, 16, 224, 224)


def test_vit_g_multiply_adds_match_the_closed_form_and_the_paper_number():
    model = vit_g("linear")
    tokens, dim, hidden, depth = 2048, 1408, 6144, 40
    block = 4 * tokens * dim**2 + 2 * tokens * dim * hidden + 2 * tokens**2 * dim
    without_head = depth * block + tokens * dim * 3 * 2 * 14 * 14
    assert closed_form_macs(model.config, num_classes=0) == without_head
    assert round(without_head / 1e9, 1) == 2542.8
    counted = count_macs(model, VIEW)
    assert counted == closed_form_macs(model.config) == without_head + dim * 400


@pytest.mark.parametrize("method", ["linear", "apt", "vpt-deep"])
def test_the_closed_form_uses_the_exact_width(method):
    prompts = 0 if method == "linear" else 3
    model = tiny_v2_model(method, **({"num_prompts": prompts} if prompts else {}))
    counted = count_macs(model, (1, 3, 4, 28, 28), meta=False)
    assert counted == closed_form_macs(model.config, method, prompts)
    # a width rounded from the ratio (97) is one hidden unit short for every token (8 + VPT's 3)
    # in both MLP layers of both blocks
    rounded = arch_config(None, **V2_TINY, mlp_ratio=WIDTH / 44, num_classes=CLASSES)
    tokens = 8 + (prompts if method == "vpt-deep" else 0)
    assert counted - closed_form_macs(rounded, method, prompts) == 2 * 2 * 44 * tokens


@pytest.mark.parametrize("method, prompts", [("apt", 2), ("apt", 400), ("vpt-deep", 2), ("vpt-deep", 400)])
def test_vit_g_prompt_costs_match_the_closed_forms(method, prompts):
    model = vit_g(method, num_prompts=prompts)
    counted = count_macs(model, VIEW)
    assert counted == closed_form_macs(model.config, method, prompts)
    tokens, dim, hidden, depth = 2048, 1408, 6144, 40
    extra = counted - closed_form_macs(model.config)
    if method == "apt":  # P more keys and values for the N queries of every block
        assert extra == depth * 2 * tokens * prompts * dim
    else:  # P more tokens through every projection and the MLP, and (N + P)^2 attention pairs
        assert extra == depth * (
            4 * prompts * dim**2 + 2 * prompts * dim * hidden + 2 * dim * (2 * tokens * prompts + prompts**2)
        )


def test_aptune_bench_rows_count_vit_g():
    model = vit_g("full")
    cases = build_cases(model, ("linear", "apt"), (400,))
    rows = [_static_row("vit_giant_patch14_224", case, model, VIEW, train=False) for case in cases]
    assert [row["gmacs"] for row in rows] == [
        round(closed_form_macs(model.config, "linear") / 1e9, 6),
        round(closed_form_macs(model.config, "apt", 400) / 1e9, 6),
    ]
