"""The commands a user runs print their own lines, not Ray's deprecation warnings about our calls.

`emokp label` runs in a child process as a user runs it, and everything it prints is checked: only
its `label:` lines, its summary and the one Ray Data line the README explains (core_worker.cc, from
Ray Data's own actor-pool start). Training's trainer is built in-process with every warning
recorded. `emokp serve`'s stop is checked in tests/test_serve_run.py (no `graceful_shutdown failed`)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import write_random_dataset, write_tiny_checkpoints

REPO = Path(__file__).resolve().parents[1]
# What Ray printed about our own calls before: ray_remote_args_fn (label.py), exclude_resources
# (Train's default ingest options), and any other deprecation or warning line.
NOISE = ("deprecated", "Deprecation", "ray_remote_args_fn", "exclude_resources", "Warning", "WARNING")
# Ray Data 2.60 passes its DataContext and UDF to every pool actor as object-store references, and
# Ray's core worker says once per process that such an actor's restart could fail (README, Labeling).
RAY_DATA_ACTOR_LINE = "has constructor arguments in the object store"


def _crops(folder: Path, n: int = 6) -> Path:
    from emokp_ray.data.synth.crops import synthesize

    folder.mkdir(parents=True)
    for i, image in enumerate(synthesize(n, seed=5).images):
        Image.fromarray(image).save(folder / f"face_{i}.png")
    return folder


@pytest.mark.ray
@pytest.mark.slow
def test_label_prints_only_its_own_lines(tmp_path):
    kp, em = write_tiny_checkpoints(tmp_path / "ckpt")
    folder = _crops(tmp_path / "faces")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own, as a user gets
    env.pop("PYTHONWARNINGS", None)
    result = subprocess.run(
        [sys.executable, "-m", "emokp_ray.cli", "label", str(folder), "--out", str(tmp_path / "out")]
        + ["--keypoints", str(kp), "--emotion", str(em), "--concurrency", "1", "--backend", "torch"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "labelled 6 images" in result.stdout
    printed = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in printed, printed
    foreign = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith("label:") and RAY_DATA_ACTOR_LINE not in line
    ]
    assert foreign == [], result.stderr


@pytest.mark.ray
def test_building_the_trainer_warns_nothing_about_our_calls(ray_cluster, tmp_path):
    from ray.util.annotations import RayDeprecationWarning

    from emokp_ray.training.config import TrainConfig
    from emokp_ray.training.facts import RunInfo, read_dataset_facts
    from emokp_ray.training.ray_trainer import build_trainer

    data = write_random_dataset(tmp_path / "data", n_train=16, n_val=8)
    cfg = TrainConfig(task="emotion", data=str(data), out=str(tmp_path / "run"), epochs=1, workers=1, batch_size=8)
    run = RunInfo(data=read_dataset_facts(cfg), use_gpu=False, run_id="quiet", metrics_path=str(tmp_path / "m.jsonl"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = build_trainer(cfg, run, str(tmp_path / "ray"))
    ours = [w for w in caught if issubclass(w.category, RayDeprecationWarning)]
    assert ours == [], [str(w.message) for w in ours]
    # The ingest options still keep the blocks' order (the reproducibility of a seeded run).
    assert trainer.data_config._user_execution_options.preserve_order
