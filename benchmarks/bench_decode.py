"""Decoding and augmentation throughput of aptune's video pipeline, per worker.

Writes synthetic H.264 videos (320x240, 25 fps, 4 s) with a short GOP (keyframe every
12 frames) and a long GOP (one keyframe per file), then measures clips per second in
one process (= one DataLoader worker) for:

* ``decode``        training clips (16 frames, every 4th, 4 random windows per video), decoder threads 1 and 2
* ``decode_naive``  the same frames decoded from the start of the file (no seek), for reference
* ``train``         decode + random resized crop + flip + RandAugment to 224, ``num_sample`` 1 and 2
* ``test``          5 segments x 3 crops (one decode per video), reported per video and per view
* ``decord``        decord's ``get_batch`` on the same indices, if decord imports
* ``torchcodec``    aptune's torchcodec reader (``data.decoder: torchcodec``) on the same indices, if
                    torchcodec loads (``pip install aptune[torchcodec]``; each release needs its torch)

decord and torchcodec need not be in the environment that runs aptune: a virtual
environment made with ``--system-site-packages`` (so it sees this torch) can hold them.

Usage:  python benchmarks/bench_decode.py [--videos 8] [--repeats 3] [--out benchmarks/results/decode.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from aptune.data.datasets import VideoEvalDataset, VideoTrainDataset
from aptune.data.decode import check_decoder, open_video
from aptune.data.sampling import dense_train_indices
from aptune.data.synth import render_motion_video, write_video
from aptune.data.transforms import TestTransform, TrainTransform
from aptune.errors import ConfigError

NUM_FRAMES, SAMPLING_RATE = 16, 4


def make_videos(folder: Path, count: int, gop: int, frames: int, size: tuple[int, int]) -> list[str]:
    paths = []
    for index in range(count):
        path = folder / f"gop{gop}_{index}.mp4"
        if not path.exists():
            video = render_motion_video("right", frames, size, np.random.default_rng(index))
            write_video(path, video, fps=25, gop=gop)
        paths.append(str(path))
    return paths


def rate(fn, items: int, repeats: int) -> float:
    """Best-of-``repeats`` items per second of ``fn`` (best: least disturbed by the OS)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return items / best


def interleaved(methods: dict, items: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` rates, measured in rounds that run every method once, so that a
    slow spell of a shared machine hits all methods alike."""
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: items / seconds for name, seconds in best.items()}


def training_windows(paths, frames: int, per_video: int = 4, seed: int = 0) -> list[tuple[str, list[int]]]:
    """The same random training windows for every decoder, so they are compared fairly."""
    torch.manual_seed(seed)
    return [(p, dense_train_indices(frames, NUM_FRAMES, SAMPLING_RATE)) for p in paths for _ in range(per_video)]


def bench_decode(windows, threads, decoder: str = "pyav"):
    def run():
        for path, indices in windows:
            with open_video(path, threads, decoder=decoder) as video:
                video.get_frames(indices)

    return run


def torchcodec_status() -> str:
    try:
        check_decoder("torchcodec")
    except ConfigError as exc:
        return f"not available ({exc})"
    return "available"


def bench_naive(windows):
    """Decode from frame 0 up to the last needed frame, converting only the needed ones."""

    def run():
        for path, indices in windows:
            with av.open(path) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_count = 1  # one thread, like decode_threads1
                wanted, last = set(indices), max(indices)
                for index, frame in enumerate(container.decode(stream)):
                    if index in wanted:
                        frame.to_ndarray(format="rgb24")
                    if index >= last:
                        break

    return run


def bench_decord(windows, threads):
    import decord

    def run():
        for path, indices in windows:
            reader = decord.VideoReader(path, num_threads=threads)
            reader.get_batch(indices).asnumpy()
            del reader

    return run


def bench_train(paths, num_sample, repeats):
    samples = [(p, 0) for p in paths]
    dataset = VideoTrainDataset(
        samples,
        num_frames=NUM_FRAMES,
        sampling_rate=SAMPLING_RATE,
        transform=TrainTransform(224, "rand-m4-n2-mstd0.2-inc1", True),
        num_sample=num_sample,
        decode_threads=1,
    )

    def run():
        torch.manual_seed(0)
        for index in range(len(dataset)):
            dataset[index]

    return rate(run, len(paths), repeats)


def bench_test(paths, repeats):
    dataset = VideoEvalDataset(
        [(p, 0) for p in paths],
        num_frames=NUM_FRAMES,
        sampling_rate=SAMPLING_RATE,
        transform=TestTransform(224, 224, 3),
        num_segments=5,
        decode_threads=1,
    )

    def run():
        dataset._cache = None
        for index in range(len(dataset)):
            dataset[index]

    videos_per_second = rate(run, len(paths), repeats)
    return videos_per_second, videos_per_second * dataset.views_per_video


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "av": av.__version__,
        "ffmpeg": ".".join(str(v) for v in av.ffmpeg_version_info[:1]) if hasattr(av, "ffmpeg_version_info") else "",
        **backend_versions(),
    }


def backend_versions() -> dict:
    """The other decoders' versions (each brings its own FFmpeg; torchcodec uses the system's)."""
    versions = {}
    for name in ("decord", "torchcodec"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or unloadable: reported in "decord"/"torchcodec"
            continue
    if "torchcodec" in versions:
        try:
            from torchcodec._core import get_ffmpeg_library_versions

            versions["torchcodec_ffmpeg"] = get_ffmpeg_library_versions().get("ffmpeg_version", "")
        except Exception:  # noqa: BLE001 - a private helper: its absence only loses a label
            pass
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8, help="videos per GOP setting")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=100, help="frames per video (25 fps)")
    parser.add_argument("--size", default="240x320", help="HxW of the videos")
    parser.add_argument("--cache", default=None, help="folder for the videos (default: a temp dir)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker = one core for the transforms, as in a DataLoader worker
    height, width = (int(v) for v in args.size.split("x"))
    folder = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="aptune_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import decord  # noqa: F401

        decord_status = "available"
    except ImportError as exc:
        decord_status = f"not available ({exc})"

    codec_status = torchcodec_status()
    results = []
    for label, gop in (("short GOP (12)", 12), ("long GOP (one keyframe)", 10_000)):
        paths = make_videos(folder, args.videos, gop, args.frames, (height, width))
        windows = training_windows(paths, args.frames)
        row = {"gop": label, "keyframe_interval": gop}
        methods = {}
        for threads in (1, 2):
            methods[f"decode_threads{threads}"] = bench_decode(windows, threads)
            if decord_status == "available":
                methods[f"decord_get_batch_threads{threads}"] = bench_decord(windows, threads)
            if codec_status == "available":
                methods[f"torchcodec_threads{threads}"] = bench_decode(windows, threads, "torchcodec")
        methods["decode_naive_from_start"] = bench_naive(windows)
        row.update(interleaved(methods, len(windows), args.repeats))
        if decord_status == "available":
            row["ratio_ours_to_decord_threads1"] = row["decode_threads1"] / row["decord_get_batch_threads1"]
        row["train_num_sample1"] = bench_train(paths, 1, args.repeats)
        row["train_num_sample2"] = bench_train(paths, 2, args.repeats)
        row["test_videos"], row["test_views"] = bench_test(paths, args.repeats)
        row = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
        results.append(row)
        print(json.dumps(row))

    report = {
        "date": subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip(),
        "machine": machine(),
        "unit": "clips per second in one process (one worker), best of repeats",
        "videos": {
            "count_per_gop": args.videos,
            "frames": args.frames,
            "fps": 25,
            "size": f"{width}x{height}",
            "codec": "H.264 (libx264 veryfast, crf 18)",
        },
        "clip": {
            "num_frames": NUM_FRAMES,
            "sampling_rate": SAMPLING_RATE,
            "input_size": 224,
            "rand_augment": "rand-m4-n2-mstd0.2-inc1",
            "test": "5 segments x 3 crops, short side 224",
        },
        "decord": decord_status,
        "torchcodec": codec_status,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
