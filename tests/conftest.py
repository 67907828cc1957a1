"""Shared fixtures. Tests that need Ray are marked ``ray`` and share one session-scoped local
cluster (num_cpus=2, like CI); nothing here downloads anything."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def _seed():
    """Deterministic seeds for every test."""
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass
    yield


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (2 logical CPUs, as on CI). Shut down at the end."""
    from lungsearch.runtime import init_ray, shutdown_ray

    ctx = init_ray(address="", num_cpus=2, log_to_driver=False)
    yield ctx
    shutdown_ray()
