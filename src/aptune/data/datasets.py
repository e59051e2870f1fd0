"""Clip datasets for training and multi-view evaluation, their collate functions, and
the bookkeeping of videos that could not be decoded.

Bad videos never vanish silently.  A dataset item carries the failures met while
building it (``Failure(path, reason, video_index)``); the collate functions pass them
on in the batch, and the main process feeds them to a :class:`BadVideoLog`, so the
counts are right however many DataLoader workers there are.

* Training: a video that fails is replaced by a different random video (and logged).
* Evaluation: a video that fails is reported as not evaluated; its views are dropped
  from the batch, never replaced.
* Either way, more than ``max_bad_fraction`` of the split failing stops the run with
  a :class:`~aptune.errors.DataError` listing the first bad files.

"Fails" means :class:`~aptune.data.decode.DecodeError`, which the decoder raises for
every problem of a file (FFmpeg, OS and NumPy errors alike, and a picture too elongated
to resize), so no file can stop a run with a traceback.  Frames are decoded at most at
4x the size the transforms need, which bounds the memory of very large videos.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from aptune.config import AUGMENT_PLACES
from aptune.data.annotations import Annotations, Sample, load_annotations
from aptune.data.batch_augment import collate_raw_train
from aptune.data.decode import DecodeError, check_decoder, default_decode_threads
from aptune.data.sampling import clip_indices, resolve_sampling
from aptune.data.transforms import ClipAugmentation, TestTransform, TrainTransform
from aptune.data.video_cache import DecodedVideoCache, open_cached_video, shared_video_cache
from aptune.errors import DataError

__all__ = [
    "Failure",
    "TrainItem",
    "RawTrainItem",
    "TrainBatch",
    "EvalItem",
    "EvalBatch",
    "VideoTrainDataset",
    "VideoEvalDataset",
    "collate_train",
    "collate_eval",
    "BadVideoLog",
    "build_dataset",
    "build_loader",
]

logger = logging.getLogger("aptune.data")


class Failure(NamedTuple):
    """A video that could not be used, and why (one short phrase)."""

    path: str
    reason: str
    video_index: int


class TrainItem(NamedTuple):
    clips: torch.Tensor  # (num_sample, C, T, H, W) float32, augmented independently
    label: int
    failures: tuple[Failure, ...]  # videos tried and skipped before this one succeeded


class RawTrainItem(NamedTuple):
    """A training item for ``augment_on="device"``: the decoded frames and each clip's choices."""

    frames: torch.Tensor  # (T, H, W, 3) uint8, as decoded
    choices: tuple[ClipAugmentation, ...]  # num_sample draws, carried out on the device
    label: int
    failures: tuple[Failure, ...]


class TrainBatch(NamedTuple):
    clips: torch.Tensor  # (batch_size * num_sample, C, T, H, W)
    labels: torch.Tensor  # (batch_size * num_sample,) int64
    failures: list[Failure]


class EvalItem(NamedTuple):
    clip: torch.Tensor | None  # (C, T, H, W), None when the video could not be decoded
    label: int
    video_index: int
    view_index: int
    failure: Failure | None


class EvalBatch(NamedTuple):
    clips: torch.Tensor  # (N, C, T, H, W); N may be 0 when every view in the batch failed
    labels: torch.Tensor  # (N,) int64
    video_indices: torch.Tensor  # (N,) int64: which video each view belongs to
    view_indices: torch.Tensor  # (N,) int64: segment * num_crops + crop
    failures: list[Failure]  # videos of this batch that were not evaluated


def _load_clip(
    path: str,
    sampling: str,
    num_frames: int,
    sampling_rate: int,
    threads: int,
    train: bool,
    num_segments: int = 1,
    max_short_side: int | None = None,
    video_cache: DecodedVideoCache | None = None,
    decoder: str = "pyav",
) -> list[torch.Tensor]:
    """Decode one clip (train) or all ``num_segments`` test clips in a single pass.

    Frames are scaled down while decoding so their short side is at most
    ``max_short_side``, so the memory a clip takes is bounded whatever the resolution.
    """
    with open_cached_video(path, threads, max_short_side, video_cache, decoder) as video:
        total = video.num_frames
        if train:
            indices = [clip_indices(sampling, total, num_frames, sampling_rate, True)]
        else:
            indices = [
                clip_indices(sampling, total, num_frames, sampling_rate, False, num_segments, segment)
                for segment in range(num_segments)
            ]
        frames = video.get_frames([i for clip in indices for i in clip])
    return list(frames.split(num_frames))


def _decode_short_side(*sizes: int | None) -> int | None:
    """The short side frames are decoded at, at most: 4x what the transforms output (a
    224-pixel model reads a 4K video at 1593x896), so even the smallest random crop (8 %
    of the area) keeps more pixels than it is resized to.  None: no limit."""
    known = [size for size in sizes if isinstance(size, int) and size > 0]
    return 4 * max(known) if known else None


class _VideoDataset(Dataset):
    """What training and evaluation sets share: the videos and how clips are sampled."""

    def __init__(
        self,
        split: str,
        samples: Sequence[Sample],
        num_frames: int,
        sampling_rate: int,
        sampling: str,
        decode_threads: int,
        class_names: Sequence[str] | None,
        video_cache: DecodedVideoCache | None = None,
        decoder: str = "pyav",
    ) -> None:
        if not samples:
            raise DataError(f"the {split} split has no videos")
        self.samples = [Sample(str(path), int(label)) for path, label in samples]
        self.class_names = list(class_names or [])
        self.num_frames, self.sampling_rate, self.sampling = num_frames, sampling_rate, sampling
        self.decode_threads = decode_threads
        self.video_cache = video_cache
        self.decoder = decoder


class VideoTrainDataset(_VideoDataset):
    """One item per video: ``num_sample`` independently augmented copies of one random
    clip (repeated augmentation: one decode, several crops/flips/RandAugments).

    ``augment_on="device"``: an item is a :class:`RawTrainItem` (the decoded frames and the
    ``num_sample`` draws of random choices), augmented later on the training device;
    :attr:`collate_fn` is the matching collate function either way.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        num_frames: int = 16,
        sampling_rate: int = 4,
        sampling: str = "dense",
        transform: TrainTransform | None = None,
        num_sample: int = 1,
        decode_threads: int = 1,
        max_attempts: int = 20,
        class_names: Sequence[str] | None = None,
        video_cache: DecodedVideoCache | None = None,
        augment_on: str = "cpu",
        decoder: str = "pyav",
    ):
        super().__init__(
            "training", samples, num_frames, sampling_rate, sampling, decode_threads, class_names, video_cache, decoder
        )
        self.transform = transform or TrainTransform()
        if augment_on not in AUGMENT_PLACES:
            raise ValueError(f"augment_on={augment_on!r} is not one of: {', '.join(AUGMENT_PLACES)}")
        if augment_on == "device" and getattr(self.transform, "random_erase", 0) > 0:
            raise ValueError("random erasing is done on the cpu only: augment_on must be 'cpu' with it")
        self.augment_on = augment_on
        self.num_sample = num_sample
        self.max_attempts = max_attempts
        self.max_short_side = _decode_short_side(getattr(self.transform, "input_size", None))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> TrainItem:
        failures: list[Failure] = []
        tried = {index}
        for _ in range(self.max_attempts):
            path, label = self.samples[index]
            try:
                (frames,) = _load_clip(
                    path,
                    self.sampling,
                    self.num_frames,
                    self.sampling_rate,
                    self.decode_threads,
                    train=True,
                    max_short_side=self.max_short_side,
                    video_cache=self.video_cache,
                    decoder=self.decoder,
                )
            except DecodeError as exc:
                failures.append(Failure(path, str(exc), index))
                logger.warning("skipping %s: %s (training on a random other video instead)", path, exc)
                index = self._replacement(tried)
                tried.add(index)
                continue
            if self.augment_on == "device":
                height, width = frames.shape[1:3]
                choices = tuple(self.transform.draw(height, width) for _ in range(self.num_sample))
                return RawTrainItem(frames, choices, label, tuple(failures))
            clips = torch.stack([self.transform(frames) for _ in range(self.num_sample)])
            return TrainItem(clips, label, tuple(failures))
        raise DataError(
            f"{len(failures)} videos in a row could not be decoded, e.g. {failures[0].path}: {failures[0].reason}"
        )

    @property
    def collate_fn(self):
        return collate_raw_train if self.augment_on == "device" else collate_train

    def _replacement(self, tried: set[int]) -> int:
        if len(tried) >= len(self.samples):
            return int(torch.randint(0, len(self.samples), ()))
        while True:
            candidate = int(torch.randint(0, len(self.samples), ()))
            if candidate not in tried:
                return candidate


class VideoEvalDataset(_VideoDataset):
    """One item per view (video, segment, crop), ordered video by video.

    All segments of a video are decoded in one pass and kept (resized, uint8) in a
    one-video cache, so its ``num_segments x num_crops`` views cost one decode as long
    as they are read by the same worker: use a batch size that is a multiple of
    :attr:`views_per_video` (or ``num_workers=0``) to guarantee that.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        num_frames: int = 16,
        sampling_rate: int = 4,
        sampling: str = "dense",
        transform: TestTransform | None = None,
        num_segments: int = 1,
        decode_threads: int = 1,
        class_names: Sequence[str] | None = None,
        video_cache: DecodedVideoCache | None = None,
        decoder: str = "pyav",
    ):
        super().__init__(
            "evaluation",
            samples,
            num_frames,
            sampling_rate,
            sampling,
            decode_threads,
            class_names,
            video_cache,
            decoder,
        )
        self.transform = transform or TestTransform()
        self.num_segments = num_segments
        self.num_crops = self.transform.num_crops
        self.max_short_side = _decode_short_side(
            getattr(self.transform, "input_size", None),
            getattr(self.transform, "short_side_size", None),
        )
        self._cache: tuple[int, list[torch.Tensor] | Failure] | None = None

    @property
    def views_per_video(self) -> int:
        return self.num_segments * self.num_crops

    def __len__(self) -> int:
        return len(self.samples) * self.views_per_video

    def __getitem__(self, index: int) -> EvalItem:
        video_index, view_index = divmod(index, self.views_per_video)
        segment, crop = divmod(view_index, self.num_crops)
        path, label = self.samples[video_index]
        decoded = self._decoded(video_index)
        if isinstance(decoded, Failure):
            return EvalItem(None, label, video_index, view_index, decoded)
        clip = self.transform.crop(decoded[segment], crop)
        return EvalItem(clip, label, video_index, view_index, None)

    def _decoded(self, video_index: int) -> list[torch.Tensor] | Failure:
        if self._cache is not None and self._cache[0] == video_index:
            return self._cache[1]
        path = self.samples[video_index].path
        try:
            clips = _load_clip(
                path,
                self.sampling,
                self.num_frames,
                self.sampling_rate,
                self.decode_threads,
                train=False,
                num_segments=self.num_segments,
                max_short_side=self.max_short_side,
                video_cache=self.video_cache,
                decoder=self.decoder,
            )
            resized = self.transform.resize(torch.cat(clips))
            decoded: list[torch.Tensor] | Failure = list(resized.split(self.num_frames))
        except DecodeError as exc:
            logger.warning("not evaluated: %s: %s", path, exc)
            decoded = Failure(path, str(exc), video_index)
        self._cache = (video_index, decoded)
        return decoded


def collate_train(batch: Sequence[TrainItem]) -> TrainBatch:
    """Flatten repeated augmentation: B items x num_sample clips -> B*num_sample clips."""
    clips = torch.cat([item.clips for item in batch])
    labels = torch.tensor([item.label for item in batch for _ in range(item.clips.shape[0])], dtype=torch.long)
    failures = [f for item in batch for f in item.failures]
    return TrainBatch(clips, labels, failures)


def collate_eval(batch: Sequence[EvalItem]) -> EvalBatch:
    """Stack the views that decoded; views of failed videos are dropped and reported."""
    good = [item for item in batch if item.clip is not None]
    failures = list({item.failure.path: item.failure for item in batch if item.failure}.values())
    clips = torch.stack([item.clip for item in good]) if good else torch.empty(0)
    return EvalBatch(
        clips,
        torch.tensor([item.label for item in good], dtype=torch.long),
        torch.tensor([item.video_index for item in good], dtype=torch.long),
        torch.tensor([item.view_index for item in good], dtype=torch.long),
        failures,
    )


@dataclass
class BadVideoLog:
    """Counts bad videos of one split in the main process; raises when too many.

    Feed it every batch's ``failures``: ``log.record(batch.failures)``.  At the end of
    an epoch ``log.summary()`` is a one-line report and ``log.as_dict()`` a JSON-able one.
    """

    num_videos: int
    max_bad_fraction: float = 0.01
    split: str = "train"
    bad: dict[str, str] = field(default_factory=dict)  # path -> reason, first seen order
    skipped: int = 0  # failed attempts, counting repeats of the same file

    def record(self, failures: Sequence[Failure]) -> None:
        for failure in failures:
            self.skipped += 1
            self.bad.setdefault(failure.path, failure.reason)
        self.check()

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    def check(self) -> None:
        if self.num_bad > self.max_bad_fraction * self.num_videos:
            first = "; ".join(f"{p}: {r}" for p, r in list(self.bad.items())[:5])
            raise DataError(
                f"{self.num_bad} of {self.num_videos} {self.split} videos cannot be decoded "
                f"(more than data.max_bad_fraction={self.max_bad_fraction:g}); first: {first}"
            )

    def summary(self) -> str:
        if not self.bad:
            return f"{self.split}: all videos decoded"
        action = "replaced by random others" if self.split == "train" else "not evaluated"
        first = ", ".join(list(self.bad)[:3])
        return (
            f"{self.split}: {self.num_bad} of {self.num_videos} videos could not be decoded "
            f"({action}; {self.skipped} skips), e.g. {first}"
        )

    def as_dict(self) -> dict:
        return {
            "split": self.split,
            "num_videos": self.num_videos,
            "num_bad": self.num_bad,
            "skipped": self.skipped,
            "bad": dict(self.bad),
        }


# ------------------------------------------------------------------------------ builders
def build_dataset(
    data, split_name: str, multi_view: bool | None = None, annotations: Annotations | None = None
) -> VideoTrainDataset | VideoEvalDataset:
    """The dataset of ``split_name`` ("train" | "val" | "test") described by ``data``
    (a :class:`aptune.config.DataConfig`).

    "train" gives a :class:`VideoTrainDataset`; "val" a :class:`VideoEvalDataset` with
    one centred clip and crop per video (fast, for monitoring); "test" one with
    ``test_num_segment x test_num_crop`` views.  ``multi_view`` overrides that choice
    for "val"/"test".  Annotation errors raise :class:`DataError` right here.
    """
    sampling = resolve_sampling(getattr(data, "sampling", "auto"), data.format)
    if annotations is None:
        annotations = load_annotations(data.format, data.root, split_name, data.split, data.annotations)
    threads = getattr(data, "decode_threads", 0) or default_decode_threads(data.num_workers)
    decoder = getattr(data, "decoder", "pyav")
    check_decoder(decoder)  # a missing optional backend fails here, in one line, not in a worker
    common = dict(
        decoder=decoder,
        num_frames=data.num_frames,
        sampling_rate=data.sampling_rate,
        sampling=sampling,
        decode_threads=threads,
        class_names=annotations.class_names,
        video_cache=shared_video_cache(getattr(data, "video_cache_mb", 0)),
    )
    if split_name == "train":
        flip = data.horizontal_flip if data.horizontal_flip is not None else data.format != "ssv2"
        transform = TrainTransform(
            data.input_size,
            data.rand_augment,
            flip,
            scale=tuple(getattr(data, "crop_scale", (0.08, 1.0))),
            random_erase=getattr(data, "random_erase", 0.0),
        )
        return VideoTrainDataset(
            annotations.samples,
            transform=transform,
            num_sample=data.num_sample,
            augment_on=getattr(data, "augment_on", "cpu"),
            **common,
        )
    if multi_view is None:
        multi_view = split_name == "test"
    segments, crops = (data.test_num_segment, data.test_num_crop) if multi_view else (1, 1)
    transform = TestTransform(data.input_size, data.short_side_size, crops)
    return VideoEvalDataset(annotations.samples, transform=transform, num_segments=segments, **common)


def build_loader(
    dataset: VideoTrainDataset | VideoEvalDataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool | None = None,
    sampler: Sampler | None = None,
    drop_last: bool | None = None,
    seed: int | None = None,
) -> DataLoader:
    """A DataLoader with the right collate function.  Training shuffles and drops the
    last partial batch by default; evaluation keeps the order (views of one video stay
    together).  Give a ``sampler`` (e.g. DistributedSampler) to override shuffling."""
    train = isinstance(dataset, VideoTrainDataset)
    if shuffle is None:
        shuffle = train and sampler is None
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=dataset.collate_fn if train else collate_eval,
        drop_last=train if drop_last is None else drop_last,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
