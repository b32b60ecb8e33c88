"""What each task needs from the training layer, looked up by the task's name
(`task_training(name)`): its loss, its metric accumulator and the `val/` row an epoch reports, and
the report `emokp evaluate` writes; plus `accumulate`, the one evaluation loop that validation in
training and `emokp evaluate` share. The task itself is described once in emokp_ray/tasks.py; this is
its training side, kept here so that the spec stays below the training layer in the import graph."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from emokp_ray.errors import UserError
from emokp_ray.tasks import TaskSpec
from emokp_ray.training.losses import emotion_loss, keypoint_loss
from emokp_ray.training.metrics import (
    EmotionMetricAccumulator,
    KeypointMetricAccumulator,
    emotion_report,
    keypoint_report,
)

if TYPE_CHECKING:
    from emokp_ray.training.config import TrainConfig

Batch = Mapping[str, Any]  # "image" uint8 [B, S, S] plus the task's target column (numpy)


class TaskTraining:
    def loss(self, cfg: TrainConfig, class_weights: np.ndarray | None) -> Any:
        """The training loss: (model output, device batch) -> scalar tensor."""
        raise NotImplementedError

    def new_accumulator(self, num_classes: int) -> Any:
        """An empty sum-accumulator (training/metrics.py) of this task's metrics."""
        raise NotImplementedError

    def accumulator_from_state(self, state: np.ndarray, num_classes: int) -> Any:
        """An accumulator rebuilt from its all-reduced flat state."""
        raise NotImplementedError

    def update(self, accumulator: Any, outputs: np.ndarray, targets: np.ndarray) -> None:
        """Add a batch: outputs float32 [B, K] (keypoint pixels or logits) and the batch's targets."""
        accumulator.update(outputs, targets)

    def val_metrics(self, accumulator: Any, mean_shape: np.ndarray | None, class_names: list[str]) -> dict[str, Any]:
        """The `val/...` entries of an epoch's metrics row."""
        raise NotImplementedError

    def report(
        self, accumulator: Any, mean_shape: np.ndarray | None, class_names: list[str], metadata: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The `report.json` dict (DESIGN.md's fields for the task) plus `metadata`."""
        raise NotImplementedError


class KeypointTraining(TaskTraining):
    def loss(self, cfg: TrainConfig, class_weights: np.ndarray | None) -> Any:
        return keypoint_loss(cfg.resolved_input_size / 2.0)

    def new_accumulator(self, num_classes: int) -> Any:
        return KeypointMetricAccumulator()

    def accumulator_from_state(self, state: np.ndarray, num_classes: int) -> Any:
        return KeypointMetricAccumulator.from_state(state)

    def val_metrics(self, accumulator: Any, mean_shape: np.ndarray | None, class_names: list[str]) -> dict[str, Any]:
        result = accumulator.compute(mean_shape=mean_shape)
        return {
            "val/rmse_px": result["rmse_px"],
            "val/mean_shape_rmse_px": result.get("mean_shape_rmse_px"),
            "val/per_keypoint_rmse_px": result["per_keypoint_rmse_px"],
        }

    def report(
        self, accumulator: Any, mean_shape: np.ndarray | None, class_names: list[str], metadata: Mapping[str, Any]
    ) -> dict[str, Any]:
        return keypoint_report(accumulator, mean_shape=mean_shape, metadata=metadata)


class EmotionTraining(TaskTraining):
    def loss(self, cfg: TrainConfig, class_weights: np.ndarray | None) -> Any:
        weights = class_weights if cfg.imbalance == "weights" else None
        return emotion_loss(weights, cfg.label_smoothing)

    def new_accumulator(self, num_classes: int) -> Any:
        return EmotionMetricAccumulator(num_classes)

    def accumulator_from_state(self, state: np.ndarray, num_classes: int) -> Any:
        return EmotionMetricAccumulator.from_state(state, num_classes=num_classes)

    def update(self, accumulator: Any, outputs: np.ndarray, targets: np.ndarray) -> None:
        accumulator.update(outputs.argmax(axis=1), targets)

    def val_metrics(self, accumulator: Any, mean_shape: np.ndarray | None, class_names: list[str]) -> dict[str, Any]:
        result = accumulator.compute(class_names)
        per_class = result["per_class"]
        return {
            "val/accuracy": result["accuracy"],
            "val/macro_f1": result["macro_f1"],
            "val/per_class_recall": {name: v["recall"] for name, v in per_class.items()},
            **{f"val/recall/{name}": v["recall"] for name, v in per_class.items()},
            **{f"val/precision/{name}": v["precision"] for name, v in per_class.items()},
            "val/confusion": result["confusion"],
        }

    def report(
        self, accumulator: Any, mean_shape: np.ndarray | None, class_names: list[str], metadata: Mapping[str, Any]
    ) -> dict[str, Any]:
        return emotion_report(accumulator, class_names=class_names, metadata=metadata)


TRAINING: dict[str, TaskTraining] = {"keypoints": KeypointTraining(), "emotion": EmotionTraining()}  # tasks.TASKS


def task_training(name: str) -> TaskTraining:
    """The training side of a task by name; an unknown name is a UserError listing the known ones."""
    try:
        return TRAINING[name]
    except KeyError:
        raise UserError(f"unknown task {name!r} (known: {', '.join(TRAINING)})") from None


def accumulate(
    spec: TaskSpec, pairs: Iterable[tuple[Mapping[str, np.ndarray], np.ndarray]], num_classes: int
) -> tuple[Any, int]:
    """The one evaluation loop, shared by validation in training and `emokp evaluate`: every
    (batch, outputs) pair, outputs float32 [B, K] (keypoint pixels or logits) and the batch's target
    column (spec.target), into a new accumulator of the task. Returns (accumulator, rows seen)."""
    training = task_training(spec.name)
    acc = training.new_accumulator(num_classes)
    n = 0
    for batch, outputs in pairs:
        training.update(acc, outputs, batch[spec.target])
        n += len(outputs)
    return acc, n
