"""emokp_ray/ray_utils.py without starting Ray: what init_ray hands the raylet it starts."""

from __future__ import annotations

import os

from emokp_ray.ray_utils import _raylet_env


def test_worker_niceness_is_set_only_while_ray_starts(monkeypatch):
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    with _raylet_env(0):
        assert os.environ["RAY_worker_niceness"] == "0"  # what the raylet started now reads
    assert "RAY_worker_niceness" not in os.environ  # later local clusters get Ray's default again

    monkeypatch.setenv("RAY_worker_niceness", "7")  # the user's own setting stands
    with _raylet_env(0):
        assert os.environ["RAY_worker_niceness"] == "7"
    assert os.environ["RAY_worker_niceness"] == "7"
