"""Video data: annotation formats, PyAV decoding, clip sampling, transforms, datasets.

The engine needs only::

    from aptune.data import build_dataset, build_loader, BadVideoLog

    train_set = build_dataset(config.data, "train")       # VideoTrainDataset
    test_set = build_dataset(config.data, "test")         # VideoEvalDataset, multi-view
    loader = build_loader(train_set, batch_size, num_workers)
    log = BadVideoLog(len(train_set), config.data.max_bad_fraction, "train")
    for batch in loader:                                   # TrainBatch(clips, labels, failures)
        log.record(batch.failures)
"""

from aptune.data.annotations import SPLIT_NAMES, Annotations, Sample, load_annotations
from aptune.data.datasets import (
    BadVideoLog,
    EvalBatch,
    EvalItem,
    Failure,
    TrainBatch,
    TrainItem,
    VideoEvalDataset,
    VideoTrainDataset,
    build_dataset,
    build_loader,
    collate_eval,
    collate_train,
)
from aptune.data.decode import DecodeError, VideoInfo, open_video, probe_video, read_frames
from aptune.data.sampling import clip_indices, resolve_sampling
from aptune.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TestTransform, TrainTransform

__all__ = [
    "SPLIT_NAMES",
    "Annotations",
    "Sample",
    "load_annotations",
    "BadVideoLog",
    "EvalBatch",
    "EvalItem",
    "Failure",
    "TrainBatch",
    "TrainItem",
    "VideoEvalDataset",
    "VideoTrainDataset",
    "build_dataset",
    "build_loader",
    "collate_eval",
    "collate_train",
    "DecodeError",
    "VideoInfo",
    "open_video",
    "probe_video",
    "read_frames",
    "clip_indices",
    "resolve_sampling",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TestTransform",
    "TrainTransform",
]
