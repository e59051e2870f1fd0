"""Every pretrained layout loads with no missing backbone tensors, and gives the same logits."""

import json

import pytest
import torch
from helpers import TINY, randomize_, reference_apt_logits, tiny_clip, tiny_hf_model, tiny_model

import aptune
from aptune.errors import CheckpointError

BACKBONE = ("patch_embed.", "blocks.")


@pytest.fixture
def source():
    model = tiny_model("full", num_classes=5).eval()
    randomize_(model)
    return model


def backbone_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(BACKBONE)}


def _pooled(model, x):
    tokens, _ = model.patch_embed(x)
    tokens = tokens + model.pos_embed
    for block in model.blocks:
        tokens = block(tokens)
    return tokens.mean(1)


def test_videomae_pretraining_checkpoint(source, tmp_path):
    state = {f"encoder.{k}": v for k, v in backbone_state(source).items()}
    state.update({
        "encoder.norm.weight": torch.ones(32), "encoder.norm.bias": torch.zeros(32),
        "mask_token": torch.zeros(1, 1, 16), "encoder_to_decoder.weight": torch.zeros(16, 32),
        "decoder.blocks.0.attn.qkv.weight": torch.zeros(48, 16), "decoder.head.weight": torch.zeros(1536, 16),
    })
    path = tmp_path / "pretrain.pth"
    torch.save({"model": state, "epoch": 799}, path)
    model = tiny_model("apt", num_prompts=2, pretrained=path).eval()
    x = tiny_clip()
    torch.testing.assert_close(_pooled(model, x), _pooled(source, x))


def test_videomae_finetuned_checkpoint_drops_a_mismatched_head(source, tmp_path):
    path = tmp_path / "finetuned.pth"
    torch.save({"module": source.state_dict()}, path)
    same = tiny_model("linear", num_classes=5, pretrained=path).eval()
    x = tiny_clip()
    torch.testing.assert_close(same(x), source(x))  # head kept: same number of classes
    other = tiny_model("linear", num_classes=7, pretrained=path).eval()
    assert other.head.out_features == 7
    torch.testing.assert_close(other.forward_features(x), source.forward_features(x))


def test_official_apt_checkpoint_gives_the_official_logits(tmp_path):
    model = tiny_model("apt", num_prompts=3, reparam=True).eval()
    randomize_(model)
    with torch.no_grad():
        model.kv_prompts.scales.uniform_(0.3, 2.0)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("kv_prompts.", "fc_norm."))}
    state["prompt_embeddings_k"] = model.kv_prompts.keys.detach().clone()
    state["prompt_embeddings_v"] = model.kv_prompts.values.detach().clone()
    state["prompt_scale"] = model.kv_prompts.scales.detach().clone()
    state["head_norm.weight"] = model.fc_norm.weight.detach().clone()
    state["head_norm.bias"] = model.fc_norm.bias.detach().clone()
    path = tmp_path / "apt_official.pth"
    torch.save({"model": state}, path)
    # number of prompts and reparam are read from the file
    loaded = tiny_model("apt", num_classes=5, pretrained=path).eval()
    assert loaded.kv_prompts.keys.shape == (3, 3, 8)
    x = tiny_clip()
    torch.testing.assert_close(loaded(x), reference_apt_logits(model, x), rtol=1e-4, atol=1e-5)


def test_huggingface_directory_gives_the_same_logits(tmp_path):
    hf = tiny_hf_model()
    hf.save_pretrained(tmp_path / "hf")
    model = aptune.create_model(pretrained=tmp_path / "hf", method="linear").eval()
    assert model.config.embed_dim == 32 and model.config.depth == 3
    assert model.class_names == [f"action_{i}" for i in range(5)]
    x = tiny_clip()
    with torch.no_grad():
        expected = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_huggingface_legacy_bias_names_and_bin_weights(tmp_path):
    hf = tiny_hf_model()
    folder = tmp_path / "legacy"
    hf.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    state = {}
    for key, value in hf.state_dict().items():
        key = key.replace("attention.attention.query.bias", "attention.attention.q_bias")
        key = key.replace("attention.attention.value.bias", "attention.attention.v_bias")
        state[key] = value
    torch.save(state, folder / "pytorch_model.bin")
    model = aptune.create_model(pretrained=folder, method="linear").eval()
    x = tiny_clip()
    with torch.no_grad():
        expected = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_huggingface_pretraining_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.VideoMAEConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=16, num_frames=4, decoder_hidden_size=16,
        decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
    )
    transformers.VideoMAEForPreTraining(config).save_pretrained(tmp_path / "pre")
    model = aptune.create_model(pretrained=tmp_path / "pre", num_classes=3, method="apt", num_prompts=2)
    assert model.head.out_features == 3 and model.class_names is None


def test_not_a_checkpoint_is_a_one_line_error(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: cannot be read"):
        tiny_model(pretrained=junk)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth: file is empty"):
        tiny_model(pretrained=empty)
    with pytest.raises(CheckpointError, match="no such file"):
        tiny_model(pretrained=tmp_path / "missing.pth")


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        tiny_model(pretrained=path)


def test_shape_mismatch_names_the_key(source, tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(backbone_state(source), path)
    with pytest.raises(CheckpointError, match=r"wide.pth: 'patch_embed.proj.weight' has shape"):
        aptune.create_model(None, method="linear", **{**TINY, "embed_dim": 64}, pretrained=path)


def test_missing_backbone_tensors_are_an_error(source, tmp_path):
    state = backbone_state(source)
    state = {k: v for k, v in state.items() if not k.startswith("blocks.2.")}
    path = tmp_path / "shallow.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing 'blocks.2."):
        tiny_model(pretrained=path)


def test_hf_config_errors_name_the_file(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(CheckpointError, match="config.json: model_type is 'vit'"):
        aptune.create_model(pretrained=folder)
    (folder / "config.json").write_text("{ nope")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        aptune.create_model(pretrained=folder)


def test_safetensors_checkpoint(source, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "backbone.safetensors"
    save_file(backbone_state(source), path)
    model = tiny_model("linear", pretrained=path).eval()
    x = tiny_clip()
    torch.testing.assert_close(_pooled(model, x), _pooled(source, x))
