"""What each task needs from the data layer, looked up by the task's name (`task_data(name)`): which
rows of a prepared table train it, its targets as a batch carries them, and one training batch's
random transforms. The task itself is described once in emokp_ray/tasks.py; this is its data side,
kept here so that the spec stays below the data layer in the import graph."""

from __future__ import annotations

from typing import Any

import numpy as np

from emokp_ray.data.augment.policies import (
    EmotionAugment,
    KeypointAugment,
    augment_emotion_batch,
    augment_keypoint_batch,
)
from emokp_ray.data.regularize import mix_batch, random_erase
from emokp_ray.data.resize import rescale_keypoints
from emokp_ray.data.schema import keypoints_from_column
from emokp_ray.errors import UserError


class TaskData:
    def table_rows(self, table: Any, drop_incomplete: bool = False) -> np.ndarray:
        """bool [N]: the rows of a prepared table (data/schema.py) that train this task."""
        raise NotImplementedError

    def table_targets(self, table: Any, scale: np.ndarray) -> np.ndarray:
        """The target column of a prepared table as the batch carries it; `scale` [N]: each row's
        resize factor (input_size / original width) for targets in pixels."""
        raise NotImplementedError

    def augment(self, batch: dict[str, Any], rng: Any, settings: Any) -> dict[str, Any]:
        """One training batch's random transforms (settings: data/pipeline.py TrainAugment)."""
        raise NotImplementedError


class KeypointData(TaskData):
    def table_rows(self, table: Any, drop_incomplete: bool = False) -> np.ndarray:
        missing = np.isnan(keypoints_from_column(table["keypoints"]))
        return ~missing.any(axis=1) if drop_incomplete else ~missing.all(axis=1)  # all 15 points, or any

    def table_targets(self, table: Any, scale: np.ndarray) -> np.ndarray:
        return rescale_keypoints(keypoints_from_column(table["keypoints"]), scale)

    def augment(self, batch: dict[str, Any], rng: Any, settings: Any) -> dict[str, Any]:
        if settings.augment:
            batch = augment_keypoint_batch(batch, KeypointAugment(), rng)
            if settings.random_erasing:
                batch["image"] = random_erase(batch["image"], settings.random_erasing, rng)
        return batch


class EmotionData(TaskData):
    def table_rows(self, table: Any, drop_incomplete: bool = False) -> np.ndarray:
        return table["label"].to_numpy() >= 0

    def table_targets(self, table: Any, scale: np.ndarray) -> np.ndarray:
        return table["label"].to_numpy().astype(np.int64)

    def augment(self, batch: dict[str, Any], rng: Any, settings: Any) -> dict[str, Any]:
        labels = batch["label"]
        if settings.sampling_weights is not None and len(labels):
            p = np.asarray(settings.sampling_weights, np.float64)[labels]
            idx = rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())
            batch = {k: v[idx] for k, v in batch.items()}
        if settings.augment:
            batch = augment_emotion_batch(batch, EmotionAugment(), rng)
            if settings.random_erasing:
                batch["image"] = random_erase(batch["image"], settings.random_erasing, rng)
            batch = mix_batch(batch, settings.mixup_alpha, settings.cutmix_alpha, rng)
        return batch


DATA: dict[str, TaskData] = {"keypoints": KeypointData(), "emotion": EmotionData()}  # tasks.TASKS' names


def task_data(name: str) -> TaskData:
    """The data side of a task by name; an unknown name is a UserError listing the known ones."""
    try:
        return DATA[name]
    except KeyError:
        raise UserError(f"unknown task {name!r} (known: {', '.join(DATA)})") from None
