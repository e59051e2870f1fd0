"""Shared data fixtures (small synthetic datasets, written once per test session) and the
CUDA tier's skip: a test marked ``cuda`` runs only where ``torch.cuda.is_available()``.

``APTUNE_CUDA_TIER_DEVICE=cpu`` runs the tier's tests on the CPU instead (the cases that
need CUDA itself, fp16 and nccl, still skip): how the GPU check's dry run and a developer
without a GPU check the tier's own logic.
"""

from __future__ import annotations

import os

import pytest
import torch

from aptune.data.synth import make_synthetic_dataset

CUDA_TIER_DEVICE = os.environ.get("APTUNE_CUDA_TIER_DEVICE", "cuda")


def pytest_collection_modifyitems(config, items):
    if CUDA_TIER_DEVICE == "cpu" or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is false")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


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
