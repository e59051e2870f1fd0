"""Adapter files check what they load: method options, architecture, class names, the backbone's
fingerprint and every header field's type; names are escaped for terminals."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import TINY, randomize_, tiny_clip, tiny_model
from safetensors import safe_open
from safetensors.torch import save_file

import aptune
from aptune.adapters import FINGERPRINT_KEY, FORMAT_VERSION, backbone_fingerprint, printable
from aptune.errors import CheckpointError

BACKBONE = ("patch_embed.", "blocks.")


def backbone_of(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(BACKBONE)}


def trained(method="apt", seed=0, **options):
    """A tiny model with a random backbone and random trained tensors."""
    model = tiny_model(method, **options).eval()
    randomize_(model, seed=seed)
    return model


def on_same_backbone(source, method="apt", **options):
    """A fresh model of ``method`` that shares ``source``'s frozen weights."""
    model = tiny_model(method, **options).eval()
    model.load_state_dict(backbone_of(source), strict=False)
    return model


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and "\r" not in message
    return message


def rewrite_header(source, target, **changes):
    """Copy an adapter with header entries replaced (a value of None removes the entry)."""
    with safe_open(str(source), framework="pt") as handle:
        meta = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_file(tensors, str(target), metadata=meta)
    return target


def header_json(path, key):
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()[key])


# ------------------------------------------------------------- method options
DEPTH_12 = dict(depth=12)

# (method, the adapter's options, the model's options, words the error must contain)
MISMATCHES = [
    (
        "apt",
        dict(num_prompts=2, prompt_start=0, prompt_end=5, **DEPTH_12),
        dict(num_prompts=2, prompt_start=6, prompt_end=11, **DEPTH_12),
        ["blocks 0-5", "blocks 6-11"],
    ),
    ("apt", dict(num_prompts=2), dict(num_prompts=3), ["num_prompts=2", "num_prompts=3"]),
    ("apt", dict(num_prompts=2, reparam=True), dict(num_prompts=2, reparam=False), ["reparam=True", "reparam=False"]),
    ("apt", dict(num_prompts=2, prompt_end=1), dict(num_prompts=2), ["blocks 0-1", "blocks 0-2"]),
    (
        "vpt-shallow",
        dict(num_prompts=2, prompt_start=0),
        dict(num_prompts=2, prompt_start=1),
        ["prompt_start=0", "prompt_start=1"],
    ),
    ("vpt-shallow", dict(num_prompts=2), dict(num_prompts=4), ["num_prompts=2", "num_prompts=4"]),
    (
        "vpt-deep",
        dict(num_prompts=2, prompt_start=0, prompt_end=1),
        dict(num_prompts=2, prompt_start=1, prompt_end=2),
        ["blocks 0-1", "blocks 1-2"],
    ),
    ("vpt-deep", dict(num_prompts=3), dict(num_prompts=2), ["num_prompts=3", "num_prompts=2"]),
    ("lora", dict(lora_rank=4), dict(lora_rank=8), ["lora_rank=4", "lora_rank=8"]),
    ("lora", dict(lora_alpha=8.0), dict(lora_alpha=16.0), ["lora_alpha=8.0", "lora_alpha=16.0"]),
    ("lora", dict(prompt_start=1), dict(prompt_start=0), ["blocks 1-2", "blocks 0-2"]),
    ("adaptformer", dict(adapter_dim=4), dict(adapter_dim=8), ["adapter_dim=4", "adapter_dim=8"]),
    ("adaptformer", dict(adapter_scale=0.5), dict(adapter_scale=0.1), ["adapter_scale=0.5", "adapter_scale=0.1"]),
    ("adaptformer", dict(prompt_end=0), dict(prompt_end=1), ["blocks 0-0", "blocks 0-1"]),
]


@pytest.mark.parametrize(
    "method, theirs, mine, words", MISMATCHES, ids=[f"{m}-{'-'.join(w)}" for m, _, _, w in MISMATCHES]
)
def test_a_method_option_that_changes_the_output_must_match(tmp_path, method, theirs, mine, words):
    source = trained(
        method,
        **{"method_options": {k: v for k, v in theirs.items() if k != "depth"}},
        **({"depth": theirs["depth"]} if "depth" in theirs else {}),
    )
    path = aptune.save_adapter(source, tmp_path / "adapter.safetensors")
    target = on_same_backbone(
        source,
        method,
        method_options={k: v for k, v in mine.items() if k != "depth"},
        **({"depth": mine["depth"]} if "depth" in mine else {}),
    )
    with pytest.raises(CheckpointError) as caught:
        aptune.load_adapter(target, path)
    message = one_line(caught)
    assert "adapter.safetensors" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "method, options",
    [
        ("apt", dict(prompt_dropout=0.3, prompt_init="tokens")),
        ("vpt-deep", dict(prompt_dropout=0.2, prompt_init="tokens")),
        ("vpt-shallow", dict(prompt_dropout=0.2, prompt_end=2)),  # shallow prompts never use prompt_end
    ],
)
def test_training_only_options_do_not_block_loading(tmp_path, method, options):
    source = trained(method, method_options={"num_prompts": 2, **options})
    path = aptune.save_adapter(source, tmp_path / "adapter.safetensors")
    target = on_same_backbone(source, method, num_prompts=2)
    aptune.load_adapter(target, path)
    x = tiny_clip()
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["linear", "full", "apt"])
def test_head_shape_and_class_names_must_match(tmp_path, method):
    source = trained(method, num_classes=5)
    source.class_names = [f"c{i}" for i in range(5)]
    path = aptune.save_adapter(source, tmp_path / "adapter.safetensors")
    other_head = on_same_backbone(source, method, num_classes=4)
    with pytest.raises(CheckpointError) as caught:
        aptune.load_adapter(other_head, path)
    assert "num_classes=5" in one_line(caught) and "num_classes=4" in one_line(caught)

    renamed = on_same_backbone(source, method)
    renamed.class_names = ["c0", "c1", "other", "c3", "c4"]
    with pytest.raises(CheckpointError) as caught:
        aptune.load_adapter(renamed, path)
    assert "class 2 is 'c2' in the adapter but 'other' in the model" in one_line(caught)

    unnamed = on_same_backbone(source, method)  # no names yet: it takes the adapter's
    aptune.load_adapter(unnamed, path)
    assert unnamed.class_names == source.class_names


def test_another_architecture_is_refused_by_name(tmp_path):
    source = trained("apt", num_prompts=2)
    path = aptune.save_adapter(source, tmp_path / "adapter.safetensors")
    other = tiny_model("apt", num_prompts=2, mlp_ratio=2.0)
    with pytest.raises(CheckpointError, match=r"mlp_ratio=4.0, the model has mlp_ratio=2.0"):
        aptune.load_adapter(other, path)
    eps = tiny_model("apt", num_prompts=2, fc_norm_eps=1e-3)
    with pytest.raises(CheckpointError, match=r"fc_norm_eps=1e-06, the model has fc_norm_eps=0.001"):
        aptune.load_adapter(eps, path)


# ---------------------------------------------------------------- fingerprint
def test_adapter_records_the_backbone_fingerprint_and_refuses_other_weights(tmp_path, caplog):
    source = trained("apt", num_prompts=2, seed=0)
    path = aptune.save_adapter(source, tmp_path / "adapter.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta[FINGERPRINT_KEY] == backbone_fingerprint(source)
    assert meta[FINGERPRINT_KEY].startswith("sha256-f32:") and int(meta["format_version"]) == FORMAT_VERSION

    other = trained("apt", num_prompts=2, seed=7)  # same shapes, other backbone weights
    with pytest.raises(CheckpointError) as caught:
        aptune.load_adapter(other, path)
    message = one_line(caught)
    assert backbone_fingerprint(source) in message and backbone_fingerprint(other) in message
    assert "allow_backbone_mismatch" in message

    with caplog.at_level(logging.WARNING, logger="aptune.adapters"):
        aptune.load_adapter(other, path, allow_backbone_mismatch=True)
    assert "allow_backbone_mismatch" in caplog.text
    torch.testing.assert_close(other.kv_prompts.keys, source.kv_prompts.keys)


def test_model_from_adapter_checks_the_pretrained_weights(tmp_path):
    source = trained("lora", seed=1)
    right, wrong = tmp_path / "right.pth", tmp_path / "wrong.pth"
    torch.save(backbone_of(source), right)
    torch.save(backbone_of(trained("lora", seed=2)), wrong)
    path = aptune.save_adapter(source, tmp_path / "lora.safetensors")
    x = tiny_clip()
    torch.testing.assert_close(aptune.model_from_adapter(path, pretrained=right).eval()(x), source(x))
    with pytest.raises(CheckpointError, match="fingerprint"):
        aptune.model_from_adapter(path, pretrained=wrong)
    loaded = aptune.model_from_adapter(path, pretrained=wrong, allow_backbone_mismatch=True).eval()
    assert not torch.allclose(loaded(x), source(x))


def test_fingerprint_covers_the_frozen_backbone_only(tmp_path):
    source = trained("apt", num_prompts=2)
    print_before = backbone_fingerprint(source)
    with torch.no_grad():  # trained tensors change during training: the fingerprint must not
        source.kv_prompts.keys.add_(1.0)
        source.head.weight.add_(1.0)
    assert backbone_fingerprint(source) == print_before
    # the same weights under another method (a linear probe, a MultiAdapterModel backbone) agree
    assert backbone_fingerprint(on_same_backbone(source, "linear")) == print_before
    with torch.no_grad():  # an in-place change of a frozen tensor is seen, despite the cache
        source.blocks[1].mlp.fc1.bias[0] += 1e-3
    assert backbone_fingerprint(source) != print_before


def test_fingerprint_is_computed_once_per_load_and_ignores_lossless_dtype_changes(tmp_path, monkeypatch):
    import aptune.adapters as adapters

    source = trained("apt", num_prompts=2)
    with torch.no_grad():  # weights that bf16 holds exactly
        for name, param in source.named_parameters():
            if name.startswith(BACKBONE):
                param.copy_(param.to(torch.bfloat16).float())
    fingerprint = backbone_fingerprint(source)
    assert backbone_fingerprint(source.to(torch.bfloat16)) == fingerprint
    source.float()
    weights = tmp_path / "bf16.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in backbone_of(source).items()}, str(weights))
    path = aptune.save_adapter(source, tmp_path / "adapter.safetensors")

    calls = []
    original = adapters.digest_tensors
    monkeypatch.setattr(adapters, "digest_tensors", lambda tensors: calls.append(1) or original(tensors))
    model = aptune.model_from_adapter(path, pretrained=weights)  # a bf16 file into an fp32 model
    assert len(calls) == 1
    assert backbone_fingerprint(model) == fingerprint and len(calls) == 1  # cached on the model


def test_adapters_of_a_random_backbone_match_the_runs_backbone_file(tmp_path):
    from aptune.engine.runfolder import RANDOM_BACKBONE_NAME
    from aptune.engine.trainer import save_random_backbone

    source = tiny_model("apt", num_prompts=2).eval()  # as the trainer builds it without model.pretrained
    save_random_backbone(source, tmp_path)
    path = aptune.save_adapter(source, tmp_path / "adapter.safetensors")
    model = aptune.model_from_adapter(path, pretrained=tmp_path / RANDOM_BACKBONE_NAME).eval()
    x = tiny_clip()
    torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    other = tmp_path / "other"
    save_random_backbone(tiny_model("apt", num_prompts=2), other)
    with pytest.raises(CheckpointError, match="fingerprint"):
        aptune.model_from_adapter(path, pretrained=other / RANDOM_BACKBONE_NAME)


def test_full_fine_tuning_has_no_backbone_to_fingerprint(tmp_path):
    source = trained("full")
    path = aptune.save_adapter(source, tmp_path / "full.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert FINGERPRINT_KEY not in handle.metadata()
    rebuilt = aptune.model_from_adapter(path).eval()  # holds the whole model: no pretrained needed
    x = tiny_clip()
    torch.testing.assert_close(rebuilt(x), source(x), rtol=0, atol=0)
    aptune.load_adapter(trained("full", seed=9), path)  # and replaces whatever weights were there


def test_format_1_adapters_without_a_fingerprint_still_load_with_a_warning(tmp_path, caplog):
    source = trained("apt", num_prompts=2)
    path = aptune.save_adapter(source, tmp_path / "new.safetensors")
    old = rewrite_header(path, tmp_path / "old.safetensors", format_version="1", **{FINGERPRINT_KEY: None})
    target = trained("apt", num_prompts=2, seed=5)  # even other weights: nothing to compare with
    with caplog.at_level(logging.WARNING, logger="aptune.adapters"):
        aptune.load_adapter(target, old)
    assert "records no backbone fingerprint" in caplog.text
    torch.testing.assert_close(target.kv_prompts.values, source.kv_prompts.values)
    # format 2 made the fingerprint required: a file claiming 2 without one is broken
    broken = rewrite_header(path, tmp_path / "broken.safetensors", **{FINGERPRINT_KEY: None})
    with pytest.raises(CheckpointError, match="lacks 'backbone_fingerprint'"):
        aptune.read_adapter(broken)


# --------------------------------------------------------------- crafted headers
CRAFTED = {
    "version-word": ({"format_version": "one"}, "format_version"),
    "version-float": ({"format_version": "1.5"}, "format_version"),
    "version-zero": ({"format_version": "0"}, "format_version"),
    "version-negative": ({"format_version": "-2"}, "format_version"),
    "no-method": ({"method": None}, "lacks 'method'"),
    "no-arch": ({"arch": None}, "lacks 'arch'"),
    "arch-list": ({"arch": "[1, 2]"}, "'arch' is [1, 2], expected a JSON object"),
    "arch-string": ({"arch": '"vit"'}, "'arch' is 'vit'"),
    "arch-bad-json": ({"arch": "{nope"}, "'arch' is not valid JSON"),
    "method-string": ({"method": '"apt"'}, "'method' is 'apt'"),
    "method-unknown": ({"method": '{"name": "prefix"}'}, "method 'prefix'"),
    "method-name-number": ({"method": '{"name": 3}'}, "names method 3"),
    "class-names-string": ({"class_names": '"a,b"'}, "'class_names' is a string"),
    "class-names-numbers": ({"class_names": "[1, 2, 3, 4, 5]"}, "entry 0 is 1"),
    "class-names-count": ({"class_names": '["a", "b"]'}, "2 class names but its arch has num_classes=5"),
    "family-list": ({"backbone_family": '["videomae"]'}, "backbone_family"),
    "fingerprint-junk": ({FINGERPRINT_KEY: "\x1b[2J"}, "backbone_fingerprint"),
    "preprocess-list": ({"preprocess": "[16]"}, "'preprocess' is [16]"),
}
ARCH_CHANGES = {
    "num-heads-string": ({"num_heads": "4"}, "'num_heads' is '4', expected a positive integer"),
    "embed-dim-zero": ({"embed_dim": 0}, "'embed_dim' is 0"),
    "depth-negative": ({"depth": -3}, "'depth' is -3"),
    "depth-bool": ({"depth": True}, "'depth' is True"),
    "depth-huge": ({"depth": 10**9}, "'depth' is 1000000000"),
    "heads-indivisible": ({"num_heads": 5}, "embed_dim=32 is not divisible by num_heads=5"),
    "eps-negative": ({"layer_norm_eps": -1e-6}, "'layer_norm_eps' is -1e-06"),
    "mean-short": ({"mean": [0.5]}, "'mean' is [0.5]"),
    "qkv-bias-string": ({"qkv_bias": "yes"}, "'qkv_bias' is 'yes'"),
    "classes-zero": ({"num_classes": 0}, "'num_classes' is 0"),
}
METHOD_CHANGES = {
    "prompts-string": ({"num_prompts": "2"}, "option 'num_prompts' is '2'"),
    "prompts-negative": ({"num_prompts": -1}, "option 'num_prompts' is -1"),
    "prompts-huge": ({"num_prompts": 10**9}, "option 'num_prompts' is 1000000000"),
    "reparam-string": ({"reparam": "yes"}, "option 'reparam' is 'yes'"),
    "dropout-too-big": ({"prompt_dropout": 2.0}, "option 'prompt_dropout' is 2.0"),
    "start-float": ({"prompt_start": 0.5}, "option 'prompt_start' is 0.5"),
}
PREPROCESS_CHANGES = {
    "frames-zero": ({"num_frames": 0}, "'num_frames' is 0"),
    "frames-string": ({"num_frames": "16"}, "'num_frames' is '16'"),
    "size-zero": ({"input_size": 0}, "'input_size' is 0"),
    "std-zero": ({"std": [0, 1, 1]}, "'std' is [0, 1, 1]"),
    "sampling-number": ({"sampling": 3}, "'sampling' is 3"),
    "sampling-unknown": ({"sampling": "random"}, "'sampling' is 'random'"),
    "crops-two": ({"test_num_crop": 2}, "'test_num_crop' is 2, expected 1 or 3"),
    "segments-huge": ({"test_num_segment": 10**6}, "'test_num_segment' is 1000000"),
    "size-list": ({"input_size": [3, 32, 32]}, "'input_size' is [3, 32, 32]"),
    "eps-nan": ({"mean": [float("nan"), 0, 0]}, "'mean' is [nan, 0, 0]"),
}


def _crafted_cases():
    for name, (changes, words) in CRAFTED.items():
        yield pytest.param(changes, words, id=name)
    for key, table in (("arch", ARCH_CHANGES), ("method", METHOD_CHANGES), ("preprocess", PREPROCESS_CHANGES)):
        for name, (values, words) in table.items():
            yield pytest.param({key: values}, words, id=f"{key}-{name}")


@pytest.fixture(scope="module")
def valid_adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    model = trained("apt", num_prompts=2)
    model.class_names = [f"c{i}" for i in range(5)]
    weights = folder / "backbone.pth"
    torch.save(backbone_of(model), weights)
    path = aptune.save_adapter(
        model, folder / "adapter.safetensors", preprocess={"sampling_rate": 2, "short_side_size": 32}
    )
    return path, weights


@pytest.mark.parametrize("changes, words", list(_crafted_cases()))
def test_a_crafted_header_is_a_one_line_error(tmp_path, valid_adapter, changes, words):
    path, weights = valid_adapter
    header = {}
    for key, value in changes.items():
        if isinstance(value, dict):  # merge into the JSON entry
            header[key] = json.dumps({**header_json(path, key), **value})
        else:
            header[key] = value
    crafted = rewrite_header(path, tmp_path / "crafted.safetensors", **header)
    for load in (
        lambda: aptune.read_adapter(crafted),
        lambda: aptune.model_from_adapter(crafted, pretrained=weights),
        lambda: aptune.load_adapter(tiny_model("apt", num_prompts=2), crafted),
        lambda: aptune.MultiAdapterModel.from_files({"t": crafted}, pretrained=weights),
    ):
        with pytest.raises(CheckpointError) as caught:
            load()
        message = one_line(caught)
        assert message.startswith(str(crafted)) and words in message, message
        assert "\x1b" not in message


def test_tensors_that_contradict_the_header_are_refused_before_building(tmp_path, valid_adapter):
    path, weights = valid_adapter
    crafted = rewrite_header(
        path,
        tmp_path / "wide.safetensors",
        arch=json.dumps({**header_json(path, "arch"), "embed_dim": 4096, "num_heads": 4}),
    )
    with pytest.raises(CheckpointError, match=r"'fc_norm.weight' has shape \(32,\) but the header's arch"):
        aptune.model_from_adapter(crafted, pretrained=weights)


def test_a_tensor_the_model_does_not_have_is_named(tmp_path, valid_adapter):
    path, weights = valid_adapter
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    tensors["\x1b[31mextra"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError) as caught:
        aptune.model_from_adapter(tmp_path / "extra.safetensors", pretrained=weights)
    assert "'\\x1b[31mextra' has no place" in one_line(caught) and "\x1b" not in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 7, b"{}", b"junk" * 100, b"\x10\x00\x00\x00\x00\x00\x00\x00{"],
    ids=["empty", "short", "no-length", "junk", "cut-header"],
)
def test_a_file_that_is_not_an_adapter_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        aptune.read_adapter(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match="no such adapter file"):
        aptune.read_adapter(tmp_path)  # a folder


def test_integer_tensors_are_refused(tmp_path, valid_adapter):
    path, weights = valid_adapter
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    tensors["head.weight"] = tensors["head.weight"].to(torch.int64)
    save_file(tensors, str(tmp_path / "ints.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="'head.weight' holds torch.int64 values"):
        aptune.model_from_adapter(tmp_path / "ints.safetensors", pretrained=weights)
    with pytest.raises(CheckpointError, match="'head.weight' holds torch.int64 values"):
        aptune.MultiAdapterModel.from_files({"t": tmp_path / "ints.safetensors"}, pretrained=weights)


# -------------------------------------------------------------------- display
def test_printable_escapes_what_a_terminal_would_act_on():
    assert printable("Apply Eye Makeup") == "Apply Eye Makeup"
    assert printable("Café — 日本") == "Café — 日本"
    assert printable("\x1b[2Jfake\nline\tx\r") == "\\x1b[2Jfake\\nline\\tx\\r"
    assert printable("left\u202eright") == "left\\u202eright"  # a bidirectional override
    assert printable("bell\x07 del\x7f") == "bell\\x07 del\\x7f"
    for text in ("\x1b]0;title\x07", "a\u2028b", "\x9b31m"):
        assert printable(text).isprintable()


def test_tiny_shapes_are_what_the_tests_assume():
    assert TINY["depth"] == 3 and TINY["embed_dim"] == 32  # the messages above name these numbers
