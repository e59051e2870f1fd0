"""aptune merge: a LoRA adapter folded into its backbone loads as a plain model with the same logits."""

import json

import pytest
import torch
from helpers import TINY, randomize_, tiny_clip, tiny_model
from safetensors import safe_open

import aptune
from aptune.cli import main
from aptune.cli.merge import merge_adapter
from aptune.errors import AptuneError, CheckpointError, ConfigError

CLASSES = [f"class_{i}" for i in range(5)]


@pytest.fixture
def backbone(tmp_path):
    """A random backbone in the original VideoMAE pre-training layout {"model": {"encoder.*"}}."""
    model = tiny_model("full")
    randomize_(model, seed=1)
    encoder = {
        f"encoder.{name}": tensor
        for name, tensor in model.state_dict().items()
        if name.startswith(("patch_embed.", "blocks."))
    }
    encoder["encoder.norm.weight"] = torch.ones(TINY["embed_dim"])  # ignored by the loader
    path = tmp_path / "pretrain.pth"
    torch.save({"model": encoder}, path)
    return path


def trained_adapter(tmp_path, backbone, method, seed=2, **options):
    """An adapter whose trained tensors are random (LoRA's up-projection is no longer zero)."""
    model = tiny_model(method, pretrained=backbone, class_names=CLASSES, method_options=options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return aptune.save_adapter(model, tmp_path / f"{method}.safetensors")


def logits(model):
    with torch.inference_mode():
        return model.eval()(tiny_clip(batch=2))


@pytest.mark.parametrize(
    "options", [{}, {"lora_rank": 3, "prompt_start": 1, "prompt_end": 1}], ids=["all-blocks", "block-1"]
)
def test_lora_merge_gives_the_adapter_logits(tmp_path, backbone, options):
    adapter = trained_adapter(tmp_path, backbone, "lora", **options)
    output = tmp_path / "out" / "merged.safetensors"
    assert main(["merge", "--adapter", str(adapter), "--pretrained", str(backbone), "--output", str(output)]) == 0
    expected = logits(aptune.model_from_adapter(adapter, pretrained=backbone))

    with safe_open(str(output), framework="pt") as f:
        names, meta = set(f.keys()), f.metadata()
    assert not any(n.startswith("qkv_adapters") for n in names)
    assert {
        "fc_norm.weight",
        "fc_norm.bias",
        "head.weight",
        "head.bias",
        "pos_embed",
        "blocks.2.attn.qkv.weight",
        "patch_embed.proj.weight",
    } <= names
    assert meta["format"] == "aptune-merged"
    assert json.loads(meta["class_names"]) == CLASSES
    assert json.loads(meta["merged_from"])["method"]["name"] == "lora"
    arch = json.loads(meta["arch"])
    assert {k: arch[k] for k in TINY} == TINY
    assert list(output.parent.iterdir()) == [output]  # no temporary file left behind

    for method in ("linear", "full"):
        merged = aptune.create_model(None, method=method, pretrained=output, **TINY)
        assert merged.extension("qkv_adapters") is None and merged.num_classes == len(CLASSES)
        torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=1e-5)
    # the file's header alone rebuilds the model: architecture and class names
    rebuilt = aptune.create_model(method="linear", pretrained=output)
    assert {k: getattr(rebuilt.config, k) for k in TINY} == TINY
    assert rebuilt.class_names == CLASSES
    torch.testing.assert_close(logits(rebuilt), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="merged.safetensors: the weights have embed_dim="):
        aptune.create_model("vit_small_patch16_224", method="linear", pretrained=output)
    # the LoRA update mattered: the same model without it gives other logits
    unadapted = aptune.model_from_adapter(adapter, pretrained=backbone)
    unadapted.remove_extension("qkv_adapters")
    assert not torch.allclose(logits(unadapted), expected, atol=1e-3)


def test_linear_adapter_is_written_as_a_full_model(tmp_path, backbone):
    adapter = trained_adapter(tmp_path, backbone, "linear")
    output = merge_adapter(adapter, backbone, tmp_path / "linear_full.safetensors")
    expected = logits(aptune.model_from_adapter(adapter, pretrained=backbone))
    merged = aptune.create_model(None, method="full", pretrained=output, **TINY)
    torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=1e-5)


def test_bitfit_merge_is_the_backbone_with_its_tuned_biases(tmp_path, backbone):
    adapter = trained_adapter(tmp_path, backbone, "bitfit")
    output = merge_adapter(adapter, backbone, tmp_path / "bitfit_full.safetensors")
    expected = logits(aptune.model_from_adapter(adapter, pretrained=backbone))
    merged = aptune.create_model(None, method="linear", pretrained=output, **TINY)
    assert not list(merged.named_extensions())
    torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=1e-5)
    plain = aptune.create_model(None, method="linear", pretrained=backbone, num_classes=len(CLASSES), **TINY)
    plain.load_state_dict(
        {k: v for k, v in merged.state_dict().items() if k.startswith(("fc_norm.", "head."))}, strict=False
    )
    assert not torch.allclose(logits(plain), expected, atol=1e-3)  # the tuned biases mattered


@pytest.mark.parametrize(
    "method, options",
    [("apt", {"num_prompts": 2}), ("vpt-deep", {"num_prompts": 2}), ("adaptformer", {"adapter_dim": 4})],
)
def test_unmergeable_adapters_are_one_line_errors(tmp_path, backbone, capsys, method, options):
    adapter = trained_adapter(tmp_path, backbone, method, **options)
    output = tmp_path / "merged.safetensors"
    with pytest.raises(CheckpointError, match="cannot be merged"):
        merge_adapter(adapter, backbone, output)
    assert main(["merge", "--adapter", str(adapter), "--pretrained", str(backbone), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "cannot be merged" in err and "\n" not in err
    assert not output.exists()


def test_merge_argument_errors(tmp_path, backbone):
    adapter = trained_adapter(tmp_path, backbone, "lora")
    with pytest.raises(AptuneError, match="--pretrained"):
        merge_adapter(adapter, None, tmp_path / "merged.safetensors")
    with pytest.raises(AptuneError, match="safetensors"):
        merge_adapter(adapter, backbone, tmp_path / "merged.pth")
    with pytest.raises(CheckpointError, match="no such adapter"):
        merge_adapter(tmp_path / "missing.safetensors", backbone, tmp_path / "m.safetensors")


def test_broken_merged_header_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    from aptune.errors import CheckpointError
    from aptune.models.checkpoints import load_checkpoint

    path = tmp_path / "merged.safetensors"
    for arch, message in (
        ("{not json", "header 'arch' is not valid JSON"),
        ('{"depth": "2"}', "header 'arch' key 'depth' is '2', expected a positive integer"),
        ('{"depth": 0}', "header 'arch' key 'depth' is 0, expected a positive integer"),
        ('{"embed_dim": 30, "num_heads": 4}', "header 'arch': embed_dim=30 is not divisible"),
        ('{"layer_norm_eps": -1}', "header 'arch' key 'layer_norm_eps' is -1, expected a positive"),
        ("[1]", "header 'arch' must be a JSON dict"),
    ):
        save_file({"head.weight": torch.zeros(2, 4)}, str(path), metadata={"format": "aptune-merged", "arch": arch})
        with pytest.raises(CheckpointError, match=f"merged.safetensors: aptune-merged {message}"):
            load_checkpoint(path)
    # training-only settings do not travel with the weights; other safetensors files have no header
    save_file(
        {"head.weight": torch.zeros(2, 4)},
        str(path),
        metadata={"format": "aptune-merged", "arch": '{"depth": 2, "drop_path_rate": 0.3}'},
    )
    assert load_checkpoint(path).arch == {"depth": 2}
    save_file({"head.weight": torch.zeros(2, 4)}, str(path))
    assert load_checkpoint(path).arch is None and load_checkpoint(path).class_names is None


def test_merge_refuses_another_backbone_unless_allowed(tmp_path, backbone, capsys):
    adapter = trained_adapter(tmp_path, backbone, "lora")
    other = tiny_model("full")
    randomize_(other, seed=9)
    wrong = tmp_path / "other.pth"
    torch.save({k: v for k, v in other.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}, wrong)
    output = tmp_path / "merged.safetensors"
    assert main(["merge", "--adapter", str(adapter), "--pretrained", str(wrong), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "fingerprint" in err and "\n" not in err and not output.exists()
    assert (
        main(
            [
                "merge",
                "--adapter",
                str(adapter),
                "--pretrained",
                str(wrong),
                "--output",
                str(output),
                "--allow-backbone-mismatch",
            ]
        )
        == 0
    )
    assert output.is_file()
