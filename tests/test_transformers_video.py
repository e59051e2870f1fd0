"""APT inside transformers video models through the attention interface (VideoMAE, V-JEPA 2, ViViT, VideoPrism).

Every model is a tiny random-config instance built here: nothing is downloaded.  Each
prompted layer's output is checked against attention written out in the test (explicit
softmax over the tokens' keys followed by the prompts), from the module's own
projections (and, for V-JEPA 2, its own rotary embedding of queries and keys).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass

import pytest
import torch
from helpers import randomize_trainables_

import aptune
from aptune.errors import CheckpointError, ConfigError
from aptune.models.vit import IMAGENET_MEAN, IMAGENET_STD

transformers = pytest.importorskip("transformers")

FRAMES, SIZE, WIDTH, HEADS = 4, 32, 48, 2


@dataclass(frozen=True)
class Spec:
    """How the test reads one family's attention module: its projections and extras."""

    build: object  # () -> model
    pixels: str  # keyword of (B, T, C, H, W) clips
    q: str
    k: str
    v: str
    out: str | None  # output projection inside the module (VideoMAE's is outside)
    rope: bool = False
    softcap: float | None = None


def _vjepa2(classifier: bool):
    config = transformers.VJEPA2Config(
        crop_size=SIZE,
        frames_per_clip=FRAMES,
        patch_size=16,
        tubelet_size=2,
        hidden_size=WIDTH,
        num_attention_heads=HEADS,
        num_hidden_layers=3,
        mlp_ratio=2.0,
        pred_hidden_size=24,
        pred_num_attention_heads=2,
        pred_num_hidden_layers=1,
        pred_num_mask_tokens=2,
        num_pooler_layers=1,
        num_labels=5,
    )
    return (transformers.VJEPA2ForVideoClassification if classifier else transformers.VJEPA2Model)(config)


def _vivit(classifier: bool):
    config = transformers.VivitConfig(
        image_size=SIZE,
        num_frames=FRAMES,
        tubelet_size=[2, 16, 16],
        hidden_size=WIDTH,
        num_hidden_layers=3,
        num_attention_heads=HEADS,
        intermediate_size=96,
        num_labels=5,
    )
    return (transformers.VivitForVideoClassification if classifier else transformers.VivitModel)(config)


def _videoprism(classifier: bool):
    from transformers.models.videoprism import (
        VideoPrismForVideoClassification,
        VideoPrismVisionConfig,
        VideoPrismVisionModel,
    )

    config = VideoPrismVisionConfig(
        image_size=SIZE,
        num_frames=FRAMES,
        tubelet_size=[1, 16, 16],
        hidden_size=WIDTH,
        num_spatial_layers=2,
        num_temporal_layers=1,
        num_attention_heads=HEADS,
        intermediate_size=96,
        num_labels=5,
    )
    return (VideoPrismForVideoClassification if classifier else VideoPrismVisionModel)(config)


def _videomae(classifier: bool):
    config = transformers.VideoMAEConfig(
        image_size=SIZE,
        num_frames=FRAMES,
        patch_size=16,
        tubelet_size=2,
        hidden_size=WIDTH,
        num_hidden_layers=3,
        num_attention_heads=HEADS,
        intermediate_size=96,
        num_labels=5,
    )
    return (transformers.VideoMAEForVideoClassification if classifier else transformers.VideoMAEModel)(config)


SPECS = {
    "vjepa2": Spec(_vjepa2, "pixel_values_videos", "query", "key", "value", "proj", rope=True),
    "vivit": Spec(_vivit, "pixel_values", "q_proj", "k_proj", "v_proj", "o_proj"),
    "videoprism": Spec(_videoprism, "pixel_values_videos", "q_proj", "k_proj", "v_proj", "o_proj", softcap=50.0),
    "videomae": Spec(_videomae, "pixel_values", "query", "key", "value", None),
}


def _model(name: str, classifier: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    model = SPECS[name].build(classifier).eval()
    with torch.no_grad():  # non-trivial biases and norms everywhere
        generator = torch.Generator().manual_seed(seed)
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _clips(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _outputs(name: str, model, clips) -> torch.Tensor:
    out = model(**{SPECS[name].pixels: clips})
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _attentions(model):
    from aptune.interop.transformers_video import encoder_of, family_of

    return [m for m in encoder_of(model, family_of(model)).modules() if hasattr(m, "aptune_prompt_site")]


def _effective(prompts, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    keys, values = prompts.keys[index], prompts.values[index]
    if prompts.scales is not None:
        keys = keys * torch.clamp(prompts.scales[index, 0], min=1.0)[:, None]
        values = values * torch.clamp(prompts.scales[index, 1], min=1.0)[:, None]
    return keys, values


def _reference(spec: Spec, module, hidden: torch.Tensor, keys, values, rotate_prompts: bool = False) -> torch.Tensor:
    """The module's attention output, written out: softmax(q [k; Pk]^T / sqrt(d)) [v; Pv]."""
    batch, tokens, _ = hidden.shape
    head_dim = WIDTH // HEADS

    def heads(name):
        return getattr(module, name)(hidden).view(batch, tokens, HEADS, head_dim).transpose(1, 2)

    q, k, v = heads(spec.q), heads(spec.k), heads(spec.v)
    prompt_keys = keys.expand(batch, HEADS, -1, -1)
    if spec.rope:
        positions = module.get_position_ids(hidden)
        q, k = module.apply_rotary_embeddings(q, positions), module.apply_rotary_embeddings(k, positions)
        if rotate_prompts:  # what a prompt treated as tokens N..N+P-1 would get
            fake = hidden.new_zeros(batch, tokens + keys.shape[0], hidden.shape[-1])
            rotated = module.apply_rotary_embeddings(torch.cat([k, prompt_keys], dim=2), module.get_position_ids(fake))
            prompt_keys = rotated[:, :, tokens:]
    k = torch.cat([k, prompt_keys], dim=2)
    v = torch.cat([v, values.expand(batch, HEADS, -1, -1)], dim=2)
    logits = q @ k.transpose(-1, -2) / head_dim**0.5
    if spec.softcap is not None:
        logits = torch.tanh(logits / spec.softcap) * spec.softcap
    out = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, WIDTH)
    return getattr(module, spec.out)(out) if spec.out else out


def _record_layers(attentions) -> tuple[dict, list]:
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def pre(index):
        def hook(module, args, kwargs):
            seen[index] = (args[0] if args else kwargs["hidden_states"],)

        return hook

    def post(index):
        def hook(module, args, kwargs, output):
            seen[index] = (*seen[index], output[0])

        return hook

    handles = []
    for index, module in enumerate(attentions):
        handles.append(module.register_forward_pre_hook(pre(index), with_kwargs=True))
        handles.append(module.register_forward_hook(post(index), with_kwargs=True))
    return seen, handles


@pytest.mark.parametrize("name", sorted(SPECS))
def test_zero_prompts_leave_the_model_exactly_itself(name):
    model = _model(name)
    injected = aptune.inject(copy.deepcopy(model), "apt", num_prompts=0)
    assert _attentions(injected), "every attention layer goes through aptune's interface function"
    clips = _clips()
    with torch.no_grad():
        assert torch.equal(_outputs(name, injected, clips), _outputs(name, model, clips))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_prompted_layers_compute_attention_over_the_appended_prompts(name):
    spec = SPECS[name]
    model = aptune.inject(_model(name), "apt", num_prompts=3, layers=range(1, 3))
    prompts = model.kv_prompts
    with torch.no_grad():  # scales on both sides of one: max(s, 1) must clip the ones below
        prompts.scales.copy_(torch.linspace(0.5, 2.0, prompts.scales.numel()).view_as(prompts.scales))
        prompts.keys.normal_(0, 1.0)
        prompts.values.normal_(0, 1.0)
    attentions = _attentions(model)
    seen, handles = _record_layers(attentions)
    with torch.no_grad():
        prompted = _outputs(name, model, _clips())
        for layer, module in enumerate(attentions):
            hidden, output = seen[layer]
            if prompts.first_layer <= layer <= prompts.last_layer:
                keys, values = _effective(prompts, layer - prompts.first_layer)
            else:  # outside the range: the layer's plain attention
                keys = values = hidden.new_zeros(0, WIDTH // HEADS)
            torch.testing.assert_close(output, _reference(spec, module, hidden, keys, values), rtol=1e-4, atol=1e-5)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        plain = _outputs(name, _model(name), _clips())
    assert not torch.allclose(prompted, plain, atol=1e-4)


def test_vjepa2_prompts_are_not_rotated():
    """V-JEPA 2 rotates queries and keys by their 3-D position; prompts have none."""
    spec = SPECS["vjepa2"]
    model = aptune.inject(_model("vjepa2"), "apt", num_prompts=4, layers=[0])
    with torch.no_grad():
        model.kv_prompts.keys.normal_(0, 2.0)
    module = _attentions(model)[0]
    seen, handles = _record_layers([module])
    with torch.no_grad():
        _outputs("vjepa2", model, _clips())
        hidden, output = seen[0]
        keys, values = _effective(model.kv_prompts, 0)
        unrotated = _reference(spec, module, hidden, keys, values)
        rotated = _reference(spec, module, hidden, keys, values, rotate_prompts=True)
    torch.testing.assert_close(output, unrotated, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(output, rotated, atol=1e-3)  # the test can tell the two apart
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_only_prompts_and_the_classifier_train_and_an_adapter_round_trips(name, tmp_path):
    model = aptune.inject(_model(name), "apt", num_prompts=2).train()
    base_prefix = model.base_model_prefix + "."
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"kv_prompts.keys", "kv_prompts.values", "kv_prompts.scales"} <= trainable
    assert not any(n.startswith(base_prefix) for n in trainable), "the backbone stays frozen"
    assert any(n.startswith("classifier.") for n in trainable)
    _outputs(name, model, _clips()).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(base_prefix))
    assert model.kv_prompts.keys.grad.abs().sum() > 0

    path = aptune.save_adapter(model, tmp_path / f"{name}.safetensors")
    again = aptune.inject(_model(name), "apt", num_prompts=2)
    with torch.no_grad():  # every trained tensor different before loading
        for param in again.parameters():
            if param.requires_grad:
                param.normal_()
    aptune.load_adapter(again, path)
    model.eval()
    with torch.no_grad():
        assert torch.equal(_outputs(name, again.eval(), _clips()), _outputs(name, model, _clips()))

    other = aptune.inject(_model(name, seed=1), "apt", num_prompts=2)
    with pytest.raises(CheckpointError, match="fingerprint"):
        aptune.load_adapter(other, path)  # other frozen weights: refused unless allowed


def test_adapters_load_only_onto_their_own_architecture(tmp_path):
    path = aptune.save_adapter(aptune.inject(_model("vivit"), "apt", num_prompts=2), tmp_path / "vivit.safetensors")
    with pytest.raises(CheckpointError, match="'vivit' backbone, this model is 'vjepa2'"):
        aptune.load_adapter(aptune.inject(_model("vjepa2"), "apt", num_prompts=2), path)
    with pytest.raises(CheckpointError, match="num_prompts"):
        aptune.load_adapter(aptune.inject(_model("vivit"), "apt", num_prompts=3), path)


def test_models_that_bypass_the_interface_get_one_line():
    config = transformers.TimesformerConfig(
        image_size=SIZE, patch_size=16, num_frames=2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    with pytest.raises(ConfigError, match=r"TimesformerModel: its TimesformerSelfAttention computes attention itself"):
        aptune.inject(transformers.TimesformerModel(config), "apt", num_prompts=2)


def test_vpt_and_bad_layer_blocks_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="vpt-deep on VJEPA2Model is not supported"):
        aptune.inject(_model("vjepa2", classifier=False), "vpt-deep", num_prompts=2)
    with pytest.raises(ConfigError, match=r"not consecutive.*layers=range\(0, 3\)"):
        aptune.inject(_model("vivit"), "apt", num_prompts=2, layers=[0, 2])
    with pytest.raises(ConfigError, match="prompt_end < depth=3"):
        aptune.inject(_model("vivit"), "apt", num_prompts=2, layers=range(1, 5))


def test_videoprism_prompts_its_spatial_then_temporal_layers():
    model = aptune.inject(_model("videoprism", classifier=False), "apt", num_prompts=2)
    attentions = _attentions(model)
    base = model.base_model
    assert attentions == [layer.attention for layer in (*base.spatial_layers, *base.temporal_layers)]
    assert model.kv_prompts.keys.shape[0] == 3


def test_prompts_start_from_the_keys_the_interface_sees():
    """``prompt_init: tokens`` copies keys as attention receives them: for V-JEPA 2, rotated."""
    model = aptune.inject(_model("vjepa2"), "apt", num_prompts=3)
    aptune.init_prompts_from_clips(model, _clips())
    plain = _model("vjepa2")
    module = plain.base_model.encoder.layer[0].attention
    seen, handles = _record_layers([module])
    with torch.no_grad():
        _outputs("vjepa2", plain, _clips())
        hidden = seen[0][0]
        keys = module.key(hidden).view(2, -1, HEADS, WIDTH // HEADS).transpose(1, 2)
        keys = module.apply_rotary_embeddings(keys, module.get_position_ids(hidden))
    for handle in handles:
        handle.remove()
    candidates = keys.reshape(-1, WIDTH // HEADS)
    for prompt in model.kv_prompts.keys[0]:
        assert torch.isclose(candidates, prompt, atol=1e-5).all(dim=1).any()


# ----------------------------------------------------------- aptune's engine on a transformers folder
@pytest.fixture(scope="module")
def vjepa2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vjepa2")
    _model("vjepa2", classifier=False).save_pretrained(folder)
    return folder


def _aptune_clips(batch: int = 2) -> torch.Tensor:
    return _clips(batch).transpose(1, 2)  # aptune's (B, C, T, H, W)


def test_create_model_builds_a_classifier_on_the_folder_and_reads_its_processor(vjepa2_folder, tmp_path):
    model = aptune.create_model(None, pretrained=vjepa2_folder, method="apt", num_prompts=2, num_classes=3).eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"kv_prompts.keys", "kv_prompts.values", "kv_prompts.scales", *_head_names()}
    clips = _aptune_clips()
    with torch.no_grad():
        # the classifier feeds the encoder frames first, in the processor's normalisation (ImageNet here)
        tokens = model.backbone.encoder(pixel_values_videos=clips.transpose(1, 2)).last_hidden_state
        features = model.fc_norm(tokens.mean(dim=1))
        torch.testing.assert_close(model(clips), model.head(features))

    vivit = tmp_path / "vivit"
    _model("vivit", classifier=False).save_pretrained(vivit)
    # ViViT's processor: x / 127.5 - 1, then (. - 0.5) / 0.5, i.e. (p - 0.75) / 0.25 on p = x / 255
    model = aptune.create_model(None, pretrained=vivit, method="linear", num_classes=3).eval()
    pixels = torch.rand(2, 3, FRAMES, SIZE, SIZE)
    imagenet = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1, 1
    )
    with torch.no_grad():
        expected = model.backbone(pixel_values=((pixels - 0.75) / 0.25).transpose(1, 2)).last_hidden_state
        torch.testing.assert_close(model.forward_tokens(imagenet), expected, rtol=1e-4, atol=1e-4)


def _head_names() -> set[str]:
    return {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}


def test_a_classifier_adapter_rebuilds_from_the_folder_and_only_from_it(vjepa2_folder, tmp_path):
    model = aptune.create_model(None, pretrained=vjepa2_folder, method="apt", num_prompts=2, num_classes=3).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_()
    path = aptune.save_adapter(model, tmp_path / "a.safetensors")
    again = aptune.model_from_adapter(path, pretrained=vjepa2_folder).eval()
    with torch.no_grad():
        assert torch.equal(again(_aptune_clips()), model(_aptune_clips()))
    with pytest.raises(CheckpointError, match="pass pretrained=<its folder>"):
        aptune.model_from_adapter(path)
    with pytest.raises(ConfigError, match="not available on a transformers VJEPA2Model backbone"):
        aptune.create_model(None, pretrained=vjepa2_folder, method="lora", num_classes=3)


def test_aptune_train_end_to_end_on_a_vjepa2_folder(vjepa2_folder, synthetic, tmp_path, capsys, caplog):
    import yaml
    from helpers import tiny_run_config

    from aptune.cli import main

    dataset = synthetic("list")
    config = tiny_run_config(data={"root": str(dataset.root)}, train={"epochs": 2, "batch_size": 3})
    config["model"] = {"arch": None, "pretrained": str(vjepa2_folder)}
    config["method"]["prompt_init"] = "tokens"  # started through the attention interface
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    with caplog.at_level("INFO"):
        assert main(["train", "--config", str(path), "--output-dir", str(run)]) == 0
    assert "apt prompts started from 3 training clips' tokens" in caplog.text
    metrics = json.loads((run / "metrics.json").read_text())
    test_videos = len((dataset.root / "test.csv").read_text().splitlines())
    assert metrics["num_videos"] == test_videos and metrics["gflops_per_view"] > 0
    adapter, meta = aptune.read_adapter(run / "adapter.safetensors")
    assert set(adapter) == {"kv_prompts.keys", "kv_prompts.values", "kv_prompts.scales", *_head_names()}
    assert meta["backbone_family"] == "vjepa2" and meta["arch"]["depth"] == 3
    assert main(["eval", "--run", str(run), "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["top1"] == pytest.approx(metrics["top1"])

    config["data"]["input_size"] = config["data"]["short_side_size"] = 48
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--output-dir", str(tmp_path / "other")]) == 2
    assert "takes clips of 4 frames at 32x32 (its config.json)" in capsys.readouterr().err

    video = next((dataset.root / "videos").rglob("*.*"))
    assert (
        main(
            [
                "predict",
                str(video),
                "--adapter",
                str(run / "adapter.safetensors"),
                "--pretrained",
                str(vjepa2_folder),
                "--json",
            ]
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert len(answer[0]["top"]) == 3


def _classifier_with_random_trainables(folder, seed: int = 0):
    torch.manual_seed(seed)
    model = aptune.create_model(None, pretrained=folder, method="apt", num_prompts=2, num_classes=3)
    randomize_trainables_(model, seed)
    return model.train()


@pytest.fixture
def counted_graphs(monkeypatch):
    """``torch.compile`` with aot_eager, recording every graph Dynamo hands it.

    aot_eager keeps what can go wrong on the way to a compiled training step (Dynamo's trace
    of the encoder through the attention interface, AOT autograd's backward graph) and skips
    inductor's code generation, which takes ~30 s for this model on two CPU cores
    (tests/test_cuda.py compiles with inductor on a GPU)."""
    graphs = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(graph, example_inputs):
        graphs.append(graph)
        return aot_eager(graph, example_inputs)

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    yield graphs
    torch._dynamo.reset()


def test_train_compile_gives_a_compiled_classifier_with_eager_loss_and_gradients(vjepa2_folder, counted_graphs):
    """``train.compile: true`` on a transformers classifier: the runner the engine trains is compiled
    in one graph (no graph break, prompts included), and one step's loss and gradients are eager's."""
    from aptune.config import load_config
    from aptune.engine.distributed import DistInfo
    from aptune.engine.trainer import ClassificationLoss, training_runner

    config = load_config(None, ["train.compile=true"])
    eager = _classifier_with_random_trainables(vjepa2_folder)
    compiled = _classifier_with_random_trainables(vjepa2_folder)
    runner, _ = training_runner(compiled, None, config, DistInfo(), torch.device("cpu"))  # data: read only to cache
    loss_fn = ClassificationLoss(config, num_classes=3)
    clips, labels = _aptune_clips(), torch.tensor([2, 0])
    losses = [loss_fn(model, clips, labels, "fp32", torch.device("cpu")) for model in (eager, runner)]
    for loss in losses:
        loss.backward()
    assert counted_graphs, "train.compile=true, but nothing was compiled"
    assert len(counted_graphs) == 1, f"the forward breaks into {len(counted_graphs)} graphs"
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    trained = [(name, param) for name, param in eager.named_parameters() if param.requires_grad]
    assert {name for name, _ in trained} == {
        "kv_prompts.keys",
        "kv_prompts.values",
        "kv_prompts.scales",
        *_head_names(),
    }
    for name, param in trained:
        other = compiled.get_parameter(name).grad
        assert other is not None and param.grad.abs().max() > 0, name
        torch.testing.assert_close(
            other, param.grad, rtol=1e-4, atol=1e-7, msg=lambda text, name=name: f"{name}: {text}"
        )


# ----------------------------------------------------------- aptune bench on transformers shapes
def test_vjepa2_vitl_multiply_adds_are_the_closed_forms():
    """V-JEPA 2 ViT-L/16, 64 frames at 256: counted on the meta device (nothing allocated)."""
    from aptune.flops import closed_form_macs, count_macs
    from aptune.interop.classifier import random_transformers_classifier

    with torch.device("meta"):
        model = random_transformers_classifier("vjepa2_vitl_fpc64_256", 400)
    config = model.config
    assert (config.depth, config.embed_dim, config.num_patches, config.mlp_width) == (24, 1024, 8192, 4096)
    view = (1, 3, 64, 256, 256)
    assert count_macs(model, view) == closed_form_macs(config, "linear")
    for prompts in (2, 400):
        with torch.device("meta"):
            model.set_extensions({})
            aptune.methods.apply_method(model, aptune.methods.build_method("apt", num_prompts=prompts))
        counted = count_macs(model, view)
        assert counted == closed_form_macs(config, "apt", prompts)
        # APT's extra cost is 2 N P D per layer; VPT-deep's (closed form only: prompt tokens
        # would be rotated as positions of V-JEPA 2's grid) is far larger
        assert counted - closed_form_macs(config, "linear") == 24 * 2 * 8192 * prompts * 1024
        assert closed_form_macs(config, "vpt-deep", prompts) > counted


def test_aptune_bench_measures_a_transformers_shape(monkeypatch):
    from aptune.bench import BenchSettings, run_bench
    from aptune.flops import closed_form_macs
    from aptune.interop import classifier

    shape = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2.0, patch_size=16)
    shape.update(tubelet_size=2, crop_size=64, frames_per_clip=4, pred_num_hidden_layers=1, pred_hidden_size=24)
    monkeypatch.setitem(classifier.BENCH_PRESETS, "tiny_vjepa2", ("vjepa2", {**shape, "pred_num_attention_heads": 2}))
    result = run_bench(
        BenchSettings(arch="tiny_vjepa2", prompts=(2, 8), repeats=2, warmup=0, num_classes=5), progress=False
    )
    assert (result["meta"]["frames"], result["meta"]["img_size"]) == (4, 64)  # the preset's clip
    rows = {(row["method"], row["prompts"] or 0): row for row in result["rows"]}
    assert set(rows) == {("apt", 2), ("apt", 8), ("linear", 0), ("full", 0)}
    summary = classifier.random_transformers_classifier("tiny_vjepa2", 5).config
    for (method, prompts), row in rows.items():
        assert row["gmacs"] == round(closed_form_macs(summary, method, prompts) / 1e9, 6)
        assert row["latency_ms_median"] > 0
    assert (
        rows[("apt", 8)]["trainable_params"]
        > rows[("apt", 2)]["trainable_params"]
        > rows[("linear", 0)]["trainable_params"]
    )


def test_the_attentive_head_reads_a_transformers_encoder_too(vjepa2_folder, tmp_path):
    model = aptune.create_model(
        None, pretrained=vjepa2_folder, method="apt", num_prompts=2, num_classes=3, head="attentive"
    ).eval()
    assert {n for n, p in model.named_parameters() if p.requires_grad} >= {"head.probe.queries", "head.weight"}
    with torch.no_grad():
        tokens = model.forward_tokens(_aptune_clips())
        torch.testing.assert_close(model(_aptune_clips()), model.head(model.fc_norm(model.head.probe(tokens))))
    path = aptune.save_adapter(model, tmp_path / "attentive.safetensors")
    again = aptune.model_from_adapter(path, pretrained=vjepa2_folder).eval()
    with torch.no_grad():
        assert torch.equal(again(_aptune_clips()), model(_aptune_clips()))
    linear = aptune.create_model(None, pretrained=vjepa2_folder, method="apt", num_prompts=2, num_classes=3)
    with pytest.raises(CheckpointError, match="head='attentive', the model has head='linear'"):
        aptune.load_adapter(linear, path)
    with pytest.raises(ConfigError, match="attentive_heads=5 must be a positive integer dividing embed_dim=48"):
        aptune.create_model(None, pretrained=vjepa2_folder, num_classes=3, head="attentive", attentive_heads=5)


def test_the_fingerprint_covers_the_video_encoder_only(vjepa2_folder, tmp_path):
    """A V-JEPA 2 classification checkpoint has no predictor weights: transformers initialises them at
    random on every load, so the adapter's fingerprint must not cover them (it covers the encoder)."""
    model = aptune.create_model(None, pretrained=vjepa2_folder, method="apt", num_prompts=2, num_classes=3)
    path = aptune.save_adapter(model, tmp_path / "a.safetensors")
    again = aptune.create_model(None, pretrained=vjepa2_folder, method="apt", num_prompts=2, num_classes=3)
    with torch.no_grad():
        for param in again.backbone.predictor.parameters():
            param.add_(1.0)
    aptune.load_adapter(again, path)
    with torch.no_grad():
        next(again.backbone.encoder.parameters()).add_(1.0)
    with pytest.raises(CheckpointError, match="fingerprint"):
        aptune.load_adapter(again, path)

    injected = aptune.inject(_model("vjepa2"), "apt", num_prompts=2)
    path = aptune.save_adapter(injected, tmp_path / "b.safetensors")
    other = aptune.inject(_model("vjepa2"), "apt", num_prompts=2)
    with torch.no_grad():
        for param in other.vjepa2.predictor.parameters():
            param.add_(1.0)
    aptune.load_adapter(other, path)


def test_prompts_of_the_classifier_start_from_real_keys(vjepa2_folder):
    """``prompt_init: tokens`` on aptune's classifier: the same sampler, fed through the interface."""
    model = aptune.create_model(None, pretrained=vjepa2_folder, method="apt", num_prompts=3, num_classes=3)
    clips = _aptune_clips()
    aptune.init_prompts_from_clips(model, clips, seed=0)
    assert model.tuning_method.prompt_init == "tokens"
    prompts = model.kv_prompts
    module = model.backbone.encoder.layer[1].attention
    seen, handles = _record_layers([module])
    model.set_extensions({})  # the plain encoder, to read layer 1's own (rotated) keys
    with torch.no_grad():
        model.eval()(clips)
        hidden = seen[0][0]
        keys = module.key(hidden).view(2, -1, HEADS, WIDTH // HEADS).transpose(1, 2)
        keys = module.apply_rotary_embeddings(keys, module.get_position_ids(hidden))
    for handle in handles:
        handle.remove()
    candidates = keys.reshape(-1, WIDTH // HEADS)
    for prompt in prompts.keys[1]:
        assert torch.isclose(candidates, prompt, atol=1e-5).all(dim=1).any()


@pytest.mark.parametrize("key", ["recompute_mlp", "recompute_qkv"])
def test_native_recomputation_keys_are_refused_on_a_transformers_folder(vjepa2_folder, key):
    from aptune.config import load_config
    from aptune.engine.trainer import build_model

    config = load_config(None, [f"model.pretrained={vjepa2_folder}", f"model.{key}=true", "model.num_classes=3"])
    with pytest.raises(ConfigError, match=rf"model.{key} is for aptune's own backbone; use model.grad_checkpointing"):
        build_model(config, ["a", "b", "c"])
