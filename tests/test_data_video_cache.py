"""data.video_cache_mb: decoded videos kept in memory give exactly the clips decoding gives."""

from __future__ import annotations

import pytest
import torch
from test_data_datasets import _config

from aptune.config import load_config
from aptune.data import video_cache as C
from aptune.data.datasets import build_dataset
from aptune.data.decode import DecodeError
from aptune.errors import ConfigError


@pytest.fixture()
def fresh_cache(monkeypatch):
    monkeypatch.setattr(C, "_SHARED", None)
    opened = []
    original = C.open_video

    def counting(path, *args, **kwargs):
        opened.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(C, "open_video", counting)
    return opened


def _train_clips(dataset, seed: int):
    torch.manual_seed(seed)
    return [dataset[i].clips for i in range(len(dataset))]


def test_cached_clips_are_the_decoded_ones_and_each_video_is_decoded_once(synthetic, fresh_cache):
    root = synthetic("list").root
    plain = build_dataset(_config(root), "train")
    cached = build_dataset(_config(root, video_cache_mb=64), "train")
    assert plain.video_cache is None and cached.video_cache is C.shared_video_cache(64)
    expected = _train_clips(plain, seed=3)
    fresh_cache.clear()  # the plain set opened every video itself
    for _ in range(2):  # the second epoch reads memory only
        for got, want in zip(_train_clips(cached, seed=3), expected):
            assert torch.equal(got, want)
    assert len(fresh_cache) == len(cached.samples) and cached.video_cache.hits == len(cached.samples)
    # another run in the process (the demo's next method) shares the decoded videos; test views too
    test_plain = build_dataset(_config(root), "test")
    views = range(0, len(test_plain), 5)
    expected_views = [test_plain[index].clip for index in views]
    fresh_cache.clear()
    test_cached = build_dataset(_config(root, video_cache_mb=64), "test")
    for index, want in zip(views, expected_views):
        assert torch.equal(test_cached[index].clip, want)
    assert len(fresh_cache) == len(set(fresh_cache))  # no video decoded twice


def test_the_budget_keeps_the_most_recent_videos(synthetic, fresh_cache):
    dataset = build_dataset(_config(synthetic("list").root), "train")
    paths = [sample.path for sample in dataset.samples[:3]]
    one = C.DecodedVideoCache(10**9).video(paths[0], 1, None).frames
    size = one.numel()
    cache = C.DecodedVideoCache(2 * size)
    for path in paths:
        cache.video(path, 1, None)
    assert cache.bytes == 2 * size and [key[0] for key in cache._videos] == paths[1:]
    tiny = C.DecodedVideoCache(size - 1)
    tiny.video(paths[0], 1, None)
    assert tiny.bytes == 0  # a video over the whole budget is read, not kept


def test_a_bad_video_is_an_error_and_is_not_kept(tmp_path, fresh_cache):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    cache = C.DecodedVideoCache(10**6)
    for _ in range(2):
        with pytest.raises(DecodeError):
            cache.video(str(bad), 1, None)
    assert cache.bytes == 0 and len(fresh_cache) == 2


def test_the_budget_is_a_checked_recipe_key():
    assert load_config(None).data.video_cache_mb == 0  # off unless asked for
    with pytest.raises(ConfigError, match="data.video_cache_mb must be in"):
        load_config(None, ["data.video_cache_mb=-1"])
