"""Videos built to break a reader: an input that cannot seek (raw H.264), frames that change
size mid-stream, an absurd aspect ratio, huge frames, and any error class FFmpeg, the OS
or NumPy can raise.  Each is used (decoded from its start, resized to the clip's size) or
is a counted bad video with a reason, in the decoder, the datasets, ``aptune data check``
and ``aptune train`` / ``eval`` / ``predict`` -- never a traceback."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from videos import counter_frames, make_counter_video, read_counter

from aptune.cli import main
from aptune.config import DataConfig
from aptune.data import decode as decode_module
from aptune.data.datasets import BadVideoLog, build_dataset, build_loader
from aptune.data.decode import MAX_ASPECT_RATIO, DecodeError, open_video, probe_video, read_frames
from aptune.data.synth import write_video


def _indices(frames) -> list[int]:
    return [read_counter(frame.numpy()) for frame in frames]


def write_raw_h264(path: Path, frames: np.ndarray, gop: int = 6) -> Path:
    """A raw H.264 elementary stream: no container, no timestamps, no index; FFmpeg reads
    it but refuses to seek in it."""
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_size_changing_h264(path: Path) -> Path:
    """40 counter frames of 32x48, then 20 of 48x64: two raw streams back to back."""
    first = write_raw_h264(path.with_suffix(".a.h264"), counter_frames(40, (32, 48)))
    second = write_raw_h264(path.with_suffix(".b.h264"), counter_frames(60, (48, 64))[40:])
    path.write_bytes(first.read_bytes() + second.read_bytes())
    return path


def write_size_changing_mjpeg(path: Path) -> Path:
    """MJPEG in Matroska, seekable and timestamped: frames 0-19 are 32x48, 20-39 are 48x64.
    Each JPEG is self-contained, so the stream may change size at any frame."""
    time_base = Fraction(1, 25)
    frames = {(32, 48): counter_frames(40, (32, 48)), (48, 64): counter_frames(40, (48, 64))}
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuvj420p"
        stream.time_base = time_base
        for size, first in (((32, 48), 0), ((48, 64), 20)):
            encoder = av.CodecContext.create("mjpeg", "w")
            encoder.height, encoder.width = size
            encoder.pix_fmt, encoder.time_base = "yuvj420p", time_base
            for index in range(first, first + 20):
                image = av.VideoFrame.from_ndarray(frames[size][index], format="rgb24")
                image = image.reformat(format="yuvj420p")
                image.pts, image.time_base = index, time_base
                for packet in encoder.encode(image):
                    packet.stream, packet.pts, packet.dts = stream, index, index
                    packet.time_base = time_base
                    container.mux(packet)
            for packet in encoder.encode():
                packet.stream = stream
                container.mux(packet)
    return path


def write_extreme_aspect(path: Path, height: int = 16, width: int = 4000, frames: int = 16) -> Path:
    rng = np.random.default_rng(0)
    write_video(path, rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    return {
        "raw": write_raw_h264(folder / "raw.h264", counter_frames(40)),
        "raw_sizes": write_size_changing_h264(folder / "sizes.h264"),
        "mjpeg_sizes": write_size_changing_mjpeg(folder / "sizes.mkv"),
        "wide": write_extreme_aspect(folder / "wide.mp4"),
    }


# ------------------------------------------------------------------- unseekable input
def test_raw_h264_cannot_seek_in_ffmpeg(hostile):
    """The premise: seeking a raw elementary stream raises (av.error.PermissionError today)."""
    with av.open(str(hostile["raw"])) as container:
        stream = container.streams.video[0]
        assert stream.frames == 0 and stream.duration is None  # nothing to count frames with
        with pytest.raises((av.FFmpegError, OSError)):
            container.seek(0, stream=stream, backward=True)


def test_unseekable_stream_is_counted_and_decoded_from_its_start(hostile):
    with open_video(hostile["raw"]) as video:
        assert video.num_frames == 40  # counted by demuxing, then the file is reopened
        assert _indices(video.get_frames(range(20, 30))) == list(range(20, 30))
        # the same reader goes back for earlier frames by reopening the file
        assert _indices(video.get_frames([0, 5, 39, 5])) == [0, 5, 39, 5]
        assert video.info().num_frames == 40
    assert _indices(read_frames(hostile["raw"], [37, 3])) == [37, 3]


class _FailingSeeks:
    """A container whose seek raises ``error``; everything else is the real container's."""

    def __init__(self, container, error: Exception):
        self._container, self._error = container, error

    def seek(self, *args, **kwargs):
        raise self._error

    def __getattr__(self, name):
        return getattr(self._container, name)


@pytest.mark.parametrize(
    "error",
    [
        av.error.PermissionError(1, "Operation not permitted"),
        av.error.InvalidDataError(1094995529, "Invalid data found when processing input"),
        av.error.OSError(5, "Input/output error"),
        OSError(29, "Illegal seek"),
    ],
    ids=lambda e: type(e).__module__ + "." + type(e).__name__,
)
def test_a_failing_seek_of_any_ffmpeg_or_os_class_falls_back_to_the_start(tmp_path, monkeypatch, error):
    path = make_counter_video(tmp_path / "c.mp4", 30, gop=5)
    real_open = av.open
    monkeypatch.setattr(decode_module.av, "open", lambda *a, **k: _FailingSeeks(real_open(*a, **k), error))
    with open_video(path) as video:
        assert video.num_frames == 30
        assert _indices(video.get_frames(range(12, 18))) == list(range(12, 18))
        assert _indices(video.get_frames([2, 29])) == [2, 29]


class _Boom:
    def __init__(self, error: BaseException):
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error


ERRORS = [
    av.error.PermissionError(1, "Operation not permitted"),
    av.error.InvalidDataError(1094995529, "Invalid data found when processing input"),
    av.error.EOFError(541478725, "End of file"),
    OSError(5, "Input/output error"),
    ValueError("all input arrays must have the same shape"),
    RuntimeError("something inside"),
    MemoryError(),
    OverflowError("cannot convert float infinity to integer"),
    ZeroDivisionError("division by zero"),
    KeyError("missing"),
    IndexError("list index out of range"),
    TypeError("unsupported operand"),
    AttributeError("no attribute"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("stage", ["open", "count", "decode", "convert"])
def test_every_error_class_at_every_stage_is_a_decode_error(tmp_path, monkeypatch, stage, error):
    path = make_counter_video(tmp_path / "c.avi", 20, gop=5)
    if stage == "open":
        monkeypatch.setattr(decode_module.av, "open", _Boom(error))
    elif stage == "count":
        monkeypatch.setattr(decode_module.VideoReader, "_frame_count", _Boom(error))
    elif stage == "decode":
        monkeypatch.setattr(decode_module.VideoReader, "_decode", _Boom(error))
    else:
        monkeypatch.setattr(decode_module, "_reformatter", _Boom(error))
    with pytest.raises(DecodeError) as info, open_video(path) as video:
        count = video.num_frames
        video.get_frames(range(count - 4, count))
    message = str(info.value)
    assert "\n" not in message and len(message) < 200
    expected = {"open": "cannot open", "count": "cannot count frames"}.get(stage, "decode error")
    assert message.startswith(expected), message


def test_decode_error_reasons_are_short_and_name_the_cause(tmp_path):
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    with pytest.raises(DecodeError, match="a folder, not a video file"):
        open_video(folder)
    pipe = tmp_path / "pipe.mp4"
    os.mkfifo(pipe)  # nobody writes to it: opening it to read would wait forever
    with pytest.raises(DecodeError, match="not a regular file"):
        open_video(pipe)
    text = tmp_path / "text.mp4"
    text.write_text("not a video\n" * 40)
    with pytest.raises(DecodeError) as info:
        open_video(text)
    assert str(info.value) == "cannot open (Invalid data found when processing input)"


# ------------------------------------------------------------------ size changes
@pytest.mark.parametrize("kind", ["raw_sizes", "mjpeg_sizes"])
def test_frames_that_change_size_are_resized_to_the_clip_size(hostile, kind):
    path = hostile[kind]
    with open_video(path) as video:
        count = video.num_frames
        frames = video.get_frames(range(count))
    assert count in (40, 60)
    assert frames.shape == (count, 32, 48, 3)  # the first frame's size, for every frame
    assert _indices(frames) == list(range(count))  # resized, not garbled or dropped
    assert probe_video(path).height == 32 and probe_video(path).width == 48


def test_a_clip_that_starts_after_the_size_change_has_one_size(hostile):
    with open_video(hostile["mjpeg_sizes"]) as video:  # seekable: starts near frame 25
        frames = video.get_frames([35, 25, 30, 18])
    assert frames.shape[1:] == (32, 48, 3) or frames.shape[1:] == (48, 64, 3)
    assert _indices(frames) == [35, 25, 30, 18]


def _list_dataset(root: Path, videos: list[Path], labels: list[int] | None = None) -> Path:
    labels = labels or [i % 2 for i in range(len(videos))]
    lines = "".join(f"{path} {label}\n" for path, label in zip(videos, labels))
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_text(lines)
    (root / "classes.txt").write_text("even\nodd\n")
    return root


def _config(root: Path, **overrides) -> DataConfig:
    values = dict(
        format="list",
        root=str(root),
        num_frames=4,
        sampling_rate=2,
        input_size=24,
        short_side_size=28,
        num_sample=1,
        test_num_segment=2,
        test_num_crop=3,
        num_workers=0,
        decode_threads=1,
        max_bad_fraction=0.5,
    )
    values.update(overrides)
    return DataConfig(**values)


def test_evaluation_stacks_videos_whose_frames_change_size(hostile, tmp_path):
    root = _list_dataset(tmp_path, [hostile["raw"], hostile["raw_sizes"], hostile["mjpeg_sizes"]])
    dataset = build_dataset(_config(root), "test")
    log = BadVideoLog(len(dataset.samples), 0.0, "test")
    views = 0
    for batch in build_loader(dataset, batch_size=dataset.views_per_video):
        log.record(batch.failures)  # max_bad_fraction 0: any failure would raise
        assert batch.clips.shape == (6, 3, 4, 24, 24)
        views += batch.clips.shape[0]
    assert views == 3 * 6 and log.num_bad == 0


def test_training_uses_unseekable_and_size_changing_videos(hostile, tmp_path):
    root = _list_dataset(tmp_path, [hostile["raw"], hostile["raw_sizes"], hostile["mjpeg_sizes"]])
    dataset = build_dataset(_config(root), "train")
    for index in range(len(dataset)):
        for _ in range(3):  # random windows, including ones after the size change
            item = dataset[index]
            assert item.failures == () and item.clips.shape == (1, 3, 4, 24, 24)


# --------------------------------------------------------------- memory bounds
def test_extreme_aspect_ratio_is_refused_with_a_reason(hostile):
    with pytest.raises(DecodeError, match=r"aspect ratio 250:1 \(4000x16\) beyond 10:1"):
        open_video(hostile["wide"])
    # a caller that knows what it does can lift the bound
    frames = read_frames(hostile["wide"], [0, 1], max_aspect_ratio=None)
    assert frames.shape == (2, 16, 4000, 3)


def test_extreme_aspect_video_is_a_counted_bad_video_not_gigabytes(hostile, tmp_path):
    """The 4000x16 video once took 3.5 GB in evaluation (its short side resized to 224
    makes 224x56000 frames); now it is reported and no tensor is ever built for it."""
    good = make_counter_video(tmp_path / "good.avi", 20, size=(32, 48))
    root = _list_dataset(tmp_path, [good, hostile["wide"]])
    config = _config(root, input_size=224, short_side_size=224)
    test = build_dataset(config, "test")
    log = BadVideoLog(len(test.samples), 0.5, "test")
    largest = 0
    for batch in build_loader(test, batch_size=test.views_per_video):
        log.record(batch.failures)
        largest = max(largest, batch.clips.numel())
    assert log.num_bad == 1 and "aspect ratio" in log.bad[str(hostile["wide"])]
    assert largest == 6 * 3 * 4 * 224 * 224  # only the good video's views were built
    cached = test._cache[1]
    assert not isinstance(cached, list) or all(c.numel() <= 3 * 4 * 224 * 2240 for c in cached)
    train = build_dataset(config, "train")
    item = train[1]  # the wide video: replaced by the good one, and counted
    assert [f.path for f in item.failures] == [str(hostile["wide"])]
    assert item.clips.shape == (1, 3, 4, 224, 224)


def test_the_widest_accepted_video_stays_within_the_bound(tmp_path):
    path = write_extreme_aspect(tmp_path / "ten.mp4", height=16, width=160, frames=8)
    dataset = build_dataset(_config(_list_dataset(tmp_path, [path]), input_size=224, short_side_size=224), "test")
    item = dataset[0]
    assert item.failure is None and item.clip.shape == (3, 4, 224, 224)
    segments = dataset._cache[1]
    assert all(tuple(s.shape) == (4, 3, 224, 2240) for s in segments)  # 10:1 at most
    assert MAX_ASPECT_RATIO == 10


def test_large_frames_are_scaled_down_while_decoding(tmp_path):
    path = make_counter_video(tmp_path / "big.mp4", 6, size=(240, 320))
    frames = read_frames(path, [0, 5], max_short_side=60)
    assert frames.shape == (2, 60, 80, 3)
    assert _indices(frames) == [0, 5]
    with open_video(path, max_short_side=60) as video:
        video.get_frames([0])
        assert (video.info().height, video.info().width) == (240, 320)  # the file's own size
    # datasets decode at most 4x the size they need
    dataset = build_dataset(_config(_list_dataset(tmp_path, [path]), input_size=8, short_side_size=10), "test")
    assert dataset.max_short_side == 40
    frames = read_frames(path, [0], max_short_side=dataset.max_short_side)
    assert frames.shape == (1, 40, 53, 3)
    assert dataset[0].clip.shape == (3, 4, 8, 8)


# ------------------------------------------------------------ the commands
def test_data_check_counts_and_uses_hostile_videos(hostile, tmp_path, capsys):
    root = _list_dataset(tmp_path, [hostile["raw"], hostile["raw_sizes"], hostile["mjpeg_sizes"], hostile["wide"]])
    report = tmp_path / "report.json"
    status = main(
        [
            "data",
            "check",
            "--set",
            "data.format=list",
            "--set",
            f"data.root={root}",
            "--set",
            "data.max_bad_fraction=0.2",
            "--set",
            "data.num_workers=0",
            "--json",
            str(report),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    summary = json.loads(report.read_text())
    assert (summary["ok"], summary["unreadable"]) == (3, 1)
    assert "aspect ratio" in summary["unreadable_files"][str(hostile["wide"])]
    assert status == 1 and "NOT usable" in out  # 1 of 4 bad per split is past 20 %
    assert summary["splits"]["train"]["bad"] == 1 and summary["splits"]["train"]["usable"] is False


def test_train_eval_predict_survive_hostile_videos(hostile, tmp_path, capsys):
    good = [make_counter_video(tmp_path / f"good{i}.avi", 16, size=(32, 32)) for i in range(4)]
    root = _list_dataset(
        tmp_path, good + [hostile["raw"], hostile["raw_sizes"], hostile["mjpeg_sizes"], hostile["wide"]]
    )
    config = {
        "model": {
            "arch": None,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 4,
            "num_frames": 4,
            "img_size": 32,
            "patch_size": 16,
        },
        "method": {"name": "apt", "num_prompts": 2, "prompt_dropout": 0.0},
        "data": {
            "format": "list",
            "root": str(root),
            "num_frames": 4,
            "sampling_rate": 2,
            "input_size": 32,
            "short_side_size": 32,
            "num_workers": 0,
            "num_sample": 1,
            "test_num_segment": 2,
            "test_num_crop": 3,
            "rand_augment": None,
            "max_bad_fraction": 0.2,
        },
        "optim": {"lr": 0.01, "warmup_epochs": 0},
        "train": {"epochs": 1, "batch_size": 4, "eval_every": 1, "save_every": 1, "log_every": 1},
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--output-dir", str(run)]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["num_videos"], metrics["skipped_videos"]) == (7, 1)  # only the wide one
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--json", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert (evaluated["num_videos"], evaluated["skipped_videos"]) == (7, 1)
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                str(hostile["raw_sizes"]),
                str(hostile["mjpeg_sizes"]),
                str(hostile["raw"]),
                str(hostile["wide"]),
                "--run",
                str(run),
                "--json",
            ]
        )
        == 0
    )
    answers = json.loads(capsys.readouterr().out)
    assert [("top" in a) for a in answers] == [True, True, True, False]
    assert "aspect ratio" in answers[3]["error"]
    assert torch.isfinite(torch.tensor([t["probability"] for t in answers[0]["top"]])).all()
