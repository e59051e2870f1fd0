"""Shared data fixtures: small synthetic datasets, written once per test session."""

from __future__ import annotations

import pytest

from aptune.data.synth import make_synthetic_dataset

SMALL = {"num_classes": 3, "per_class": 6, "frames": 12, "size": (32, 32), "seed": 0}


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """``synthetic(format)`` -> SyntheticDataset of 3 classes x 6 videos, built once."""
    built = {}

    def make(data_format: str):
        if data_format not in built:
            root = tmp_path_factory.mktemp(f"synth_{data_format}")
            built[data_format] = make_synthetic_dataset(root, format=data_format, **SMALL)
        return built[data_format]

    return make
