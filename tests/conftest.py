"""Shared fixtures: one small Ray cluster per test session, paths to the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FER_CSV = SHARED_DATA / "fer2013" / "fer2013.csv.gz"
KEYPOINTS_CSV = SHARED_DATA / "facial-keypoints" / "training.csv.gz"


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session: 4 logical CPUs (2 cores here; Train workers and Ray Data
    tasks share them), a 1 GB object store. Tests that need Ray take this fixture."""
    ray = pytest.importorskip("ray")
    from emokp_ray.ray_utils import init_ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    init_ray(num_cpus=4, object_store_memory=1_000_000_000)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data, or a clean skip where it is absent."""
    if not (FER_CSV.is_file() and KEYPOINTS_CSV.is_file()):
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
