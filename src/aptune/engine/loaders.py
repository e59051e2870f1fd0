"""Datasets and loaders for a run: what the engine needs from ``aptune.data``.

Training data order and augmentation are a function of (seed, epoch, rank): a
fresh loader per epoch with a seeded sampler and worker seeds, so a resumed
epoch replays exactly.  Evaluation shards *videos* (not views) across ranks so
every video's views are decoded once, by one process.

With ``data.augment_on: device`` the workers only decode and draw each clip's random
choices; :class:`DeviceAugmentedBatches` carries them out on the training device as each
batch is read, so the loop receives the same :class:`~aptune.data.TrainBatch` either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from aptune.config import Config
from aptune.data import (
    BadVideoLog,
    TrainBatch,
    TrainItem,
    VideoEvalDataset,
    VideoTrainDataset,
    build_dataset,
    build_loader,
    collate_train,
)
from aptune.data.batch_augment import BatchAugment
from aptune.data.sampling import resolve_sampling
from aptune.engine import distributed as dist_utils


@dataclass
class EvalData:
    loader: DataLoader
    dataset: VideoEvalDataset
    num_videos: int  # videos of the whole split (all ranks), for the skipped count
    max_bad_fraction: float = 0.01


@dataclass
class DataBundle:
    train: VideoTrainDataset
    val: EvalData | None
    test: EvalData
    class_names: list[str]
    preprocess: dict[str, Any] = field(default_factory=dict)


def build_data(config: Config, info, splits: tuple[str, ...] = ("train", "val", "test")) -> DataBundle:
    """Read every split's annotations up front, so a bad file fails before any training."""
    data = config.data
    train = build_dataset(data, "train")
    class_names = list(train.class_names) or [str(i) for i in range(1 + max(s.label for s in train.samples))]
    val = build_eval_data(config, "val", info, multi_view=False) if "val" in splits else None
    test = build_eval_data(config, "test", info, multi_view=True)
    return DataBundle(train, val, test, class_names, preprocess_metadata(config))


def preprocess_metadata(config: Config) -> dict[str, Any]:
    """How clips were made: stored in adapters so eval/predict rebuild the same views."""
    data = config.data
    return {
        "format": data.format,
        "sampling": resolve_sampling(data.sampling, data.format),
        "num_frames": data.num_frames,
        "sampling_rate": data.sampling_rate,
        "input_size": data.input_size,
        "short_side_size": data.short_side_size,
        "test_num_segment": data.test_num_segment,
        "test_num_crop": data.test_num_crop,
    }


class SeededItems(Dataset):
    """Each item's random augmentation is drawn from a generator seeded by (seed, epoch, index).

    So a clip looks the same whichever worker, rank or world size loads it: a
    2-process run sees exactly the clips of a 1-process run with the same global batch.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item_seed = (self.seed * 1_000_003 + self.epoch * 7_919 + index * 104_729) % (2**63)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            return self.dataset[index]


class DeviceAugmentedBatches:
    """The batches of a loader of :class:`~aptune.data.batch_augment.RawTrainBatch`, each
    augmented on ``device`` when it is read: :class:`~aptune.data.TrainBatch` with the clips
    on ``device``."""

    def __init__(self, loader: DataLoader, augment: BatchAugment, device: torch.device) -> None:
        self.loader, self.augment, self.device = loader, augment, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[TrainBatch]:
        for raw in self.loader:
            yield TrainBatch(self.augment(raw, self.device), raw.labels, raw.failures)


def augmented_on_device(loader: DataLoader, dataset: Dataset, device: torch.device | None):
    """``loader`` itself, or for a dataset with ``augment_on="device"`` its batches augmented on
    ``device`` (None: the CPU, for callers that move the clips themselves)."""
    if getattr(dataset, "augment_on", "cpu") != "device":
        return loader
    return DeviceAugmentedBatches(loader, BatchAugment(dataset.transform.input_size), device or torch.device("cpu"))


def epoch_loader(data: DataBundle, config: Config, info, epoch: int, device: torch.device | None = None):
    """The training batches of ``epoch``; with ``data.augment_on: device`` their clips are
    augmented on ``device`` (None: on the CPU of this process)."""
    items = SeededItems(data.train, config.train.seed, epoch)
    sampler = DistributedSampler(
        items, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.train.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(config.train.seed * 7919 + epoch * 104729 + info.rank)
    # not persistent: each epoch's workers are seeded from (seed, epoch), which resuming needs
    # cached features are single clips: a batch holds as many as batch_size videos would give
    per_item = 1 if isinstance(data.train, CachedFeatures) else config.data.num_sample
    batch_size = config.train.batch_size * config.data.num_sample // per_item
    loader = DataLoader(
        items,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=config.data.num_workers,
        collate_fn=getattr(data.train, "collate_fn", collate_train),
        drop_last=True,
        generator=generator,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
    return augmented_on_device(loader, data.train, device)


def new_bad_video_log(data: DataBundle, config: Config) -> BadVideoLog:
    return BadVideoLog(len(data.train), config.data.max_bad_fraction, "train")


def build_eval_data(config: Config, split: str, info, multi_view: bool) -> EvalData:
    dataset = build_dataset(config.data, split, multi_view=multi_view)
    return EvalData(
        eval_loader(dataset, config.train.batch_size, config.data.num_workers, info),
        dataset,
        len(dataset.samples),
        config.data.max_bad_fraction,
    )


def eval_loader(dataset: VideoEvalDataset, batch_size: int, num_workers: int, info) -> DataLoader:
    views = dataset.views_per_video
    # whole videos per batch: the dataset decodes a video once for all its views
    videos_per_batch = max(1, batch_size // views)
    return build_loader(
        dataset,
        videos_per_batch * views,
        num_workers,
        sampler=VideoShardSampler(len(dataset.samples), views, info.rank, info.world_size),
    )


class VideoShardSampler(Sampler[int]):
    """The view indices of videos rank, rank + world, ... in order."""

    def __init__(self, num_videos: int, views_per_video: int, rank: int = 0, world_size: int = 1) -> None:
        self.videos = range(rank, num_videos, world_size)
        self.views = views_per_video

    def __iter__(self):
        for video in self.videos:
            start = video * self.views
            yield from range(start, start + self.views)

    def __len__(self) -> int:
        return len(self.videos) * self.views


class CachedFeatures(Dataset):
    """Pooled backbone features of fixed training clips, for a linear probe.

    Each video's ``num_sample`` clips are decoded and augmented once (the epoch-0
    draw) and sent through the frozen backbone once; every epoch then trains
    ``fc_norm`` and ``head`` on these features.  The augmentation is therefore a
    fixed pool per video, the price of not re-running the backbone.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> TrainItem:
        return TrainItem(self.features[index][None], int(self.labels[index]), ())


@torch.no_grad()
def cache_train_features(model, data: DataBundle, config: Config, info, device: torch.device) -> CachedFeatures:
    """Every rank extracts its share of the videos; the features are gathered on all ranks."""
    items = SeededItems(data.train, config.train.seed, epoch=0)
    shard = Subset(items, range(info.rank, len(items), info.world_size))
    loader = DataLoader(
        shard,
        batch_size=config.train.batch_size,
        num_workers=config.data.num_workers,
        collate_fn=getattr(data.train, "collate_fn", collate_train),
    )
    loader = augmented_on_device(loader, data.train, device)
    bad_videos = BadVideoLog(len(data.train), config.data.max_bad_fraction, "train")
    was_training = model.training
    model.eval()
    rows = []
    try:
        with dist_utils.together("while caching training features"):
            for batch in loader:
                bad_videos.record(batch.failures)
                pooled = model.forward_pooled(batch.clips.to(device)).float()
                rows.append(torch.cat([pooled, batch.labels.to(device, pooled.dtype)[:, None]], dim=1))
    finally:
        model.train(was_training)
    width = model.config.embed_dim + 1
    local = torch.cat(rows) if rows else torch.zeros(0, width, device=device)
    rows = dist_utils.gather_rows(local).cpu()
    return CachedFeatures(rows[:, :-1].contiguous(), rows[:, -1].long())


class HeadOnly(nn.Module):
    """``fc_norm`` and ``head`` of a model, applied to cached pooled features."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.fc_norm(features))
