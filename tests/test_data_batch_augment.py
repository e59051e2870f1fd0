"""data.augment_on=device: the batched augmentation on the training device against the
per-clip CPU path (aptune.data.transforms), op by op, clip by clip, and in distribution."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from helpers import smooth_frames, tiny_run_config

from aptune.cli import main as cli_main
from aptune.config import load_config
from aptune.data.batch_augment import BATCHED_OPS, OP_NAMES, BatchAugment, collate_raw_train
from aptune.data.datasets import RawTrainItem, TrainItem
from aptune.data.transforms import _OPS, ClipAugmentation, TrainTransform
from aptune.errors import ConfigError

SPEC = "rand-m4-n2-mstd0.2-inc1"  # the recipes' RandAugment


def device_path(
    transform: TrainTransform, videos: list[torch.Tensor], per_video: int, augment: BatchAugment | None = None
) -> tuple[torch.Tensor, list]:
    """What a worker draws and the device does with it (here the device is the CPU)."""
    items = [
        RawTrainItem(v, tuple(transform.draw(v.shape[1], v.shape[2]) for _ in range(per_video)), 0, ()) for v in videos
    ]
    clips = (augment or BatchAugment(transform.input_size))(collate_raw_train(items))
    return clips, [c for item in items for c in item.choices]


# ----------------------------------------------------------------------- op by op
@pytest.mark.parametrize("name", OP_NAMES)
def test_each_batched_op_is_the_per_clip_op(name):
    video = torch.stack([smooth_frames(2, 24, 32, seed).permute(0, 3, 1, 2).float() for seed in range(3)])
    arguments = [_OPS[name][1](magnitude) for magnitude in (1.5, 4.0, 8.5)]
    expected = torch.stack([_OPS[name][0](video[i].clone(), arguments[i]) for i in range(3)])
    got = BATCHED_OPS[OP_NAMES.index(name)](video.clone(), torch.tensor(arguments, dtype=torch.float64))
    assert got.shape == expected.shape
    # float rounding only (a different order of the same sums): far below one of 256 levels
    assert (got - expected).abs().max() <= 1e-3


def test_the_same_choices_give_the_same_clips_for_videos_of_different_sizes():
    torch.manual_seed(0)
    transform = TrainTransform(32, "rand-m9-n3-mstd0.5", horizontal_flip=True)  # strong: every op shows
    videos = [smooth_frames(4, 40, 56, 1), smooth_frames(4, 48, 48, 2), smooth_frames(4, 36, 64, 3)]
    clips, choices = device_path(transform, videos, per_video=4)
    expected = torch.stack([transform.apply(videos[i // 4], choice) for i, choice in enumerate(choices)])
    assert clips.shape == expected.shape == (12, 3, 4, 32, 32) and clips.dtype == torch.float32
    torch.testing.assert_close(clips, expected, rtol=0, atol=1e-4)
    assert any(c.flip for c in choices) and sum(len(c.ops) for c in choices) >= 12


def test_a_batch_of_one_clip_without_ops_and_padding_never_reaches_a_crop():
    transform = TrainTransform(16, None, horizontal_flip=False)
    small, large = smooth_frames(2, 20, 20, 4), smooth_frames(2, 30, 40, 5)
    raw = collate_raw_train(
        [RawTrainItem(small, (transform.draw(20, 20),), 0, ()), RawTrainItem(large, (transform.draw(30, 40),), 1, ())]
    )
    assert raw.frames.shape == (2, 2, 30, 40, 3) and raw.sizes.tolist() == [[20, 20], [30, 40]]
    assert raw.ops.shape == (2, 0) and raw.labels.tolist() == [0, 1]
    for row, video in enumerate((small, large)):
        box = [int(v) for v in raw.boxes[row]]
        assert box[0] + box[2] <= video.shape[1] and box[1] + box[3] <= video.shape[2]
    got = BatchAugment(16)(raw)
    for row, video in enumerate((small, large)):
        choice = ClipAugmentation(tuple(raw.boxes[row].tolist()), False, ())
        torch.testing.assert_close(got[row], transform.apply(video, choice))


# ------------------------------------------------------------------ in distribution
def ks_distance(a: list[float], b: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    values = sorted(set(a) | set(b))
    sa, sb = torch.tensor(sorted(a)), torch.tensor(sorted(b))
    grid = torch.tensor(values)
    cdf_a = torch.searchsorted(sa, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(sb, grid, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


def ks_critical(n: int, m: int, alpha_coefficient: float = 1.95) -> float:
    # c(alpha) * sqrt((n + m) / (n m)); c = 1.95 for alpha = 0.001
    return alpha_coefficient * math.sqrt((n + m) / (n * m))


def chi_square(counts_a: list[int], counts_b: list[int]) -> float:
    """Two-sample chi-square statistic of two histograms over the same categories."""
    total_a, total_b = sum(counts_a), sum(counts_b)
    statistic = 0.0
    for a, b in zip(counts_a, counts_b):
        if a + b == 0:
            continue
        expected_a = (a + b) * total_a / (total_a + total_b)
        expected_b = (a + b) * total_b / (total_a + total_b)
        statistic += (a - expected_a) ** 2 / expected_a + (b - expected_b) ** 2 / expected_b
    return statistic


# chi-square critical values at alpha = 0.001 by degrees of freedom
CHI2_CRITICAL = {1: 10.83, 2: 13.82, 14: 36.12}


def describe(clips: torch.Tensor, choices: list, height: int, width: int) -> dict[str, list]:
    """What the comparison looks at, per clip."""
    names = [name for choice in choices for name, _ in choice.ops]
    return {
        "scale": [c.box[2] * c.box[3] / (height * width) for c in choices],
        "log_aspect": [math.log(c.box[3] / c.box[2]) for c in choices],
        "flips": [int(c.flip) for c in choices],
        "ops_per_clip": [len(c.ops) for c in choices],
        "op_counts": [names.count(name) for name in OP_NAMES],
        "rotations": [abs(float(arg)) for c in choices for name, arg in c.ops if name == "Rotate"],
        "mean": clips.mean(dim=(1, 2, 3, 4)).tolist(),
        "std": clips.std(dim=(1, 2, 3, 4)).tolist(),
        "red_mean": clips[:, 0].mean(dim=(1, 2, 3)).tolist(),
    }


def cpu_path(transform: TrainTransform, video: torch.Tensor, count: int) -> tuple[torch.Tensor, list]:
    """The per-clip path as a worker runs it, recording the choices it drew."""
    drawn = []
    draw = transform.draw

    def recording(height, width):
        drawn.append(draw(height, width))
        return drawn[-1]

    transform.draw = recording
    try:
        clips = torch.stack([transform(video) for _ in range(count)])
    finally:
        del transform.draw
    return clips, drawn


def differences(cpu: dict, device: dict) -> list[str]:
    """The statistics in which two samples differ at alpha = 0.001 (empty: the same distribution)."""
    found = []
    for key in ("scale", "log_aspect", "mean", "std", "red_mean", "rotations"):
        distance, critical = ks_distance(cpu[key], device[key]), ks_critical(len(cpu[key]), len(device[key]))
        if distance > critical:
            found.append(f"{key}: KS {distance:.3f} > {critical:.3f}")
    for key, dof in (("flips", 1), ("ops_per_clip", 2), ("op_counts", len(OP_NAMES) - 1)):
        if key == "op_counts":  # only the ops the spec can draw
            a, b = zip(*[(x, y) for x, y in zip(cpu[key], device[key]) if x + y])
            dof = len(a) - 1
        else:
            a, b = [cpu[key].count(v) for v in range(dof + 1)], [device[key].count(v) for v in range(dof + 1)]
        statistic = chi_square(list(a), list(b))
        if statistic > CHI2_CRITICAL[dof]:
            found.append(f"{key}: chi2 {statistic:.1f}")
    return found


@pytest.fixture(scope="module")
def samples():
    """600 clips of one video by each path, from different seeds (independent samples)."""
    video = smooth_frames(2, 48, 64, 7)
    transform = TrainTransform(24, SPEC, horizontal_flip=True)
    torch.manual_seed(1)
    cpu = describe(*cpu_path(transform, video, 600), 48, 64)
    torch.manual_seed(2)
    device = describe(*device_path(transform, [video] * 150, per_video=4), 48, 64)
    return video, transform, cpu, device


def test_the_device_path_draws_and_makes_the_cpu_paths_distribution(samples):
    _, _, cpu, device = samples
    assert differences(cpu, device) == []
    # the samples are rich enough to say something: both paths used all 15 ops of the spec, and flipped ~half
    assert sum(map(bool, cpu["op_counts"])) == sum(map(bool, device["op_counts"])) == 15
    assert 0.4 < sum(device["flips"]) / 600 < 0.6


@pytest.mark.parametrize(
    "change, augment, statistic",
    [
        (dict(scale=(0.3, 1.0)), {}, "scale"),
        (dict(horizontal_flip=False), {}, "flips"),
        (dict(rand_augment="rand-m9-n2-mstd0.2-inc1"), {}, "rotations"),
        ({}, dict(mean=(0.505, 0.456, 0.406)), "red_mean"),  # a pixel-level slip: 5 levels of red
    ],
)
def test_the_comparison_notices_a_changed_augmentation(samples, change, augment, statistic):
    video, _, cpu, _ = samples
    options = {"input_size": 24, "rand_augment": SPEC, "horizontal_flip": True, **change}
    changed = TrainTransform(**options)
    torch.manual_seed(3)
    clips, choices = device_path(changed, [video] * 150, per_video=4, augment=BatchAugment(24, **augment))
    found = differences(cpu, describe(clips, choices, 48, 64))
    assert any(line.startswith(statistic) for line in found), found


# ---------------------------------------------------------------- through the engine
def _config(tmp_path, root, **data):
    config = tiny_run_config(data={"root": str(root), "num_sample": 2, "rand_augment": SPEC, **data})
    path = tmp_path / f"config_{data.get('augment_on', 'cpu')}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_epoch_batches_are_the_cpu_paths_clips(tmp_path, synthetic):
    """Same seed, same epoch: the workers draw the same choices, so the clips match the CPU path's."""
    from aptune.engine.distributed import DistInfo
    from aptune.engine.loaders import build_data, epoch_loader

    root = synthetic("list").root
    batches = {}
    for place in ("cpu", "device"):
        config = load_config(_config(tmp_path, root, augment_on=place))
        data = build_data(config, DistInfo(), splits=("train",))
        batches[place] = list(epoch_loader(data, config, DistInfo(), epoch=1, device=torch.device("cpu")))
    assert len(batches["cpu"]) == len(batches["device"]) > 0
    for cpu, device in zip(batches["cpu"], batches["device"]):
        assert torch.equal(cpu.labels, device.labels)
        torch.testing.assert_close(device.clips, cpu.clips, rtol=0, atol=1e-3)


def test_a_run_augmenting_on_the_device_trains_as_the_cpu_path(tmp_path, synthetic):
    root = synthetic("list").root
    losses = {}
    for place in ("cpu", "device"):
        run = tmp_path / place
        config = _config(tmp_path, root, augment_on=place, rand_augment=None)
        assert cli_main(["train", "--config", str(config), "--output-dir", str(run), "--set", "train.epochs=1"]) == 0
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[place] = [r["loss"] for r in records if r["kind"] == "train"]
        assert yaml.safe_load((run / "config.yaml").read_text())["data"]["augment_on"] == place
    assert losses["cpu"] and losses["device"] == losses["cpu"]  # crop, flip, normalise: bit for bit


def test_augment_on_is_checked():
    assert load_config(None).data.augment_on == "cpu"  # the per-clip path stays the default
    assert load_config(None, ["data.augment_on=device"]).data.augment_on == "device"
    with pytest.raises(ConfigError, match=r"data.augment_on='gpu' is not one of: cpu, device"):
        load_config(None, ["data.augment_on=gpu"])
    with pytest.raises(ConfigError, match="data.random_erase=0.25 is done on the cpu only"):
        load_config(None, ["data.augment_on=device", "data.random_erase=0.25"])


def test_train_items_of_each_place(synthetic):
    from aptune.data.datasets import VideoTrainDataset, collate_train

    samples = [(str(p), label) for p, label in synthetic("list").videos[:2]]
    transform = TrainTransform(16, SPEC)
    cpu = VideoTrainDataset(samples, num_frames=4, sampling_rate=2, transform=transform, num_sample=3)
    device = VideoTrainDataset(
        samples, num_frames=4, sampling_rate=2, transform=transform, num_sample=3, augment_on="device"
    )
    assert isinstance(cpu[0], TrainItem) and cpu.collate_fn is collate_train
    item = device[0]
    assert isinstance(item, RawTrainItem) and device.collate_fn is collate_raw_train
    assert item.frames.dtype == torch.uint8 and item.frames.shape[0] == 4 and len(item.choices) == 3
    with pytest.raises(ValueError, match="augment_on"):
        VideoTrainDataset(samples, augment_on="gpu")
