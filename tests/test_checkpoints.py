"""Every pretrained layout loads with no missing backbone tensors, and gives the same logits."""

import json
import math

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
    state.update(
        {
            "encoder.norm.weight": torch.ones(32),
            "encoder.norm.bias": torch.zeros(32),
            "mask_token": torch.zeros(1, 1, 16),
            "encoder_to_decoder.weight": torch.zeros(16, 32),
            "decoder.blocks.0.attn.qkv.weight": torch.zeros(48, 16),
            "decoder.head.weight": torch.zeros(1536, 16),
        }
    )
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


def official_apt_state(
    reparam: bool, seed: int = 0, depth: int = 3, dim: int = 32, heads: int = 4, prompts: int = 3, classes: int = 5
) -> dict:
    """A checkpoint of the official APT code, written from its description, not from aptune's model.

    VideoMAE block names (fused ``attn.qkv.weight`` with separate ``q_bias``/``v_bias``, ``norm1``,
    ``mlp.fc1``/``fc2``, ``patch_embed.proj``), prompts ``prompt_embeddings_k``/``_v`` of shape
    (layers, P, head_dim), ``prompt_scale`` (layers, 2, P) and ``head_norm`` for the pooled LayerNorm.
    """
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, offset=0.0):
        return torch.randn(*shape, generator=generator) * 0.2 + offset

    state = {"patch_embed.proj.weight": rand(dim, 3, 2, 16, 16), "patch_embed.proj.bias": rand(dim)}
    for i in range(depth):
        state.update(
            {
                f"blocks.{i}.norm1.weight": rand(dim, offset=1.0),
                f"blocks.{i}.norm1.bias": rand(dim),
                f"blocks.{i}.attn.qkv.weight": rand(3 * dim, dim),
                f"blocks.{i}.attn.q_bias": rand(dim),
                f"blocks.{i}.attn.v_bias": rand(dim),
                f"blocks.{i}.attn.proj.weight": rand(dim, dim),
                f"blocks.{i}.attn.proj.bias": rand(dim),
                f"blocks.{i}.norm2.weight": rand(dim, offset=1.0),
                f"blocks.{i}.norm2.bias": rand(dim),
                f"blocks.{i}.mlp.fc1.weight": rand(4 * dim, dim),
                f"blocks.{i}.mlp.fc1.bias": rand(4 * dim),
                f"blocks.{i}.mlp.fc2.weight": rand(dim, 4 * dim),
                f"blocks.{i}.mlp.fc2.bias": rand(dim),
            }
        )
    state["prompt_embeddings_k"] = rand(depth, prompts, dim // heads, offset=0.0) * 5
    state["prompt_embeddings_v"] = rand(depth, prompts, dim // heads) * 5
    if reparam:  # scales on both sides of one: max(s, 1) must clip those below
        state["prompt_scale"] = torch.rand(depth, 2, prompts, generator=generator) * 1.7 + 0.3
    state["head_norm.weight"], state["head_norm.bias"] = rand(dim, offset=1.0), rand(dim)
    state["head.weight"], state["head.bias"] = rand(classes, dim), rand(classes)
    return state


def videomae_position_table(positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's sinusoid table, written out: angle = p / 10000^(2 * (j // 2) / dim); sin even, cos odd."""
    rows = []
    for p in range(positions):
        angles = [p / 10000 ** (2 * (j // 2) / dim) for j in range(dim)]
        rows.append([math.sin(a) if j % 2 == 0 else math.cos(a) for j, a in enumerate(angles)])
    return torch.tensor(rows, dtype=torch.float32)


def official_reference_logits(state: dict, x: torch.Tensor, depth: int = 3, heads: int = 4) -> torch.Tensor:
    """The explicit-softmax reference of tests/helpers.py, reading the official file's own tensors."""
    from types import SimpleNamespace as NS

    import torch.nn.functional as F

    def linear(prefix):
        return lambda h: F.linear(h, state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    def norm(prefix):
        return NS(weight=state[f"{prefix}.weight"], bias=state[f"{prefix}.bias"])

    dim = state["patch_embed.proj.bias"].shape[0]
    tokens = (x.shape[2] // 2) * (x.shape[3] // 16) * (x.shape[4] // 16)
    scales = state.get("prompt_scale")
    model = NS(
        config=NS(num_heads=heads, head_dim=dim // heads, layer_norm_eps=1e-6),
        patch_embed=NS(
            proj=lambda clip: F.conv3d(
                clip, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=(2, 16, 16)
            )
        ),
        pos_embed=videomae_position_table(tokens, dim)[None],
        kv_prompts=NS(
            first_layer=0,
            last_layer=depth - 1,
            keys=state["prompt_embeddings_k"],
            values=state["prompt_embeddings_v"],
            scales=scales,
        ),
        blocks=[
            NS(
                norm1=norm(f"blocks.{i}.norm1"),
                norm2=norm(f"blocks.{i}.norm2"),
                attn=NS(
                    qkv=NS(weight=state[f"blocks.{i}.attn.qkv.weight"]),
                    q_bias=state[f"blocks.{i}.attn.q_bias"],
                    v_bias=state[f"blocks.{i}.attn.v_bias"],
                    proj=norm(f"blocks.{i}.attn.proj"),
                ),
                mlp=NS(fc1=linear(f"blocks.{i}.mlp.fc1"), fc2=linear(f"blocks.{i}.mlp.fc2")),
            )
            for i in range(depth)
        ],
        fc_norm=norm("head_norm"),
        head=norm("head"),
    )
    return reference_apt_logits(model, x)


@pytest.mark.parametrize("reparam", [True, False])
def test_official_apt_checkpoint_gives_the_official_logits(tmp_path, reparam):
    state = official_apt_state(reparam)
    path = tmp_path / "apt_official.pth"
    torch.save({"model": state, "epoch": 99}, path)
    # number of prompts and reparam are read from the file
    loaded = tiny_model("apt", num_classes=5, pretrained=path).eval()
    assert loaded.kv_prompts.keys.shape == (3, 3, 8)
    assert (loaded.kv_prompts.scales is not None) == reparam
    x = tiny_clip()
    with torch.no_grad():
        expected = official_reference_logits(state, x)
        got = loaded(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the reference is sensitive to what the file holds: without its prompts the logits differ
    without = {k: v for k, v in state.items() if not k.startswith("prompt_")}
    without["prompt_embeddings_k"] = torch.zeros_like(state["prompt_embeddings_k"])
    without["prompt_embeddings_v"] = torch.zeros_like(state["prompt_embeddings_v"])
    assert not torch.allclose(official_reference_logits(without, x), expected, atol=1e-3)


def test_official_apt_prompt_tensors_are_checked(tmp_path):
    state = official_apt_state(True)
    for change, words in (
        ({"prompt_embeddings_v": None}, "no 'prompt_embeddings_v'"),
        ({"prompt_embeddings_v": torch.zeros(3, 2, 8)}, "must both be (layers, P, head_dim)"),
        ({"prompt_embeddings_k": torch.zeros(3, 8)}, "must both be (layers, P, head_dim)"),
        ({"prompt_scale": torch.ones(3, 3)}, "'prompt_scale' has shape (3, 3)"),
    ):
        broken = {k: v for k, v in state.items() if not (k in change and change[k] is None)}
        broken.update({k: v for k, v in change.items() if v is not None})
        path = tmp_path / "apt_official.pth"
        torch.save({"model": broken}, path)
        with pytest.raises(CheckpointError) as caught:
            tiny_model("apt", num_classes=5, pretrained=path)
        assert "apt_official.pth" in str(caught.value) and words in str(caught.value)


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
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=16,
        num_frames=4,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
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


# ------------------------------------------------------ malformed pretrained inputs
def test_integer_state_dict_keys_are_a_one_line_error(source, tmp_path):
    for name, payload in (
        ("flat", {0: torch.zeros(2), **backbone_state(source)}),
        ("wrapped", {"model": {**backbone_state(source), 7: torch.zeros(2)}}),
        ("tuple-key", {("blocks", 0): torch.zeros(2)}),
    ):
        path = tmp_path / f"{name}.pth"
        torch.save(payload, path)
        with pytest.raises(CheckpointError) as caught:
            tiny_model(pretrained=path)
        message = str(caught.value)
        assert f"{name}.pth" in message and "expected a string" in message and "\n" not in message


def test_a_position_table_without_a_shape_is_named(source, tmp_path):
    for name, table in (("scalar", torch.tensor(1.0)), ("empty", torch.zeros(1, 0, 32))):
        path = tmp_path / f"{name}.pth"
        torch.save({**backbone_state(source), "pos_embed": table}, path)
        with pytest.raises(CheckpointError, match=f"{name}.pth: 'pos_embed' has shape"):
            tiny_model(pretrained=path)


@pytest.fixture
def hf_folder(tmp_path):
    folder = tmp_path / "hf"
    tiny_hf_model().save_pretrained(folder)
    return folder


def _with_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


HF_CONFIG_CHANGES = {
    "hidden-size-word": ({"hidden_size": "abc"}, "'hidden_size' is 'abc'"),
    "hidden-size-zero": ({"hidden_size": 0}, "'hidden_size' is 0"),
    "hidden-size-negative": ({"hidden_size": -32}, "'hidden_size' is -32"),
    "hidden-size-float": ({"hidden_size": 32.5}, "'hidden_size' is 32.5"),
    "hidden-size-bool": ({"hidden_size": True}, "'hidden_size' is True"),
    "hidden-size-huge": ({"hidden_size": 10**30}, "'hidden_size' is 1000000000000000000000000000000"),
    "hidden-size-missing": ({"hidden_size": None}, "missing key 'hidden_size'"),
    "layers-zero": ({"num_hidden_layers": 0}, "'num_hidden_layers' is 0"),
    "heads-list": ({"num_attention_heads": [4]}, "'num_attention_heads' is [4]"),
    "heads-indivisible": ({"num_attention_heads": 5}, "hidden_size=32 is not divisible by num_attention_heads=5"),
    "intermediate-negative": ({"intermediate_size": -1}, "'intermediate_size' is -1"),
    "frames-zero": ({"num_frames": 0}, "'num_frames' is 0"),
    "frames-not-multiple": ({"num_frames": 5}, "num_frames=5 is not a multiple of tubelet_size=2"),
    "image-size-string": ({"image_size": "32"}, "'image_size' is '32'"),
    "image-not-square": ({"image_size": [32, 48]}, "only square sizes"),
    "patch-zero": ({"patch_size": 0}, "'patch_size' is 0"),
    "channels-null": ({"num_channels": None, "image_size": 32, "tubelet_size": "2"}, "'tubelet_size' is '2'"),
    "eps-string": ({"layer_norm_eps": "1e-12"}, "'layer_norm_eps' is '1e-12'"),
    "eps-negative": ({"layer_norm_eps": -1.0}, "'layer_norm_eps' is -1.0"),
    "qv-bias-string": ({"qv_bias": "yes"}, "'qv_bias' is 'yes'"),
    "pooling-string": ({"use_mean_pooling": "no"}, "'use_mean_pooling' is 'no'"),
    "act-number": ({"hidden_act": 5}, "hidden_act 5 is not supported"),
    "model-type-list": ({"model_type": ["videomae"]}, "model_type is ['videomae']"),
    "labels-string": ({"id2label": "walk,run"}, "'id2label' is a string"),
    "labels-list": ({"id2label": ["a", "b"]}, "'id2label' is a JSON list"),
    "labels-word-key": ({"id2label": {"zero": "a"}}, "'id2label' key 'zero' is not a class index"),
    "labels-number-name": ({"id2label": {str(i): i for i in range(5)}}, "'id2label' entry '0' is 0"),
    "labels-gap": ({"id2label": {"0": "a", "2": "b"}}, "'id2label' has no class 1"),
    "labels-count": ({"id2label": {"0": "a", "1": "b"}}, "'id2label' names 2 classes but the classifier has 5"),
}


@pytest.mark.parametrize("changes, words", list(HF_CONFIG_CHANGES.values()), ids=list(HF_CONFIG_CHANGES))
def test_a_broken_hugging_face_config_is_a_one_line_error(hf_folder, changes, words):
    _with_config(hf_folder, **changes)
    with pytest.raises(CheckpointError) as caught:
        aptune.create_model(pretrained=hf_folder, method="apt", num_prompts=2)
    message = str(caught.value)
    assert "config.json" in message and words in message and "\n" not in message, message


@pytest.mark.parametrize(
    "content, words",
    [
        (b"[1, 2, 3]", "holds a JSON list, expected a JSON object"),
        (b'"videomae"', "holds a string"),
        (b"\xff\xfe{\x00}\x00", "is not UTF-8 text"),
        (b'{"model_type": "vid\xe9omae"}', "is not UTF-8 text"),
        (b"", "invalid JSON"),
        (b"[" * 100_000, "invalid JSON"),
        (b'{"hidden_size": 1' + b"0" * 5000 + b"}", "invalid JSON"),
        (b"null", "holds a null"),
    ],
    ids=["list", "string", "utf16", "latin1", "empty", "deep", "long-number", "null"],
)
def test_a_config_json_that_is_not_an_object_is_a_one_line_error(hf_folder, content, words):
    (hf_folder / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        aptune.create_model(pretrained=hf_folder)
    message = str(caught.value)
    assert message.startswith(str(hf_folder / "config.json")) and words in message and "\n" not in message


def _shard(folder):
    """Turn the folder's model.safetensors into a one-shard checkpoint with an index; returns the index."""
    from safetensors.torch import load_file

    names = list(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}))
    return index, names


def test_a_sharded_hugging_face_folder_loads(hf_folder):
    reference = aptune.create_model(pretrained=hf_folder, method="linear").eval()
    _shard(hf_folder)
    sharded = aptune.create_model(pretrained=hf_folder, method="linear").eval()
    x = tiny_clip()
    torch.testing.assert_close(sharded(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "index, words",
    [
        ("{nope", "invalid JSON"),
        ("[]", "holds a JSON list"),
        ("{}", "'weight_map' is None"),
        ('{"weight_map": ["model.safetensors"]}', "'weight_map' is ['model.safetensors']"),
        ('{"weight_map": {}}', "'weight_map' is {}"),
        ('{"weight_map": {"NAME": 3}}', "weight_map['NAME'] is 3"),
        (
            '{"weight_map": {"NAME": "model-00002-of-00002.safetensors"}}',
            "names shard 'model-00002-of-00002.safetensors', which does not exist",
        ),
        ('{"weight_map": {"NAME": "../outside.safetensors"}}', "outside the checkpoint folder"),
        ('{"weight_map": {"NAME": "/etc/passwd"}}', "outside the checkpoint folder"),
        ('{"weight_map": {"not.in.the.shard": "model-00001-of-00001.safetensors"}}', "which does not hold it"),
    ],
    ids=[
        "bad-json",
        "list",
        "no-map",
        "map-list",
        "map-empty",
        "shard-number",
        "missing-shard",
        "parent",
        "absolute",
        "tensor-elsewhere",
    ],
)
def test_a_broken_shard_index_is_a_one_line_error(hf_folder, index, words):
    index_path, names = _shard(hf_folder)
    (hf_folder.parent / "outside.safetensors").write_bytes(b"")
    index_path.write_text(index.replace("NAME", names[0]))
    with pytest.raises(CheckpointError) as caught:
        aptune.create_model(pretrained=hf_folder)
    message = str(caught.value)
    words = words.replace("NAME", names[0])
    assert "model.safetensors.index.json" in message and words in message and "\n" not in message, message


def test_mismatched_query_key_value_weights_are_named(hf_folder):
    from safetensors.torch import load_file, save_file

    state = load_file(hf_folder / "model.safetensors")
    state["videomae.encoder.layer.1.attention.attention.key.weight"] = torch.zeros(32, 16)
    save_file(state, hf_folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="layer 1's query/key/value weights must have one"):
        aptune.create_model(pretrained=hf_folder)


def test_sparse_and_integer_weights_are_named(source, tmp_path):
    state = backbone_state(source)
    sparse = dict(state, **{"blocks.0.attn.proj.weight": state["blocks.0.attn.proj.weight"].to_sparse()})
    torch.save(sparse, tmp_path / "sparse.pth")
    with pytest.raises(CheckpointError, match="sparse.pth: 'blocks.0.attn.proj.weight' is a torch.sparse_coo"):
        tiny_model(pretrained=tmp_path / "sparse.pth")
    integers = dict(state, **{"blocks.1.mlp.fc1.bias": torch.ones(128, dtype=torch.int32)})
    torch.save(integers, tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match="ints.pth: 'blocks.1.mlp.fc1.bias' holds torch.int32 values"):
        tiny_model(pretrained=tmp_path / "ints.pth")
