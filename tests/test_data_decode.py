"""The PyAV decoder: exact frames after seeking, clamping, odd/portrait/rotated/grey/VFR
files, cheap frame counts, and clear errors for files that are not usable videos."""

from __future__ import annotations

import av
import numpy as np
import pytest
from videos import counter_frames, make_counter_video, read_counter

from aptune.data.decode import (
    DecodeError,
    default_decode_threads,
    open_video,
    probe_video,
    read_frames,
)
from aptune.data.synth import write_video


def _indices(frames) -> list[int]:
    return [read_counter(frame.numpy()) for frame in frames]


@pytest.fixture(scope="module")
def counter_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("counter")
    videos = {}
    for extension in ("avi", "mp4", "webm"):
        for gop in (6, 250):  # short GOP, and one keyframe for the whole file
            videos[(extension, gop)] = make_counter_video(folder / f"c{gop}.{extension}", 80, gop=gop)
    return videos


@pytest.mark.parametrize("extension", ["avi", "mp4", "webm"])
@pytest.mark.parametrize("gop", [6, 250])
def test_seeking_gives_exactly_the_frames_of_a_full_decode(counter_videos, extension, gop):
    path = counter_videos[(extension, gop)]
    with open_video(path) as video:
        assert video.num_frames == 80
        full = video.get_frames(range(80))
    assert _indices(full) == list(range(80))
    for first, last in ((0, 15), (37, 52), (64, 79)):
        with open_video(path) as video:
            clip = video.get_frames(range(first, last + 1))
            decoded = video.frames_decoded
        assert _indices(clip) == list(range(first, last + 1))
        assert torch_equal(clip, full[first : last + 1])
        if gop == 6:  # only the GOP before the clip and the clip itself are decoded
            assert decoded <= (last - first + 1) + 6
        else:
            assert decoded <= last + 1  # never past the last needed frame


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_unsorted_and_repeated_indices_and_dtype(counter_videos):
    path = counter_videos[("mp4", 6)]
    frames = read_frames(path, [40, 3, 3, 79, 12])
    assert frames.dtype.is_floating_point is False and str(frames.dtype) == "torch.uint8"
    assert frames.shape == (5, 32, 48, 3)
    assert _indices(frames) == [40, 3, 3, 79, 12]


def test_indices_past_the_end_repeat_the_last_frame(tmp_path):
    path = make_counter_video(tmp_path / "short.mp4", 5, gop=2)
    frames = read_frames(path, [0, 2, 4, 6, 8, 100])
    assert _indices(frames) == [0, 2, 4, 4, 4, 4]


def test_odd_size_portrait_grey(tmp_path):
    odd = tmp_path / "odd.avi"
    write_video(odd, counter_frames(10, (33, 47)))
    frames = read_frames(odd, [0, 9])
    assert frames.shape == (2, 33, 47, 3) and _indices(frames) == [0, 9]
    portrait = tmp_path / "portrait.mp4"
    write_video(portrait, counter_frames(10, (64, 36)))
    assert read_frames(portrait, [5]).shape == (1, 64, 36, 3)
    grey = tmp_path / "grey.avi"
    write_video(grey, counter_frames(10, (32, 48), grey=True))
    frames = read_frames(grey, [2, 7])
    assert frames.shape == (2, 32, 48, 3) and _indices(frames) == [2, 7]
    assert bool((frames[..., 0] == frames[..., 1]).all())


def test_display_rotation_is_applied(tmp_path):
    stored = np.zeros((4, 32, 48, 3), np.uint8)
    stored[:, :8, :12] = 255  # a white block in the top-left corner of the stored picture
    path = tmp_path / "phone.mp4"
    write_video(path, stored, rotation=90)
    info = probe_video(path)
    assert (info.height, info.width, info.rotation) == (48, 32, 90)
    frame = read_frames(path, [1])[0].numpy()
    assert frame.shape == (48, 32, 3)  # portrait as displayed
    bright = np.argwhere(frame[..., 0] > 128)
    # turned 90 degrees counter-clockwise: the top-left block is now bottom-left
    assert bright[:, 0].min() >= 48 - 12 - 1 and bright[:, 1].max() <= 8


@pytest.mark.parametrize("extension", ["mp4", "mkv"])
def test_variable_frame_rate_maps_indices_by_time(tmp_path, extension):
    path = tmp_path / f"vfr.{extension}"
    # frames last 20 ms and 100 ms alternately: timestamps 0, 20, 120, 140, 240, ...
    write_video(path, counter_frames(40), fps=16.67, frame_durations=[0.02, 0.1])
    with open_video(path) as video:
        count, fps = video.num_frames, video.fps
        frames = video.get_frames(range(count))
    assert 38 <= count <= 42 and 15 < fps < 18.5
    got = _indices(frames)
    assert got == sorted(got)  # time order kept
    # grid point i is at i / fps seconds: the nearest frame in time is chosen
    times = np.cumsum([0] + [0.02, 0.1] * 20)[:40]
    expected = [int(np.argmin(np.abs(times - i / fps))) for i in range(count)]
    assert sum(a == b for a, b in zip(got, expected)) >= count - 2
    with open_video(path) as video:  # after a seek, the same frames
        assert _indices(video.get_frames(range(20, 30))) == got[20:30]


def test_frame_count_without_index_is_estimated(tmp_path):
    path = make_counter_video(tmp_path / "c.webm", 30)
    info = probe_video(path)
    assert info.num_frames == 30 and not info.frames_exact  # webm: from duration x rate
    assert info.fps == 25 and (info.height, info.width) == (32, 48)


def _bad_files(tmp_path, counter_avi, counter_webm):
    files = {}
    files["missing"] = tmp_path / "missing.mp4"
    files["zero"] = tmp_path / "zero.mp4"
    files["zero"].write_bytes(b"")
    files["text"] = tmp_path / "text.avi"
    files["text"].write_text("this is not a video\n" * 50)
    for name, source in (("truncated.avi", counter_avi), ("truncated.webm", counter_webm)):
        data = source.read_bytes()
        files[name] = tmp_path / name
        files[name].write_bytes(data[: len(data) // 2])
    files["audio"] = tmp_path / "audio.wav"
    with av.open(str(files["audio"]), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return files


def test_unusable_files_raise_decode_error(tmp_path, counter_videos):
    files = _bad_files(tmp_path, counter_videos[("avi", 250)], counter_videos[("webm", 6)])
    reasons = {}
    for kind, path in files.items():
        with pytest.raises(DecodeError) as info, open_video(path) as video:
            count = video.num_frames
            video.get_frames(range(count - 16, count))
        reasons[kind] = str(info.value)
    assert reasons["missing"] == "file not found"
    assert reasons["zero"] == "empty file (0 bytes)"
    assert reasons["text"].startswith("cannot open")
    assert reasons["truncated.avi"]  # depending on where the cut falls: cannot open / truncated
    # the container still says 80 frames, the stream stops half-way: caught, not padded
    assert "truncated" in reasons["truncated.webm"]
    assert reasons["audio"] == "no video stream"


def test_threads_never_oversubscribe():
    assert default_decode_threads(4, cores=2) == 1
    assert default_decode_threads(0, cores=2) == 2
    assert default_decode_threads(1, cores=8) == 8
    assert default_decode_threads(2, cores=8) == 4
