"""emokp_ray/ray_utils.py without starting Ray: what init_ray hands the raylet it starts."""

from __future__ import annotations

import os

from emokp_ray.ray_utils import _raylet_env


def test_raylet_settings_are_set_only_while_ray_starts_and_the_users_stand(monkeypatch):
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    with _raylet_env({"RAY_worker_niceness": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}):
        assert os.environ["RAY_worker_niceness"] == "0"  # what the raylet started now reads
        assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert "RAY_worker_niceness" not in os.environ  # later local clusters get Ray's default again
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ

    monkeypatch.setenv("RAY_worker_niceness", "7")  # the user's own setting stands
    with _raylet_env({"RAY_worker_niceness": "0"}):
        assert os.environ["RAY_worker_niceness"] == "7"
    assert os.environ["RAY_worker_niceness"] == "7"
