"""data.decoder: pyav (the default) or torchcodec, an optional extra.

The CI machine has no torchcodec (PyPI's wheel is built for CUDA torch and needs FFmpeg's
shared libraries), so the reader's own logic is tested against a stand-in with
torchcodec's documented interface (``VideoDecoder(path, ...)``, ``.metadata``,
``.get_frames_at(indices=...).data``) that decodes with PyAV; the last tests compare the
real package with PyAV wherever it loads (run with torchcodec 0.17 on torch 2.14.1 and
Debian's FFmpeg 5.1: docs/bench.md).
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import tiny_run_config

from aptune.cli import main as cli_main
from aptune.config import load_config
from aptune.data.datasets import build_dataset
from aptune.data.decode import DecodeError, check_decoder, open_video
from aptune.errors import ConfigError


class StandInDecoder:
    """torchcodec's VideoDecoder interface over PyAV (every frame decoded up front)."""

    calls: list = []

    def __init__(self, path, dimension_order="NCHW", num_ffmpeg_threads=1, seek_mode="exact"):
        assert dimension_order == "NHWC" and seek_mode == "exact" and num_ffmpeg_threads >= 1
        with open_video(path) as reader:
            self.frames = reader.get_frames(range(reader.num_frames))
        self.metadata = SimpleNamespace(
            num_frames=len(self.frames), height=self.frames.shape[1], width=self.frames.shape[2]
        )

    def get_frames_at(self, indices):
        StandInDecoder.calls.append(list(indices))
        if max(indices) >= len(self.frames):
            raise IndexError(f"Invalid frame index={max(indices)}")
        return SimpleNamespace(data=self.frames[torch.tensor(indices)])


@pytest.fixture
def stand_in(monkeypatch):
    package = types.ModuleType("torchcodec")
    decoders = types.ModuleType("torchcodec.decoders")
    decoders.VideoDecoder = StandInDecoder
    package.decoders = decoders
    monkeypatch.setitem(sys.modules, "torchcodec", package)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", decoders)
    StandInDecoder.calls = []


@pytest.fixture
def no_torchcodec(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)


def test_a_missing_torchcodec_is_a_one_line_error_naming_the_extra(no_torchcodec, synthetic, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^data.decoder=torchcodec needs the torchcodec package: "):
        check_decoder("torchcodec")
    config = load_config(None, [f"data.root={synthetic('list').root}", "data.decoder=torchcodec"])
    with pytest.raises(ConfigError, match=r"pip install aptune\[torchcodec\]"):
        build_dataset(config.data, "train")
    recipe = tiny_run_config(data={"root": str(synthetic("list").root), "decoder": "torchcodec"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli_main(["train", "--config", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == ("error: data.decoder=torchcodec needs the torchcodec package: pip install aptune[torchcodec]")


def test_a_torchcodec_that_cannot_load_says_why(monkeypatch):
    broken = types.ModuleType("torchcodec.decoders")

    def missing_library(name):
        raise OSError("libnvrtc.so.13: cannot open shared object file: No such file or directory")

    broken.__getattr__ = missing_library
    monkeypatch.setitem(sys.modules, "torchcodec", types.ModuleType("torchcodec"))
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", broken)
    with pytest.raises(ConfigError, match=r"torchcodec is installed but cannot load \(libnvrtc.so.13: cannot open"):
        check_decoder("torchcodec")


def test_decoder_is_checked():
    assert load_config(None).data.decoder == "pyav"
    with pytest.raises(ConfigError, match=r"data.decoder='decord' is not one of: pyav, torchcodec"):
        load_config(None, ["data.decoder=decord"])
    with pytest.raises(ConfigError, match="not one of"):
        check_decoder("opencv")


def test_the_torchcodec_reader_gives_pyavs_frames(stand_in, synthetic):
    path = synthetic("list").videos[0][0]
    with open_video(path) as reader:
        total = reader.num_frames
        indices = [0, 5, 5, 3, total - 1, total + 7]  # any order, repeats, past the end
        expected = reader.get_frames(indices)
    with open_video(path, decoder="torchcodec") as reader:
        assert type(reader).__name__ == "TorchCodecReader" and reader.num_frames == total
        got = reader.get_frames(indices)
    assert torch.equal(got, expected)
    assert StandInDecoder.calls[-1] == sorted(set(min(i, total - 1) for i in indices))  # each frame once
    with open_video(path, max_short_side=16, decoder="torchcodec") as reader:
        assert reader.get_frames([0, 1]).shape == (2, 16, 16, 3)  # 32x32 scaled to a short side of 16


def test_torchcodec_errors_are_decode_errors(stand_in, synthetic, tmp_path):
    with pytest.raises(DecodeError, match=r"^file not found$"):
        open_video(tmp_path / "nope.mp4", decoder="torchcodec")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match=r"^empty file \(0 bytes\)$"):
        open_video(empty, decoder="torchcodec")
    reader = open_video(synthetic("list").videos[0][0], decoder="torchcodec")
    reader.decoder.frames = reader.decoder.frames[:2]  # the container promised more than it holds
    with pytest.raises(DecodeError, match=r"decode error \(IndexError: Invalid frame index"):
        reader.get_frames([0, 5])


def test_datasets_read_through_the_chosen_decoder(stand_in, synthetic):
    config = load_config(
        None,
        [f"data.root={synthetic('list').root}", "data.decoder=torchcodec", "data.num_frames=4", "data.input_size=32"],
    )
    train = build_dataset(config.data, "train")
    test = build_dataset(config.data, "test")
    assert train.decoder == test.decoder == "torchcodec"
    assert train[0].clips.shape == (config.data.num_sample, 3, 4, 32, 32)
    assert test[0].clip.shape == (3, 4, 32, 32)
    assert StandInDecoder.calls


def real_torchcodec() -> None:
    pytest.importorskip("torchcodec.decoders", exc_type=ImportError)
    try:
        check_decoder("torchcodec")
    except ConfigError as exc:
        pytest.skip(str(exc))


def test_real_torchcodec_gives_pyavs_frames(synthetic):
    real_torchcodec()
    path = synthetic("list").videos[0][0]
    with open_video(path) as pyav, open_video(path, decoder="torchcodec") as codec:
        assert codec.num_frames == pyav.num_frames
        count = pyav.num_frames
        indices = list(range(1, count - 1, 3))
        ours = codec.get_frames(indices).float()
        same = pyav.get_frames(indices).float()
        before = pyav.get_frames([i - 1 for i in indices]).float()
        after = pyav.get_frames([i + 1 for i in indices]).float()
        # past the end and before the start: the last and first frames, as PyAV's reader pads
        ends = codec.get_frames([count + 5, -2]).float()
        pyav_ends = pyav.get_frames([count - 1, 0]).float()
    per_frame = (ours - same).abs().mean(dim=(1, 2, 3))
    # the same frame, not a neighbour: closer to PyAV's frame i than consecutive frames are to each other
    assert (per_frame < 0.5 * (ours - before).abs().mean(dim=(1, 2, 3))).all()
    assert (per_frame < 0.5 * (ours - after).abs().mean(dim=(1, 2, 3))).all()
    assert per_frame.max() < 2.0  # colour conversion may round differently between FFmpeg builds
    assert (ends - pyav_ends).abs().mean() < 2.0


def test_real_torchcodec_scales_down_like_pyav(synthetic):
    real_torchcodec()
    path = synthetic("list").videos[0][0]
    with (
        open_video(path, max_short_side=16) as pyav,
        open_video(path, decoder="torchcodec", max_short_side=16) as codec,
    ):
        ours, theirs = codec.get_frames([0, 2]), pyav.get_frames([0, 2])
    assert ours.shape == theirs.shape and min(ours.shape[1:3]) == 16
    assert (ours.float() - theirs.float()).abs().mean() < 4.0  # two area-averaging resizers
