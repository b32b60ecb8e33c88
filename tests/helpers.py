"""Small builders shared by tests (not fixtures, so tests can call them with their own sizes)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from emokp_ray.data.schema import DatasetInfo, DatasetWriter, count_summary, make_table
from emokp_ray.labels import SEED5
from emokp_ray.training.loop import WALL_CLOCK_METRICS


def metrics_without_wall_clock(run_dir: Path) -> list[dict]:
    """RUN_DIR/metrics.jsonl, one dict per epoch, without WALL_CLOCK_METRICS (which must be there)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for name in WALL_CLOCK_METRICS:
            del row[name]
    return rows


def write_random_dataset(out: Path, n_train: int = 64, n_val: int = 32, size: int = 96, seed: int = 0) -> Path:
    """A prepared data set of random faces carrying both keypoints (some rows with only 4) and
    seed5 labels. Exercises the mechanics (loop, checkpoints, resume), not learning."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    keypoints = rng.uniform(20, size - 20, (n, 30)).astype(np.float32)
    keypoints[::3, 4:20] = np.nan  # every third row keeps only some points, as in Kaggle's file
    labels = rng.integers(0, 5, n)
    splits = ["train"] * n_train + ["val"] * n_val
    table = make_table(images, keypoints, labels, splits, "random", np.arange(n))
    with DatasetWriter(out) as writer:
        writer.write(table)
        writer.info = DatasetInfo(
            tasks=["keypoints", "emotion"],
            scheme="seed5",
            counts=count_summary(table, SEED5.classes),
            sources=["random"],
            image_sizes=[[size, size]],
        )
    return out


def write_tiny_checkpoints(out: Path) -> tuple[Path, Path]:
    """A keypoint and an emotion checkpoint of small, randomly initialized variants of the two
    networks (same code path as the course models, a fraction of the size): fast to load in tests
    of the predictor, batch labeling, serving and export. Returns (keypoints_dir, emotion_dir)."""
    import torch

    from emokp_ray.artifacts.checkpoint import CheckpointMeta, save_checkpoint
    from emokp_ray.models.resnet import build_model, emotion_config, keypoint_config

    torch.manual_seed(0)
    kp_cfg = keypoint_config(width_mult=0.25, head_hidden=(64,), head_dropout=(0.0,))
    em_cfg = emotion_config(input_size=48, width_mult=0.25)
    kp_dir = save_checkpoint(
        out / "keypoints",
        build_model(kp_cfg).eval(),
        CheckpointMeta(model_config=kp_cfg, run_id="tiny-keypoints", epoch=1),
    )
    em_dir = save_checkpoint(
        out / "emotion", build_model(em_cfg).eval(), CheckpointMeta(model_config=em_cfg, run_id="tiny-emotion", epoch=1)
    )
    return kp_dir, em_dir


def slow_face_model(delay_s: float) -> Any:
    """FaceModel's Serve deployment (same name and options) whose replicas sleep `delay_s` before each
    batch: keeps requests in flight, to provoke overload (503) and to stop a server mid-request. The
    class is made here, in a function, so Ray ships it by value (workers need not import tests/)."""
    import asyncio

    from emokp_ray.serving.model import FaceModel

    class SlowFaceModel(FaceModel.func_or_class):
        async def predict(self, jobs):
            await asyncio.sleep(delay_s)
            return await super().predict(jobs)

    return FaceModel.options(func_or_class=SlowFaceModel)


@contextlib.contextmanager
def serving_model(deployment: Any) -> Iterator[None]:
    """While inside, `emokp_ray.serving.app.compose` binds `deployment` in FaceModel's place (what it
    binds is looked up when it is called, so apps composed inside keep it)."""
    from emokp_ray.serving import app

    saved = app.FaceModel
    app.FaceModel = deployment
    try:
        yield
    finally:
        app.FaceModel = saved
