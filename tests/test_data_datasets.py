"""Clip datasets: repeated augmentation, multi-view evaluation sharing one decode, and
bad videos (skipped and counted in training, reported in evaluation, never substituted)."""

from __future__ import annotations

import pytest
import torch

from aptune.config import DataConfig
from aptune.data import datasets as D
from aptune.data.datasets import BadVideoLog, build_dataset, build_loader, collate_train
from aptune.errors import DataError


def _config(root, **overrides) -> DataConfig:
    values = dict(
        format="list",
        root=str(root),
        num_frames=4,
        sampling_rate=2,
        input_size=24,
        short_side_size=28,
        num_sample=2,
        test_num_segment=2,
        test_num_crop=3,
        num_workers=0,
        decode_threads=1,
    )
    values.update(overrides)
    return DataConfig(**values)


@pytest.fixture()
def with_bad_videos(synthetic, tmp_path):
    """A list dataset: the synthetic videos plus a missing, an empty and a non-video file."""
    source = synthetic("list")
    (tmp_path / "zero.avi").write_bytes(b"")
    (tmp_path / "text.avi").write_text("not a video\n" * 20)
    bad = ["missing.avi 0", "zero.avi 1", "text.avi 2"]
    for split in ("train", "test"):
        lines = [f"{source.root / line}" for line in (source.root / f"{split}.csv").read_text().splitlines()]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines + bad) + "\n")
    (tmp_path / "classes.txt").write_text((source.root / "classes.txt").read_text())
    return tmp_path


def test_train_items_and_repeated_augmentation_collate(synthetic):
    dataset = build_dataset(_config(synthetic("list").root), "train")
    item = dataset[0]
    assert item.clips.shape == (2, 3, 4, 24, 24) and item.clips.dtype == torch.float32
    assert item.failures == ()
    assert not torch.equal(item.clips[0], item.clips[1])  # independently augmented
    batch = collate_train([dataset[0], dataset[5], dataset[9]])
    assert batch.clips.shape == (6, 3, 4, 24, 24)
    labels = [dataset.samples[i].label for i in (0, 5, 9)]
    assert batch.labels.tolist() == [labels[0]] * 2 + [labels[1]] * 2 + [labels[2]] * 2
    assert dataset.class_names == synthetic("list").class_names


def test_training_skips_bad_videos_and_counts_them_across_workers(with_bad_videos, caplog):
    config = _config(with_bad_videos, max_bad_fraction=0.5)
    dataset = build_dataset(config, "train")
    loader = build_loader(dataset, batch_size=3, num_workers=2, seed=0)
    log = BadVideoLog(len(dataset), config.max_bad_fraction, "train")
    seen = 0
    for batch in loader:
        log.record(batch.failures)
        assert batch.clips.shape[0] == 6  # full batches: bad videos were replaced
        assert batch.labels.max() < 3
        seen += batch.clips.shape[0]
    assert len(dataset) == 15 and seen == 30
    assert set(log.bad) == {str(with_bad_videos / n) for n in ("missing.avi", "zero.avi", "text.avi")}
    assert log.bad[str(with_bad_videos / "missing.avi")] == "file not found"
    assert log.bad[str(with_bad_videos / "zero.avi")] == "empty file (0 bytes)"
    assert log.skipped >= 3 and log.as_dict()["num_bad"] == 3
    assert "3 of 15 videos" in log.summary() and "replaced by random others" in log.summary()
    # in the main process the one-line warning is visible
    caplog.set_level("WARNING", logger="aptune.data")
    dataset[len(dataset) - 3]  # missing.avi
    assert any("skipping" in r.message and "missing.avi: file not found" in r.message for r in caplog.records)


def test_too_many_bad_videos_stop_with_the_first_files(with_bad_videos):
    dataset = build_dataset(_config(with_bad_videos), "train")  # default max_bad_fraction 1%
    log = BadVideoLog(len(dataset), 0.01, "train")
    with pytest.raises(DataError, match=r"of \d+ train videos cannot be decoded .*max_bad_fraction=0.01.*\.avi"):
        for batch in build_loader(dataset, batch_size=1, drop_last=False):
            log.record(batch.failures)


def test_train_raises_when_nothing_decodes(tmp_path):
    (tmp_path / "train.csv").write_text("a.avi 0\nb.avi 0\n")
    dataset = build_dataset(_config(tmp_path), "train")
    with pytest.raises(DataError, match="could not be decoded"):
        dataset[0]


def test_evaluation_reports_bad_videos_and_never_substitutes(with_bad_videos):
    dataset = build_dataset(_config(with_bad_videos, max_bad_fraction=0.5), "test")
    assert dataset.views_per_video == 6
    log = BadVideoLog(len(dataset.samples), 0.5, "test")
    views: dict[int, list[int]] = {}
    for batch in build_loader(dataset, batch_size=6, num_workers=2):
        log.record(batch.failures)
        assert batch.clips.shape[0] == batch.labels.shape[0] == batch.video_indices.shape[0]
        for video, view, label in zip(batch.video_indices.tolist(), batch.view_indices.tolist(), batch.labels.tolist()):
            views.setdefault(video, []).append(view)
            assert dataset.samples[video].label == label
    bad_indices = {i for i, s in enumerate(dataset.samples) if s.path in log.bad}
    assert log.num_bad == 3 and len(bad_indices) == 3
    assert not bad_indices & set(views)  # failed videos have no views at all
    assert set(views) == set(range(len(dataset.samples))) - bad_indices
    assert all(sorted(v) == list(range(6)) for v in views.values())
    assert "not evaluated" in log.summary()


def test_all_views_of_a_video_share_one_decode(synthetic, monkeypatch):
    calls = []
    original = D._load_clip

    def counting(path, *args, **kwargs):
        calls.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(D, "_load_clip", counting)
    dataset = build_dataset(_config(synthetic("list").root), "test")
    loader = build_loader(dataset, batch_size=4, num_workers=0)  # not a multiple of 6 on purpose
    total = sum(batch.clips.shape[0] for batch in loader)
    assert total == len(dataset.samples) * 6
    assert len(calls) == len(dataset.samples)
    # views differ: 2 segments x 3 crops
    views = torch.stack([dataset[i].clip for i in range(6)])
    assert views.shape == (6, 3, 4, 24, 24)
    assert len({tuple(v.flatten()[:50].tolist()) for v in views}) == 6


def test_val_uses_one_view_and_segment_sampling_for_ssv2(synthetic):
    val = build_dataset(_config(synthetic("list").root), "val")
    assert val.views_per_video == 1 and len(val) == len(val.samples)
    assert build_dataset(_config(synthetic("list").root), "val", multi_view=True).views_per_video == 6
    ssv2 = build_dataset(_config(synthetic("ssv2").root, format="ssv2"), "test")
    assert ssv2.sampling == "segment"
    item = ssv2[0]
    assert item.clip.shape == (3, 4, 24, 24) and item.failure is None
    dense = build_dataset(_config(synthetic("ssv2").root, format="ssv2", sampling="dense"), "train")
    assert dense.sampling == "dense"
