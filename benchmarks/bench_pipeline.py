"""CPU time per training clip: augmenting in the loader workers (``data.augment_on: cpu``)
against augmenting on the training device (``data.augment_on: device``).

Writes synthetic H.264 videos (320x240 by default, the size of UCF101 and HMDB51, 25 fps,
keyframe every 12 frames), then, in this one process with one torch thread and one
decoder thread (what one DataLoader worker has), measures the CPU time
(``time.process_time``) of making 16x224x224 training clips with RandAugment
``rand-m4-n2-mstd0.2-inc1``, random resized crop and flip, ``num_sample`` clips per decoded
video (the recipes' 2 by default):

* ``cpu_augment``: the worker decodes, augments each clip and collates float clips;
* ``device_augment``: the worker decodes, draws the choices and collates uint8 frames; the
  main process carries the choices out for the whole batch with
  :class:`aptune.data.batch_augment.BatchAugment` on ``--device``.  On the CPU the device
  is this CPU, so its time is counted too: ``worker + main``.  With ``--device cuda`` the
  main process's CPU time is what launching the GPU's work costs, and the GPU's own time
  (CUDA events) is reported beside it.

Both paths run in interleaved rounds (a slow spell of a shared machine hits both); each
number is the median over rounds.  ``--workers N[,M]`` also measures the clips per second
that a real DataLoader with N workers delivers on each path (augmented clips on the
device, the loop's view).

Usage: python benchmarks/bench_pipeline.py [--quick] [--json OUT] [--device cpu|cuda]
       [--workers 2,4] [--videos 8] [--size 240x320] [--num-sample 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from aptune.bench import StepTimer, machine_description
from aptune.data.batch_augment import BatchAugment, collate_raw_train
from aptune.data.datasets import VideoTrainDataset, collate_train
from aptune.data.synth import render_motion_video, write_video
from aptune.data.transforms import TrainTransform

SPEC = "rand-m4-n2-mstd0.2-inc1"
NUM_FRAMES, SAMPLING_RATE = 16, 4


def make_videos(folder: Path, count: int, size: tuple[int, int], frames: int = 100, gop: int = 12) -> list[str]:
    """``count`` textured synthetic videos (moving shapes over a noisy background)."""
    paths = []
    for index in range(count):
        path = folder / f"video_{size[0]}x{size[1]}_{index}.mp4"
        if not path.exists():
            rng = np.random.default_rng(index)
            video = render_motion_video("right", frames, size, rng).astype(np.int16)
            grain = rng.integers(-12, 13, size=(1, *size, 3), dtype=np.int16)  # fixed texture: real scenes have detail
            write_video(path, np.clip(video + grain, 0, 255).astype(np.uint8), fps=25, gop=gop)
        paths.append(str(path))
    return paths


def training_set(paths, num_sample: int, augment_on: str, input_size: int, num_frames: int) -> VideoTrainDataset:
    return VideoTrainDataset(
        [(p, 0) for p in paths],
        num_frames=num_frames,
        sampling_rate=SAMPLING_RATE,
        transform=TrainTransform(input_size, SPEC, horizontal_flip=True),
        num_sample=num_sample,
        decode_threads=1,
        augment_on=augment_on,
    )


def one_round(sets: dict, batch: int, device: torch.device, timer: StepTimer) -> dict[str, float]:
    """CPU seconds of every part of one pass over the videos, on both paths (and the device's
    own seconds for the batched augmentation)."""
    videos = len(sets["cpu"])
    augment = BatchAugment(sets["device"].transform.input_size)
    spent = dict.fromkeys(("cpu_worker", "device_worker", "device_main", "device_time"), 0.0)
    for first in range(0, videos, batch):
        indices = range(first, min(videos, first + batch))
        start = time.process_time()
        collate_train([sets["cpu"][i] for i in indices])
        middle = time.process_time()
        raw = collate_raw_train([sets["device"][i] for i in indices])
        end = time.process_time()
        spent["cpu_worker"] += middle - start
        spent["device_worker"] += end - middle
        device_ms = timer(lambda raw=raw: augment(raw, device))
        spent["device_main"] += time.process_time() - end
        spent["device_time"] += device_ms / 1000.0
    return spent


def measure_cpu_ms(paths, num_sample: int, repeats: int, batch: int, device: torch.device, shape: dict) -> dict:
    """Median milliseconds per clip over ``repeats`` rounds (one untimed round first)."""
    sets = {place: training_set(paths, num_sample, place, **shape) for place in ("cpu", "device")}
    timer = StepTimer(device)
    clips = len(paths) * num_sample
    torch.manual_seed(0)
    one_round(sets, batch, device, timer)  # warm-up: file cache, allocator, kernels
    rounds = [one_round(sets, batch, device, timer) for _ in range(repeats)]
    per_clip = {key: statistics.median(r[key] for r in rounds) * 1000.0 / clips for key in rounds[0]}
    device_total = per_clip["device_worker"] + per_clip["device_main"]
    result = {
        "num_sample": num_sample,
        "cpu_ms_per_clip": {"cpu_augment": round(per_clip["cpu_worker"], 2), "device_augment": round(device_total, 2)},
        "breakdown_ms_per_clip": {
            "cpu_augment_worker": round(per_clip["cpu_worker"], 2),
            "device_augment_worker": round(per_clip["device_worker"], 2),
            "device_augment_main_cpu": round(per_clip["device_main"], 2),
            "device_augment_device_time": round(per_clip["device_time"], 3),
        },
        "ratio_cpu_to_device_augment": round(per_clip["cpu_worker"] / device_total, 2),
        "ratio_cpu_augment_to_device_worker": round(per_clip["cpu_worker"] / per_clip["device_worker"], 2),
    }
    return result


def loader_clips_per_second(
    paths, num_sample: int, augment_on: str, workers: int, device: torch.device, batch: int, steps: int, shape: dict
) -> float:
    """Clips per second a DataLoader with ``workers`` delivers, augmented, on ``device``
    (after its first batch, which pays for starting the workers)."""
    dataset = training_set(paths, num_sample, augment_on, **shape)
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch * (steps + 1))
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=dataset.collate_fn,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    augment = BatchAugment(shape["input_size"])
    batches = iter(loader)
    started, clips = None, 0
    for index, batch_data in enumerate(batches):
        clips_on_device = (
            augment(batch_data, device) if augment_on == "device" else batch_data.clips.to(device, non_blocking=True)
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index == 0:
            started = time.perf_counter()
            continue
        clips += clips_on_device.shape[0]
    return round(clips / (time.perf_counter() - started), 2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 videos, 3 rounds: under two minutes on 2 cores")
    parser.add_argument("--json", dest="json_out", help="write the results here")
    parser.add_argument("--device", default="cpu", help="where device_augment runs: cpu, cuda or cuda:N")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="videos per batch")
    parser.add_argument("--num-sample", type=int, default=2, help="clips per decoded video (the recipes' 2)")
    parser.add_argument("--size", default="240x320", help="HxW of the videos")
    parser.add_argument("--workers", default="", help="also measure DataLoader clips/s with these worker counts")
    parser.add_argument("--loader-steps", type=int, default=20, help="batches timed per loader measurement")
    parser.add_argument("--tiny", action="store_true", help="4x32x32 clips of 64x48 videos (a test of the script)")
    parser.add_argument("--cache", help="folder for the videos (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.videos, args.repeats = 6, 3
    device = torch.device(args.device)
    torch.set_num_threads(1)  # one worker = one core, as in a DataLoader worker
    height, width = (int(v) for v in args.size.split("x"))
    shape = {"input_size": 224, "num_frames": NUM_FRAMES}
    if args.tiny:
        (height, width), shape = (48, 64), {"input_size": 32, "num_frames": 4}
    folder = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="aptune_pipeline_"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = make_videos(folder, args.videos, (height, width))
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_description(),
        "python": platform.python_version(),
        "device": str(device),
        "unit": "CPU milliseconds (time.process_time) per training clip, one process = one worker, median of rounds",
        "clip": {
            "num_frames": shape["num_frames"],
            "sampling_rate": SAMPLING_RATE,
            "input_size": shape["input_size"],
            "rand_augment": SPEC,
            "flip": True,
        },
        "videos": {"count": len(paths), "size": f"{width}x{height}", "codec": "H.264, keyframe every 12 frames"},
        "repeats": args.repeats,
        "batch_videos": args.batch,
    }
    result.update(measure_cpu_ms(paths, args.num_sample, args.repeats, args.batch, device, shape))
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    result["loader_clips_per_second"] = {
        place: {
            str(n): loader_clips_per_second(
                paths, args.num_sample, place, n, device, args.batch, args.loader_steps, shape
            )
            for n in workers
        }
        for place in ("cpu", "device")
    }
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
