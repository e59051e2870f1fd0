"""End to end on a tiny model and a synthetic dataset: train -> eval -> predict, resume, DDP, bad configs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_run_config
from safetensors.torch import load_file

from aptune.cli import main as cli_main
from aptune.config import switch_method
from aptune.data import datasets as datasets_module

# augmentation and 2 x 3 test views on, validation every epoch
TINY_CONFIG = tiny_run_config(
    data={"num_sample": 2, "test_num_segment": 2, "test_num_crop": 3, "rand_augment": "rand-m4-n2-mstd0.2-inc1"},
    optim={"warmup_epochs": 1},
    train={"eval_every": 1},
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from aptune.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("engine") / "ds"
    make_synthetic_dataset(root, format="list", num_classes=4, per_class=6, frames=16, size=(32, 32), seed=0)
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """A small random backbone in the original VideoMAE pre-training layout."""
    import aptune

    model = aptune.create_model(
        None, method="full", num_classes=4, **{k: v for k, v in TINY_CONFIG["model"].items() if k != "arch"}
    )
    path = tmp_path_factory.mktemp("backbone") / "pretrain.pth"
    torch.save(
        {
            "model": {
                f"encoder.{k}": v for k, v in model.state_dict().items() if k.startswith(("patch_embed.", "blocks."))
            }
        },
        path,
    )
    return path


def write_config(tmp_path: Path, dataset: Path, backbone: Path | None = None, **sections) -> Path:
    config = json.loads(json.dumps(TINY_CONFIG))
    config["data"]["root"] = str(dataset)
    if backbone is not None:
        config["model"]["pretrained"] = str(backbone)
    for section, values in sections.items():
        if section == "method" and "name" in values:  # as --set method.name= does
            config["method"] = switch_method(config["method"], values["name"])
        config[section].update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str) -> int:
    return cli_main([str(a) for a in args])


def test_train_eval_predict(tmp_path, dataset, backbone, capsys, monkeypatch):
    config = write_config(tmp_path, dataset, backbone)
    run = tmp_path / "run"
    assert run_cli("train", "--config", config, "--output-dir", run) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in (
        "top1",
        "top5",
        "num_videos",
        "skipped_videos",
        "trainable_params",
        "total_params",
        "gflops_per_view",
        "epochs",
        "train_seconds",
    ):
        assert key in metrics, key
    assert metrics["epochs"] == 2 and metrics["num_videos"] == 4 and metrics["skipped_videos"] == 0
    assert metrics["trainable_params"] < metrics["total_params"]
    for name in (
        "adapter.safetensors",
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
        "report.md",
        "plots/curves.png",
        "plots/confusion.png",
        "plots/per_class.png",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} >= {"train", "eval"}
    waits = [r.get("input_wait_fraction") for r in records if r["kind"] == "train"]
    assert waits[0] is None and all(0.0 <= w <= 1.0 for w in waits[1:] if w is not None)
    assert sum(w is not None for w in waits) >= len(waits) // 2  # every epoch's steps after its first
    adapter = load_file(run / "adapter.safetensors")
    assert all(k.startswith(("kv_prompts.", "fc_norm.", "head.")) for k in adapter)

    capsys.readouterr()
    assert run_cli("eval", "--run", run, "--json", tmp_path / "eval.json") == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["top1"] == pytest.approx(metrics["top1"])
    assert evaluated["top5"] == pytest.approx(metrics["top5"])

    video = next((dataset / "videos").rglob("*.avi"))
    capsys.readouterr()
    assert run_cli("predict", video, "--run", run, "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer[0]["video"] == str(video)
    top = answer[0]["top"]
    assert len(top) == 4 and {t["class"] for t in top} == set(metrics["class_names"])
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-4)

    # several adapters with the same preprocessing: one decode per video, the same answers
    second = tmp_path / "second.safetensors"
    shutil.copy(run / "adapter.safetensors", second)
    decodes = []
    original = datasets_module._load_clip
    monkeypatch.setattr(
        datasets_module, "_load_clip", lambda path, *a, **k: decodes.append(path) or original(path, *a, **k)
    )
    capsys.readouterr()
    assert (
        run_cli(
            "predict",
            video,
            "--adapter",
            run / "adapter.safetensors",
            "--adapter",
            second,
            "--pretrained",
            backbone,
            "--json",
        )
        == 0
    )
    answers = json.loads(capsys.readouterr().out)
    assert list(answers) == [str(run / "adapter.safetensors"), str(second)]
    assert answers[str(second)] == answers[str(run / "adapter.safetensors")] == answer
    assert decodes == [str(video)]


def test_clip_reading_keeps_only_what_decides_the_clips():
    from aptune.engine.inference import clip_reading
    from aptune.errors import CheckpointError

    base = {"num_frames": 16, "sampling_rate": 2, "input_size": 64, "short_side_size": 64}
    ucf = clip_reading({**base, "format": "ucf101"}, "a.safetensors")
    hmdb = clip_reading({**base, "format": "hmdb51", "test_num_crop": 1, "sampling": "dense"}, "b.safetensors")
    assert ucf == hmdb  # the dataset format and explicit defaults do not split the decode
    assert clip_reading({**base, "test_num_segment": 5}, "c") != ucf
    with pytest.raises(CheckpointError, match="old.safetensors: adapter header 'preprocess' lacks"):
        clip_reading({"num_frames": 16}, "old.safetensors")


def test_same_seed_same_metrics(tmp_path, dataset, backbone):
    results = []
    for name in ("a", "b"):
        config = write_config(tmp_path, dataset, backbone, train={"epochs": 1})
        assert run_cli("train", "--config", config, "--output-dir", tmp_path / name) == 0
        results.append(load_file(tmp_path / name / "adapter.safetensors"))
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def _train_command(config: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "aptune", "train", "--config", str(config), "--output-dir", str(run)]


def test_a_crash_while_saving_the_last_epoch_never_leaves_a_stale_adapter(tmp_path, dataset, backbone, monkeypatch):
    from aptune.engine import trainer

    config = write_config(tmp_path, dataset, backbone)
    reference = tmp_path / "reference"
    assert run_cli("train", "--config", config, "--output-dir", reference) == 0

    run = tmp_path / "crashed"
    original, saves = trainer.save_adapter, []

    def crash_on_the_last_save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # epochs=2: the second save is the final one
            raise RuntimeError("killed while saving")
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "save_adapter", crash_on_the_last_save)
    with pytest.raises(RuntimeError, match="killed while saving"):
        run_cli("train", "--config", config, "--output-dir", run)
    monkeypatch.setattr(trainer, "save_adapter", original)
    assert run_cli("train", "--config", config, "--output-dir", run) == 0
    expected = load_file(reference / "adapter.safetensors")
    for key, value in load_file(run / "adapter.safetensors").items():
        assert torch.equal(value, expected[key]), key


def test_resuming_a_finished_run_rewrites_its_adapter_from_the_checkpoint(tmp_path, dataset, backbone):
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = write_config(tmp_path, dataset, backbone)
    run = tmp_path / "run"
    assert run_cli("train", "--config", config, "--output-dir", run) == 0
    adapter = run / "adapter.safetensors"
    good = load_file(adapter)
    with safe_open(str(adapter), framework="pt") as f:
        metadata = f.metadata()
    # what a kill between the two writes could leave under the old save order: a stale adapter
    save_file({k: torch.zeros_like(v) for k, v in good.items()}, adapter, metadata=metadata)
    assert run_cli("train", "--config", config, "--output-dir", run) == 0
    for key, value in load_file(adapter).items():
        assert torch.equal(value, good[key]), key


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown key 'train.epoch'"),
        ("method.name=lorax", "method.name='lorax' is not one of"),
        ("train.batch_size=many", "train.batch_size expects an integer"),
        ("optimizer.lr=1", "unknown section 'optimizer'"),
        ("data.test_num_crop=2", "data.test_num_crop must be 1 or 3"),
        ("method.prompt_init=data", "method.prompt_init='data' is not one of: uniform, tokens"),
        ("optim.head_lr=0", "optim.head_lr must be > 0"),
    ],
)
def test_bad_config_values_are_one_line_errors(tmp_path, dataset, capsys, override, message):
    config = write_config(tmp_path, dataset)
    assert run_cli("train", "--config", config, "--set", override, "--output-dir", tmp_path / "r") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "r").exists()  # nothing heavy started


def test_bad_annotation_fails_before_training(tmp_path, dataset, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    lines = (broken / "train.csv").read_text().splitlines()
    lines[2] = "videos/nowhere.avi not-a-label"
    (broken / "train.csv").write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path, broken)
    assert run_cli("train", "--config", config, "--output-dir", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "train.csv:3:" in err and "not-a-label" in err


def test_pretrain_writes_a_videomae_checkpoint_and_resumes(tmp_path, dataset, capsys):
    import aptune

    config = write_config(
        tmp_path, dataset, train={"epochs": 1, "batch_size": 4}, optim={"lr": 1e-3, "warmup_epochs": 0}
    )
    text = yaml.safe_load(config.read_text())
    text["pretrain"] = {"mask_ratio": 0.75, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}
    config.write_text(yaml.safe_dump(text))
    run = tmp_path / "pre"
    assert run_cli("pretrain", "--config", config, "--output-dir", run) == 0
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["epochs"] == 1 and summary["final_loss"] > 0
    arch = {k: v for k, v in TINY_CONFIG["model"].items() if k != "arch"}
    model = aptune.create_model(
        None, num_classes=4, method="apt", num_prompts=2, pretrained=run / "pretrained.safetensors", **arch
    )
    encoder = load_file(run / "pretrained.safetensors")
    assert torch.equal(model.blocks[1].attn.qkv.weight, encoder["encoder.blocks.1.attn.qkv.weight"])
    # one more epoch continues from the checkpoint instead of starting over
    assert run_cli("pretrain", "--config", config, "--set", "train.epochs=2", "--output-dir", run) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert (
        run_cli("pretrain", "--config", config, "--set", "optim.head_lr=0.01", "--output-dir", tmp_path / "refused")
        == 2
    )
    assert f"error: {config}: optim.head_lr is a classifier option" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    # a finished run resumed again writes its encoder from the checkpoint, here after it was lost
    final = load_file(run / "pretrained.safetensors")
    (run / "pretrained.safetensors").unlink()
    assert run_cli("pretrain", "--config", config, "--set", "train.epochs=2", "--output-dir", run) == 0
    again = load_file(run / "pretrained.safetensors")
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)


def test_mixup_cutmix_and_bf16_train(tmp_path, dataset, backbone, monkeypatch):
    from aptune.engine import trainer

    mixed_targets, original = [], trainer.mix_batch

    def recording(clips, labels, *args, **kwargs):
        out_clips, targets = original(clips, labels, *args, **kwargs)
        mixed_targets.append((torch.equal(out_clips, clips), targets))
        return out_clips, targets

    monkeypatch.setattr(trainer, "mix_batch", recording)
    config = write_config(
        tmp_path, dataset, backbone, train={"epochs": 1, "mixup": 0.8, "cutmix": 1.0, "precision": "bf16"}
    )
    assert run_cli("train", "--config", config, "--output-dir", tmp_path / "run") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["top1"] <= 100
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert losses and all(loss == loss and loss > 0 for loss in losses)
    # mixing ran: clips changed and targets hold two classes (a smoothed one-hot peaks at 0.9 + 0.1/4)
    assert len(mixed_targets) == 4
    assert not any(unchanged for unchanged, _ in mixed_targets)
    assert all(t.max(dim=1).values.lt(0.9 + 0.1 / 4 - 1e-6).any() for _, t in mixed_targets)


def test_mixing_draws_everything_from_its_generator_and_weights_targets_like_the_clips():
    from aptune.engine.mixup import mix_batch

    clips = torch.randn(6, 3, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(6)  # one class per clip: a target's weights name the two clips mixed

    def mixed(seed, **kwargs):
        torch.manual_seed(123)  # the global generator is the same each time: only `seed` may matter
        return mix_batch(clips, labels, 6, smoothing=0.0, generator=torch.Generator().manual_seed(seed), **kwargs)

    for kind in ({"mixup": 0.8, "cutmix": 0.0}, {"mixup": 0.0, "cutmix": 1.0}):
        first, again, other = mixed(0, **kind), mixed(0, **kind), mixed(1, **kind)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        assert not torch.equal(first[0], other[0])
    out, targets = mixed(0, mixup=0.8, cutmix=0.0)
    for i in range(6):
        weights = targets[i]
        expected = sum(weights[j] * clips[j] for j in range(6))  # lam * own + (1 - lam) * partner
        torch.testing.assert_close(out[i], expected, rtol=1e-5, atol=1e-5)
    assert (targets.max(dim=1).values < 1).any()  # some clips really were mixed


def test_mixed_targets_are_distributions_and_cutmix_pastes_the_weighted_area():
    from aptune.engine.mixup import mix_batch

    generator = torch.Generator().manual_seed(0)
    clips = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 3, 2, 8, 8).contiguous()
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = mix_batch(clips, labels, 4, mixup=0.0, cutmix=1.0, smoothing=0.1, generator=generator)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    assert not torch.equal(mixed, clips)  # a box was pasted
    for i in range(4):
        own = (mixed[i] == clips[i]).float().mean().item()  # share of the clip left untouched
        label_weight = (targets[i, labels[i]] - 0.1 / 4) / 0.9
        assert abs(own - label_weight) < 1e-5 or torch.equal(mixed[i], clips[i])
        # the same box on every frame
        assert torch.equal(mixed[i, :, 0], mixed[i, :, 1])
    mixed, targets = mix_batch(clips, labels, 4, mixup=0.4, cutmix=0.0, smoothing=0.0, generator=generator)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))


def test_linear_probe_with_cached_features(tmp_path, dataset, backbone, capsys):
    config = write_config(
        tmp_path, dataset, backbone, method={"name": "linear"}, train={"epochs": 2, "cache_features": True}
    )
    assert run_cli("train", "--config", config, "--output-dir", tmp_path / "cached") == 0
    metrics = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["num_videos"] == 4
    steps = [
        json.loads(line)
        for line in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert max(s["step"] for s in steps) == 8  # 16 videos / batch 4 per epoch, as without the cache
    assert set(load_file(tmp_path / "cached" / "adapter.safetensors")) == {
        "fc_norm.weight",
        "fc_norm.bias",
        "head.weight",
        "head.bias",
    }
    capsys.readouterr()
    bad = write_config(tmp_path, dataset, backbone, train={"cache_features": True})  # method apt
    assert run_cli("train", "--config", bad, "--output-dir", tmp_path / "bad") == 2
    assert "train.cache_features needs method.name=linear" in capsys.readouterr().err


def test_cached_features_are_the_frozen_backbone_of_the_epoch0_clips(tmp_path, dataset, backbone):
    from aptune.config import load_config
    from aptune.engine.distributed import DistInfo
    from aptune.engine.loaders import SeededItems, build_data, cache_train_features
    from aptune.engine.trainer import build_model

    config = load_config(write_config(tmp_path, dataset, backbone, method={"name": "linear"}))
    data = build_data(config, DistInfo())
    model = build_model(config, data.class_names).eval()
    cached = cache_train_features(model, data, config, DistInfo(), torch.device("cpu"))
    assert len(cached) == len(data.train) * config.data.num_sample
    item = SeededItems(data.train, config.train.seed, epoch=0)[3]
    with torch.no_grad():
        expected = model.forward_pooled(item.clips)
    torch.testing.assert_close(cached.features[6:8], expected, rtol=1e-5, atol=1e-5)
    assert cached.labels[6].item() == item.label


@pytest.mark.parametrize("method", ["apt", "vpt-deep"])
def test_token_prompt_init_starts_from_a_training_batch(tmp_path, dataset, backbone, method):
    from aptune.config import load_config
    from aptune.engine.distributed import DistInfo
    from aptune.engine.loaders import build_data
    from aptune.engine.trainer import build_model, start_from_data

    def prompts_after_start(init: str) -> torch.Tensor:
        config = load_config(write_config(tmp_path, dataset, backbone, method={"name": method, "prompt_init": init}))
        info = DistInfo()
        data = build_data(config, info, splits=("train",))
        torch.manual_seed(0)
        model = build_model(config, data.class_names)
        prompts = [p for name, p in model.named_parameters() if name.endswith(("keys", "values", "tokens"))]
        before = torch.cat([p.detach().flatten().clone() for p in prompts])
        start_from_data(model, data, config, info, torch.device("cpu"))
        return before, torch.cat([p.detach().flatten() for p in prompts])

    before, after = prompts_after_start("uniform")
    assert torch.equal(before, after)  # the papers' init: nothing to do
    before, after = prompts_after_start("tokens")
    assert not torch.equal(before, after) and torch.isfinite(after).all()
    assert torch.equal(prompts_after_start("tokens")[1], after)  # a seeded batch: same start every run
    config = write_config(
        tmp_path, dataset, backbone, method={"name": method, "prompt_init": "tokens"}, train={"epochs": 1}
    )
    assert run_cli("train", "--config", config, "--output-dir", tmp_path / "run") == 0


def test_data_dependent_starts_need_a_full_batch(tmp_path, dataset, backbone, capsys):
    config = write_config(
        tmp_path,
        dataset,
        backbone,
        method={"name": "apt", "prompt_init": "tokens"},
        train={"epochs": 1, "batch_size": 64},
    )
    assert run_cli("train", "--config", config, "--output-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "need one training batch" in err[-1] and "train.batch_size=64" in err[-1]


def test_a_resume_that_would_change_the_recipe_is_refused_and_writes_nothing(tmp_path, dataset, backbone, capsys):
    run = tmp_path / "run"
    first = write_config(tmp_path, dataset, backbone, train={"epochs": 1})
    assert run_cli("train", "--config", first, "--output-dir", run) == 0
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    capsys.readouterr()
    changed = write_config(
        tmp_path, dataset, backbone, train={"epochs": 2, "batch_size": 2}, optim={"lr": 0.02, "head_lr": 0.001}
    )
    assert run_cli("train", "--config", changed, "--output-dir", run) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "resuming would change how this run is made" in err
    for key in ("optim.head_lr None -> 0.001", "optim.lr 0.01 -> 0.02", "train.batch_size 4 -> 2"):
        assert key in err, key
    assert "train.epochs" not in err.split("(only")[0]  # extending a run is allowed
    after = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert after == before  # config.yaml still says how the checkpoint was made

    longer = write_config(tmp_path, dataset, backbone, train={"epochs": 2, "log_every": 3})
    assert run_cli("train", "--config", longer, "--output-dir", run) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2


def test_prompt_init_needs_a_prompt_method(tmp_path, dataset, capsys):
    config = write_config(tmp_path, dataset, method={"name": "linear", "prompt_init": "tokens"})
    assert run_cli("train", "--config", config, "--output-dir", tmp_path / "r") == 2
    assert "needs a prompt method" in capsys.readouterr().err


def test_bitfit_trains_and_evaluates_end_to_end(tmp_path, dataset, backbone, capsys):
    """A method added as one file is trained, saved and evaluated by the unchanged engine."""
    config = write_config(tmp_path, dataset, backbone, method={"name": "bitfit"}, train={"epochs": 1})
    assert run_cli("train", "--config", config, "--output-dir", tmp_path / "bitfit") == 0
    tensors = load_file(tmp_path / "bitfit" / "adapter.safetensors")
    assert "blocks.0.attn.q_bias" in tensors and "blocks.1.mlp.fc2.bias" in tensors
    assert not any(name.endswith("weight") and not name.startswith(("fc_norm.", "head.")) for name in tensors)
    capsys.readouterr()
    assert run_cli("eval", "--run", tmp_path / "bitfit", "--json", tmp_path / "eval.json") == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    trained = json.loads((tmp_path / "bitfit" / "metrics.json").read_text())
    assert evaluated["top1"] == pytest.approx(trained["top1"])  # the adapter reloads onto the backbone


@pytest.mark.parametrize("method", ["linear", "apt"])
def test_attentive_head_trains_saves_and_evaluates_end_to_end(tmp_path, dataset, backbone, capsys, method):
    """``--set model.head=attentive`` on an ordinary recipe: the probe trains with the method's tensors,
    the adapter holds it, and ``aptune eval`` rebuilds the same model from the adapter."""
    config = write_config(tmp_path, dataset, backbone, method={"name": method}, train={"epochs": 1})
    run = tmp_path / method
    overrides = ["--set", "model.head=attentive", "--set", "model.attentive_queries=2"]
    if method == "linear":  # the readout's start on standardised probe outputs, as the demo's recipes do
        overrides += ["--set", "train.standardize_features=true"]
    assert run_cli("train", "--config", config, *overrides, "--output-dir", run) == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert (recorded["head"], recorded["attentive_queries"]) == ("attentive", 2)
    tensors = load_file(run / "adapter.safetensors")
    assert tensors["head.probe.queries"].shape == (2, 32) and "head.weight" in tensors
    own = ("kv_prompts.", "fc_norm.", "head.") if method == "apt" else ("fc_norm.", "head.")
    assert all(name.startswith(own) for name in tensors)
    metrics = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert run_cli("eval", "--run", run, "--json", tmp_path / "eval.json") == 0
    assert json.loads((tmp_path / "eval.json").read_text())["top1"] == pytest.approx(metrics["top1"])


def test_cached_features_refuse_an_attentive_head(tmp_path, dataset, backbone, capsys):
    config = write_config(tmp_path, dataset, backbone, method={"name": "linear"}, train={"cache_features": True})
    assert run_cli("train", "--config", config, "--set", "model.head=attentive", "--output-dir", tmp_path / "r") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.cache_features keeps one pooled vector per clip" in err
    assert not (tmp_path / "r").exists()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_input_wait_counts_time_blocked_in_the_loader_after_the_first_batch():
    from aptune.engine.loop import InputWait

    clock = FakeClock()
    waiting = InputWait(clock)
    assert waiting.fraction() is None
    with waiting.for_batch():
        clock.now += 30.0  # starting the workers: not counted
    clock.now += 1.0  # a step
    assert waiting.fraction() is None  # one batch: no steady state yet
    for _ in range(4):
        with waiting.for_batch():
            clock.now += 3.0  # blocked on the loader
        clock.now += 1.0  # the step
    assert waiting.fraction() == pytest.approx(12.0 / 17.0)


def test_input_wait_advice_names_the_remedies_for_an_idle_accelerator():
    from aptune.config import load_config
    from aptune.engine.loop import INPUT_BOUND, input_wait_advice

    cuda = torch.device("cuda")
    config = load_config(None, ["data.num_workers=3"])
    advice = input_wait_advice(0.6, config, cuda)
    assert advice.startswith("the cuda waited for input 60% of the time")
    assert "raise data.num_workers (now 3)" in advice and "data.augment_on: device" in advice
    assert input_wait_advice(INPUT_BOUND, config, cuda) is None
    assert input_wait_advice(0.9, config, torch.device("cpu")) is None  # workers share the model's cores
    assert input_wait_advice(None, config, cuda) is None
    on_device = load_config(None, ["data.augment_on=device"])
    assert "augment_on" not in input_wait_advice(0.6, on_device, cuda)
    erasing = load_config(None, ["data.random_erase=0.25"])  # random erasing runs on the CPU only
    assert "augment_on" not in input_wait_advice(0.6, erasing, cuda)
