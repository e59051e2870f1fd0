"""The shipped recipes in configs/ are the official ones, with every aptune departure switched off."""

from pathlib import Path

import pytest

from aptune.config import load_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


def test_there_are_recipes_for_every_dataset_and_method():
    names = {path.stem for path in CONFIGS}
    for dataset in ("ucf101", "hmdb51", "ssv2"):
        for arch in ("vits", "vitb"):
            for method in ("apt", "linear", "full"):
                assert f"{dataset}_{arch}_{method}" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_aptune_departures_are_off_in_configs(path):
    config = load_config(path)
    assert config.optim.head_lr is None and config.optim.head_base_lr is None
    assert config.optim.decay_prompt_scales  # the official code decays APT's prompt scales
    assert getattr(config.method, "prompt_init", "uniform") == "uniform"  # only prompt methods have it
    assert not config.train.standardize_features and not config.train.cache_features
    assert config.data.video_cache_mb == 0
    assert config.model.head == "linear"  # the paper's mean pooling, not the attentive probe
    assert config.optim.lr is None  # base_lr, scaled by the total batch like the official lr
    assert config.data.num_sample == 2 and config.train.label_smoothing == 0.1


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith("_apt")], ids=lambda p: p.stem)
def test_apt_recipes_are_the_apt_scripts(path):
    config = load_config(path)
    assert (config.optim.name, config.optim.base_lr, config.optim.weight_decay) == ("adamw", 0.05, 1e-5)
    assert (config.optim.warmup_epochs, config.optim.min_lr, config.train.epochs) == (10, 1e-6, 100)
    assert config.optim.layer_decay == 1.0 and config.method.reparam and config.method.prompt_dropout == 0.1
    assert config.data.rand_augment == "rand-m4-n2-mstd0.2-inc1"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith("_linear")], ids=lambda p: p.stem)
def test_linear_recipes_are_the_apt_codes_linear_probe(path):
    config = load_config(path)
    assert (config.optim.name, config.optim.base_lr, config.optim.weight_decay) == ("adamw", 0.01, 1e-5)
    assert (config.optim.warmup_epochs, config.train.epochs) == (10, 100)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith("_full")], ids=lambda p: p.stem)
def test_full_recipes_use_videomaes_layer_decay_drop_path_and_mixing(path):
    config = load_config(path)
    assert config.optim.layer_decay in (0.7, 0.75)
    assert config.model.drop_path_rate in (0.1, 0.2)
    assert (config.optim.weight_decay, config.optim.warmup_epochs) == (0.05, 5)
    assert (config.train.mixup, config.train.cutmix) == (0.8, 1.0)
    assert config.data.rand_augment == "rand-m7-n4-mstd0.5-inc1"
    assert config.data.random_erase == 0.25


@pytest.mark.parametrize("path", [p for p in CONFIGS if not p.stem.endswith("_full")], ids=lambda p: p.stem)
def test_only_full_fine_tuning_erases(path):
    assert load_config(path).data.random_erase == 0.0  # the APT scripts do not erase
