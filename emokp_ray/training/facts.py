"""What the driver reads once and hands to every worker before its first step.

`DatasetFacts` are the data set's (row counts, label scheme, the mean-shape baseline, class
weights), read by `read_dataset_facts`; `RunInfo` adds the run's own (device, run id, resume point,
where rank 0 appends its metrics lines). Both are frozen and picklable: Ray ships them to the Train
workers inside the loop config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from emokp_ray.data.schema import keypoints_from_column, read_info, split_files
from emokp_ray.errors import UserError
from emokp_ray.labels import emotion_scheme
from emokp_ray.training.config import TrainConfig


@dataclass(frozen=True)
class DatasetFacts:
    scheme: str  # the data set's emotion label scheme ("seed5" when it names none)
    n_train: int  # training rows that carry the task's labels (at most --limit-rows)
    steps_per_epoch: int  # n_train // batch_size, at least 1: the learning-rate schedule's epoch
    mean_shape: tuple[float, ...] | None = None  # keypoints: per-coordinate training mean [30] (the baseline)
    class_weights: tuple[float, ...] | None = None  # emotion, --imbalance weights: loss weight per class
    sampling_weights: tuple[float, ...] | None = None  # emotion, --imbalance sampling: draw weight per class


@dataclass(frozen=True)
class RunInfo:
    data: DatasetFacts
    use_gpu: bool
    run_id: str  # "<task>-<YYYYmmdd-HHMMSS>", stored in every checkpoint
    metrics_path: str  # RUN_DIR/metrics.jsonl: rank 0 appends each epoch's line, the driver tails it
    resume_from: str | None = None  # the checkpoint --resume continues from


def read_dataset_facts(cfg: TrainConfig) -> DatasetFacts:
    """The facts of `cfg.data` for `cfg.task`, or a UserError when it cannot train that task."""
    info = read_info(cfg.data)
    if cfg.task not in info.tasks:
        raise UserError(f"{cfg.data} has no {cfg.task} labels (it holds: {', '.join(info.tasks) or 'none'})")
    for split in ("train", "val"):
        if split not in info.counts:
            raise UserError(f"{cfg.data} has no {split!r} split; prepare it with a validation fraction > 0")
    train_counts = info.counts["train"]
    scheme = info.scheme or "seed5"
    n_train, task_facts = TASK_FACTS[cfg.task](cfg, train_counts, scheme)
    if cfg.limit_rows:
        n_train = min(n_train, cfg.limit_rows)
    if n_train < cfg.batch_size:
        raise UserError(f"{cfg.data}: {n_train} training rows for {cfg.task}, fewer than --batch-size {cfg.batch_size}")
    return DatasetFacts(
        scheme=scheme,
        n_train=int(n_train),
        steps_per_epoch=max(1, n_train // cfg.batch_size),
        **task_facts,
    )


def class_weights_from_counts(counts: dict[str, int], class_names: tuple[str, ...]) -> np.ndarray:
    """Inverse-frequency weights n / (K * n_c), normalized to mean 1; a class with no rows gets 1."""
    n_c = np.array([counts.get(name, 0) for name in class_names], np.float64)
    weights = np.where(n_c > 0, n_c.sum() / (len(n_c) * np.maximum(n_c, 1)), 1.0)
    return (weights / weights.mean()).astype(np.float32)


def train_mean_shape(data: str, drop_incomplete: bool, limit_rows: int = 0) -> np.ndarray:
    """Per-coordinate mean of the training keypoints [30] (NaN-aware): the mean-shape baseline."""
    files = split_files(data, "train")
    table = (
        pq.read_table(files, columns=["keypoints"])
        if len(files) != 1
        else pq.read_table(files[0], columns=["keypoints"])
    )
    if limit_rows:
        table = table.slice(0, limit_rows)
    kp = keypoints_from_column(table["keypoints"])
    kp = kp[~np.isnan(kp).all(axis=1)]
    if drop_incomplete:
        kp = kp[~np.isnan(kp).any(axis=1)]
    return np.nanmean(kp, axis=0)


def _keypoint_facts(cfg: TrainConfig, counts: Mapping[str, int], scheme: str) -> tuple[int, dict[str, Any]]:
    n_train = counts["complete_keypoints" if cfg.drop_incomplete else "keypoints"]
    mean_shape = tuple(float(v) for v in train_mean_shape(cfg.data, cfg.drop_incomplete, cfg.limit_rows))
    return n_train, {"mean_shape": mean_shape}


def _emotion_facts(cfg: TrainConfig, counts: Mapping[str, int], scheme: str) -> tuple[int, dict[str, Any]]:
    classes = emotion_scheme(scheme).classes
    n_train = sum(counts.get(name, 0) for name in classes)
    weights = tuple(float(w) for w in class_weights_from_counts(dict(counts), classes))
    # --imbalance: weights in the loss, or in the draw of each batch's rows (none: neither)
    field = {"weights": "class_weights", "sampling": "sampling_weights"}.get(cfg.imbalance)
    return n_train, {field: weights} if field else {}


# Per task (tasks.TASKS): from the prepared train split's counts (data/schema.py), the rows that train
# it and its DatasetFacts fields (mean shape; class or sampling weights).
TASK_FACTS: dict[str, Callable[[TrainConfig, Mapping[str, int], str], tuple[int, dict[str, Any]]]] = {
    "keypoints": _keypoint_facts,
    "emotion": _emotion_facts,
}
