"""`emokp evaluate`: a checkpoint on a prepared split or directly on a Kaggle CSV -> report + figures.

REPORT_DIR/report.json             task, n, and rmse_px / mean_shape_rmse_px / per_keypoint_rmse_px
                                   or accuracy / macro_f1 / per_class / confusion (DESIGN.md);
                                   emotion: calibration (ECE before / after the temperature);
                                   keypoints on a split with a near-duplicate holdout: the holdout's
                                   figures apart (rmse_px is over the other rows)
REPORT_DIR/reliability.png         emotion: reliability diagram before / after the temperature
REPORT_DIR/learning_curves.png     from the run's metrics.jsonl (or the checkpoint's own history)
REPORT_DIR/confusion.png           emotion
REPORT_DIR/per_keypoint_rmse.png   keypoints
REPORT_DIR/faces.png               a grid of faces with predicted (and true) keypoints / emotions
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emokp_ray.artifacts.checkpoint import LoadedCheckpoint
from emokp_ray.data.pipeline import BatchPreprocessor, select_task_rows
from emokp_ray.data.resize import resize_batch
from emokp_ray.data.schema import iter_split, read_info
from emokp_ray.errors import UserError
from emokp_ray.evaluation import figures
from emokp_ray.inference.calibration import reliability, softmax, temperature_of
from emokp_ray.inference.tta import forward_with_flip
from emokp_ray.storage import write_file
from emokp_ray.tasks import TaskSpec, task_spec
from emokp_ray.training.task_training import accumulate, task_training

GRID_FACES = 24


@dataclass
class EvalReport:
    report: dict[str, Any]
    out_dir: Path
    files: list[Path]

    def summary(self) -> str:
        head = task_spec(self.report["task"]).report_summary(self.report)
        files = "\n".join(f"  {p}" for p in self.files)
        return f"{head}\nwrote:\n{files}"


def _csv_batches(
    path: Path, task: str, input_size: int, scheme: str, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Batches straight from a Kaggle CSV (streamed; bad rows skipped and reported by the reader)."""
    from emokp_ray.data.kaggle import detect_format, read_kaggle

    fmt = detect_format(path)
    if fmt.task != task:
        have = fmt.task or "no labels (use `emokp label` for unlabeled images)"
        raise UserError(f"{path}: a {fmt.description} file holds {have}, but the checkpoint is a {task} model")
    reader = read_kaggle(path, scheme=scheme)
    for chunk in reader:
        batch, spec = chunk.to_batch(), task_spec(task)
        keep = spec.labelled(batch)
        batch = {"image": batch["image"][keep], spec.target: batch[spec.target][keep]}
        batch = resize_batch(batch, input_size)
        for start in range(0, len(batch["image"]), batch_size):
            yield {k: v[start : start + batch_size] for k, v in batch.items()}
    if reader.report.bad_rows:
        print(str(reader.report))


def _dataset_batches(
    data: str, split: str, task: str, input_size: int, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of a prepared split; each also carries "holdout" bool [B]: the row is a near-duplicate
    holdout of the keypoint split (its twin was trained on, see data/near_duplicates.py)."""
    info = read_info(data)
    if task not in info.tasks:
        raise UserError(f"{data} has no {task} labels (it holds: {', '.join(info.tasks) or 'none'})")
    if split not in info.counts:
        raise UserError(f"{data} has no {split!r} split (it has: {', '.join(info.counts)})")
    holdout_ids = {
        (source, int(row))
        for source, record in (info.extra.get("near_duplicates") or {}).items()
        for row in record.get("holdout_row_ids", [])
    }
    preprocess = BatchPreprocessor(task=task, input_size=input_size)
    for table in iter_split(data, split):
        table = select_task_rows(table, task)
        batch = preprocess(table)
        keys = zip(table["source"].to_pylist(), table["row_id"].to_pylist())
        batch["holdout"] = np.array([key in holdout_ids for key in keys], bool)
        for start in range(0, len(batch["image"]), batch_size):
            yield {k: v[start : start + batch_size] for k, v in batch.items()}


def _history(ckpt: LoadedCheckpoint) -> list[dict[str, Any]]:
    """Per-epoch rows: the run's metrics.jsonl when CKPT is RUN_DIR/best, else the checkpoint's own."""
    metrics_file = ckpt.path.parent / "metrics.jsonl"
    if ckpt.path.name == "best" and metrics_file.is_file():
        return [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return list((ckpt.extra_state or {}).get("history", []))


def _load_for_evaluation(checkpoint: str) -> tuple[LoadedCheckpoint, Callable[[np.ndarray], np.ndarray]]:
    """The model (any form load_model reads) and its forward: uint8 crops [N, S, S] -> float32
    outputs [N, K] numpy, the predictor's own runner and forward loop (inference/backends.py: eval
    mode, channels-last weights), on the GPU where there is one."""
    from emokp_ray.artifacts.export import load_model
    from emokp_ray.inference.backends import make_runner, run_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_model(checkpoint, map_location=device)
    runner = make_runner(ckpt, "torch", device)
    return ckpt, lambda crops: run_model(runner, crops)


def _outputs(
    forward: Callable[[np.ndarray], np.ndarray], batch: dict[str, np.ndarray], meta, flip_tta: bool
) -> np.ndarray:
    """The predictor's outputs for a batch's images: flip test-time augmentation where flip_tta."""
    images = np.ascontiguousarray(batch["image"])
    return forward_with_flip(forward, images, meta.task, meta.keypoint_names) if flip_tta else forward(images)


def _limited(batches: Iterable[dict[str, np.ndarray]], limit_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches, cut after `limit_rows` rows (0: all)."""
    n = 0
    for batch in batches:
        if limit_rows and n >= limit_rows:
            return
        if limit_rows:
            batch = {k: v[: limit_rows - n] for k, v in batch.items()}
        n += len(batch["image"])
        yield batch


class _Seen:
    """What `emokp evaluate` keeps beside the metrics: a grid of faces for the figure, the rows of a
    near-duplicate holdout, and (class outputs) every logit and label for the calibration figures."""

    def __init__(self, spec: TaskSpec, temperature: float, num_classes: int):
        self.spec, self.temperature = spec, temperature
        self.n = self.n_holdout = 0
        self.grid: dict[str, list[np.ndarray]] = {"image": [], "pred": [], "true": [], "prob": []}
        self.holdout = task_training(spec.name).new_accumulator(num_classes)  # the holdout's rows
        self.everything = task_training(spec.name).new_accumulator(num_classes)  # all rows, holdout included
        self.logits: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    def add(self, batch: dict[str, np.ndarray], outputs: np.ndarray) -> None:
        spec, true = self.spec, batch[self.spec.target]
        self.n += len(outputs)
        held = batch.get("holdout", np.zeros(len(outputs), bool))
        if held.any():
            task_training(spec.name).update(self.holdout, outputs[held], true[held])
            self.n_holdout += int(held.sum())
        task_training(spec.name).update(self.everything, outputs, true)
        prob = None
        if spec.coordinates:
            pred = outputs
        else:
            prob = softmax(outputs, self.temperature)
            pred = prob.argmax(axis=1)
            self.logits.append(outputs)
            self.targets.append(true)
        take = GRID_FACES - sum(len(x) for x in self.grid["image"])
        if take > 0:
            self.grid["image"].append(batch["image"][:take])
            self.grid["pred"].append(pred[:take])
            self.grid["true"].append(true[:take])
            if prob is not None:
                self.grid["prob"].append(prob[:take])


def _figures(report: dict[str, Any], seen: _Seen, class_names: list[str], out_dir: Path) -> list[Path]:
    """The report's PNG figures: per-keypoint RMSE, or the confusion matrix and reliability diagram;
    then the grid of faces."""
    grid = {k: np.concatenate(v) for k, v in seen.grid.items() if v}
    files: list[Path] = []
    if seen.spec.coordinates:
        files.append(
            figures.plot_per_keypoint_rmse(
                report["per_keypoint_rmse_px"],
                out_dir / "per_keypoint_rmse.png",
                baseline=report.get("per_keypoint_mean_shape_rmse_px"),
            )
        )
        files.append(
            figures.plot_face_grid(
                grid["image"], out_dir / "faces.png", pred_keypoints=grid["pred"], true_keypoints=grid["true"]
            )
        )
        return files
    cal = report["calibration"]
    files.append(figures.plot_confusion_matrix(report["confusion"], class_names, out_dir / "confusion.png"))
    files.append(
        figures.plot_reliability(cal["bins_uncalibrated"], cal["bins"], cal["temperature"], out_dir / "reliability.png")
    )
    files.append(
        figures.plot_face_grid(
            grid["image"],
            out_dir / "faces.png",
            pred_labels=grid["pred"],
            true_labels=grid["true"],
            class_names=class_names,
            probabilities=grid["prob"],
        )
    )
    return files


def evaluate_checkpoint(
    checkpoint: str,
    data: str,
    out: str,
    split: str = "val",
    scheme: str | None = None,
    batch_size: int = 128,
    limit_rows: int = 0,
    flip_tta: bool = True,
) -> EvalReport:
    """Evaluate `checkpoint` on `data` (prepared data set dir or Kaggle CSV); write the report.

    The predictions are the predictor's: flip test-time augmentation (flip_tta) and, for emotion, the
    checkpoint's temperature (accuracy is the same at any temperature; calibration figures differ).
    """
    ckpt, forward = _load_for_evaluation(checkpoint)
    meta = ckpt.meta
    task, size = meta.task, meta.input_size
    data_path = Path(data)
    if data_path.is_file():
        batches = _csv_batches(data_path, task, size, scheme or meta.label_scheme or "seed5", batch_size)
        where = {"data": str(data_path.resolve()), "split": None}
    elif data_path.is_dir():
        batches = _dataset_batches(data, split, task, size, batch_size)
        where = {"data": str(data_path.resolve()), "split": split}
    else:
        raise UserError(f"--data {data}: no such file or directory")

    spec = task_spec(task)
    temperature = temperature_of(meta.calibration)
    num_classes = len(meta.class_names)
    seen = _Seen(spec, temperature, num_classes)

    def scored() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """The rows the report scores: all but a near-duplicate holdout's (its figures go apart)."""
        for batch in _limited(batches, limit_rows):
            outputs = _outputs(forward, batch, meta, flip_tta)
            seen.add(batch, outputs)
            held = batch.get("holdout", np.zeros(len(outputs), bool))
            yield {spec.target: batch[spec.target][~held]}, outputs[~held]

    acc, _ = accumulate(spec, scored(), num_classes)
    if seen.n == 0:
        raise UserError(f"{data}: no {task} rows to evaluate")

    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, Any] = {
        "checkpoint": str(ckpt.path),
        "run_id": meta.run_id,
        "epoch": meta.epoch,
        "model_input_size": size,
        "flip_tta": bool(flip_tta),
        **where,
    }
    if seen.n_holdout:
        metric = spec.headline
        metadata["near_duplicate_holdout"] = {
            "n": seen.n_holdout,
            metric: seen.holdout.compute()[metric],
            "all_n": seen.n,
            f"all_{metric}": seen.everything.compute()[metric],
            "note": f"{metric} above is over the rows without a trained-on near-duplicate",
        }
    if seen.logits:
        logits, labels = np.concatenate(seen.logits), np.concatenate(seen.targets)
        before, after = reliability(softmax(logits, 1.0), labels), reliability(softmax(logits, temperature), labels)
        metadata["calibration"] = {
            "temperature": temperature,
            "fitted_on": (meta.calibration or {}).get("fitted_on"),
            "ece_uncalibrated": before["ece"],
            "ece": after["ece"],
            "bins_uncalibrated": before["bins"],
            "bins": after["bins"],
        }
    mean_shape = (meta.train_config.get("data_facts") or {}).get("mean_shape")
    mean_shape = None if mean_shape is None else np.asarray(mean_shape, np.float64)
    report = task_training(spec.name).report(acc, mean_shape, list(meta.class_names), metadata)
    files = _figures(report, seen, list(meta.class_names), out_dir)
    history = _history(ckpt)
    if history:
        files.append(figures.plot_learning_curves(history, out_dir / "learning_curves.png"))
    report_file = out_dir / "report.json"
    write_file(report_file, (json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())
    files.insert(0, report_file)
    return EvalReport(report, out_dir, files)


def collect_logits(
    checkpoint: str, data: str, split: str, flip_tta: bool = True, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """An emotion checkpoint's logits [N, K] (as the predictor computes them, before the temperature)
    and the labels [N] of a prepared split: what the temperature is fitted on (the val split)."""
    ckpt, forward = _load_for_evaluation(checkpoint)
    if task_spec(ckpt.meta.task).coordinates:
        raise UserError(f"{checkpoint} is a {ckpt.meta.task} checkpoint; temperatures calibrate class outputs")
    logits, labels = [], []
    for batch in _dataset_batches(data, split, ckpt.meta.task, ckpt.meta.input_size, batch_size):
        logits.append(_outputs(forward, batch, ckpt.meta, flip_tta))
        labels.append(batch["label"])
    if not logits:
        raise UserError(f"{data}: no {ckpt.meta.task} rows in the {split!r} split")
    return np.concatenate(logits), np.concatenate(labels)
