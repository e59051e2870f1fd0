"""Evaluation of a saved adapter and predictions on video files (``aptune eval`` / ``predict``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from aptune.adapters import model_from_adapter, printable, read_adapter
from aptune.config import Config
from aptune.data import Sample, VideoEvalDataset, build_loader
from aptune.data.transforms import TestTransform
from aptune.engine import distributed as dist_utils
from aptune.engine.evaluate import evaluate, write_final_outputs
from aptune.engine.loaders import VideoShardSampler, build_eval_data
from aptune.engine.metrics import MetricsLog
from aptune.engine.runfolder import METRICS_LOG_NAME
from aptune.engine.runtime import pick_device
from aptune.errors import CheckpointError, ConfigError
from aptune.fileio import make_folder

log = logging.getLogger(__name__)


def load_tuned_model(
    adapter: str | Path, pretrained: str | Path | None, device: torch.device, *, allow_backbone_mismatch: bool = False
):
    """The model an adapter belongs to, on ``device`` in eval mode.

    ``allow_backbone_mismatch``: accept ``pretrained`` weights whose fingerprint differs from
    the one the adapter was trained on (a warning instead of an error).
    """
    _, meta = read_adapter(adapter)
    method = meta["method"]["name"]
    if pretrained is None and method != "full":
        raise CheckpointError(
            f"{adapter}: a '{method}' adapter holds only its trained tensors; give the backbone it was "
            "trained on with --pretrained (or model.pretrained in the config)"
        )
    model = model_from_adapter(adapter, pretrained=pretrained, allow_backbone_mismatch=allow_backbone_mismatch)
    return model.to(device).eval()


def evaluate_adapter(
    config: Config,
    adapter: str | Path,
    pretrained: str | Path | None = None,
    split: str = "test",
    output_dir: Path | None = None,
    *,
    allow_backbone_mismatch: bool = False,
) -> dict[str, Any]:
    """Multi-view evaluation of ``adapter`` on the config's data; writes outputs when asked.

    With no video decoded, top1/top5 are NaN here and null in ``metrics.json``.
    """
    info = dist_utils.init_distributed(config.train.device)
    try:
        device = pick_device(config.train.device, info)
        model = load_tuned_model(
            adapter, pretrained or config.model.pretrained, device, allow_backbone_mismatch=allow_backbone_mismatch
        )
        eval_data = build_eval_data(config, split, info, multi_view=True)
        class_names = list(eval_data.dataset.class_names)
        if model.class_names and list(model.class_names) != class_names:
            raise ConfigError(f"{adapter}: adapter classes {_class_sample(model.class_names, class_names)}")
        result = evaluate(
            model, eval_data, device, config.train.precision, model.num_classes, desc=f"{split} (all views)"
        )
        summary = {
            "top1": result["top1"],
            "top5": result["top5"],
            "num_videos": result["num_videos"],
            "skipped_videos": result["skipped_videos"],
            "split": split,
            "method": model.tuning_method.name,
            "epochs": None,
            "train_seconds": None,
        }
        if output_dir is not None and info.is_main:
            make_folder(output_dir)
            records = _records_of(Path(adapter).parent)
            summary = write_final_outputs(model, result, summary, class_names, output_dir, records, config)
        return summary
    finally:
        dist_utils.cleanup()


def _class_sample(adapter_names: list[str], data_names: list[str]) -> str:
    """Where two class lists first differ, names escaped for the terminal."""
    if len(adapter_names) != len(data_names):
        return (
            f"({len(adapter_names)}, e.g. '{printable(adapter_names[0])}') differ from the data's "
            f"({len(data_names)}, e.g. '{printable(data_names[0]) if data_names else ''}')"
        )
    index = next(i for i, (a, b) in enumerate(zip(adapter_names, data_names)) if a != b)
    return (
        f"differ from the data's: class {index} is '{printable(adapter_names[index])}' in the adapter, "
        f"'{printable(data_names[index])}' in the data"
    )


def _records_of(run_dir: Path) -> list[dict]:
    return MetricsLog(run_dir / METRICS_LOG_NAME).read()


@torch.no_grad()
def predict_videos(
    model, paths: list[str], preprocess: dict[str, Any], device: torch.device, top_k: int = 5, batch_size: int = 8
) -> list[dict[str, Any]]:
    """Top-k class names with probabilities per video, views averaged as in evaluation."""
    return predict_videos_for({"": model}, paths, preprocess, device, top_k, batch_size)[""]


def clip_reading(preprocess: dict[str, Any] | None, source: str | Path) -> dict[str, Any]:
    """The settings that decide which frames and pixels a model sees, with defaults filled
    in; adapters with equal readings can share one decode."""
    preprocess = preprocess or {}
    missing = [k for k in ("num_frames", "sampling_rate", "input_size", "short_side_size") if k not in preprocess]
    if missing:
        raise CheckpointError(
            f"{source}: adapter header 'preprocess' lacks '{missing[0]}' "
            "(needed to read videos the way the model was trained)"
        )
    return {
        "num_frames": preprocess["num_frames"],
        "sampling_rate": preprocess["sampling_rate"],
        "sampling": preprocess.get("sampling", "dense"),
        "input_size": preprocess["input_size"],
        "short_side_size": preprocess["short_side_size"],
        "test_num_segment": preprocess.get("test_num_segment", 1),
        "test_num_crop": preprocess.get("test_num_crop", 1),
    }


@torch.no_grad()
def predict_videos_for(
    models: Mapping[str, torch.nn.Module],
    paths: list[str],
    preprocess: dict[str, Any],
    device: torch.device,
    top_k: int = 5,
    batch_size: int = 8,
) -> dict[str, list[dict[str, Any]]]:
    """:func:`predict_videos` for several models that read clips the same way (one
    ``preprocess``): every video is decoded once and its views go through each model.

    A video none of whose views decoded gets ``{"video": ..., "error": reason}``; class
    names are returned exactly as stored (escape them with :func:`aptune.adapters.printable`
    before printing).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")

    transform = TestTransform(
        preprocess["input_size"], preprocess["short_side_size"], preprocess.get("test_num_crop", 1)
    )
    dataset = VideoEvalDataset(
        [Sample(str(p), 0) for p in paths],
        num_frames=preprocess["num_frames"],
        sampling_rate=preprocess["sampling_rate"],
        sampling=preprocess.get("sampling", "dense"),
        transform=transform,
        num_segments=preprocess.get("test_num_segment", 1),
    )
    views = dataset.views_per_video
    loader = build_loader(dataset, views * max(1, batch_size // views), sampler=VideoShardSampler(len(paths), views))
    sums = {name: torch.zeros(len(paths), model.num_classes, dtype=torch.float64) for name, model in models.items()}
    counts = torch.zeros(len(paths))
    errors: dict[int, str] = {}
    for batch in loader:
        for failure in batch.failures:
            errors[failure.video_index] = failure.reason
        if batch.clips.shape[0]:
            clips = batch.clips.to(device)
            for name, model in models.items():
                probs = model(clips).float().softmax(-1).cpu().double()
                sums[name].index_add_(0, batch.video_indices, probs)
            counts.index_add_(0, batch.video_indices, torch.ones(len(batch.video_indices)))
    return {name: _top_k_answers(paths, sums[name], counts, errors, model, top_k) for name, model in models.items()}


def _top_k_answers(
    paths, sums: torch.Tensor, counts: torch.Tensor, errors: dict[int, str], model, top_k: int
) -> list[dict[str, Any]]:
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    results = []
    for index, path in enumerate(paths):
        if counts[index] == 0:
            results.append({"video": str(path), "error": errors.get(index, "no view decoded")})
            continue
        probs = (sums[index] / counts[index]).float()
        top = probs.topk(min(top_k, len(names)))
        results.append(
            {
                "video": str(path),
                "top": [
                    {"class": names[i], "index": int(i), "probability": round(float(p), 6)}
                    for p, i in zip(top.values, top.indices)
                ],
            }
        )
    return results
