"""Evaluation metrics for both tasks, as sum-accumulators that ranks can all-reduce.

Every accumulator keeps only SUMS (squared errors, counts, a confusion matrix) in one flat float64
vector, `state()`. Distributed evaluation all-reduces that vector (sum) across ranks, rebuilds an
accumulator with `from_state`, and only then calls `compute()`, so every rank reports the metric of
the whole validation set, not of its shard (a mean of per-rank RMSEs would be wrong).

Metric names and units (stable; `prefixed_scalars` turns a computed dict into `val/<name>`):
  keypoints: rmse_px, mean_shape_rmse_px, nme_interocular (unitless), per_keypoint_rmse_px
  emotion:   accuracy, balanced_accuracy, macro_f1, per_class, confusion
Undefined values (no data to average) are None, never NaN, so reports are valid JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from emokp_ray.labels import KEYPOINT_NAMES, NUM_KEYPOINTS

NUM_COORDS = 2 * NUM_KEYPOINTS  # 30: x, y per keypoint in Kaggle order
_LEFT_EYE = KEYPOINT_NAMES.index("left_eye_center")
_RIGHT_EYE = KEYPOINT_NAMES.index("right_eye_center")


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _as_coords(keypoints: np.ndarray, what: str) -> np.ndarray:
    """[B, 30] or [B, 15, 2] -> float64 [B, 30]."""
    arr = np.asarray(keypoints, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[1:] == (NUM_KEYPOINTS, 2):
        arr = arr.reshape(len(arr), NUM_COORDS)
    if arr.ndim != 2 or arr.shape[1] != NUM_COORDS:
        raise ValueError(f"{what} must have shape [B, {NUM_COORDS}] or [B, {NUM_KEYPOINTS}, 2], got {arr.shape}")
    return arr


def _ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, None when the denominator is 0 (nothing to average)."""
    return float(numerator / denominator) if denominator > 0 else None


def _sqrt_ratio(numerator: float, denominator: float) -> float | None:
    value = _ratio(numerator, denominator)
    return None if value is None else math.sqrt(max(value, 0.0))


def json_safe(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays to plain Python and NaN/inf to None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def prefixed_scalars(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The scalar entries of a computed metrics dict as {"<prefix>/<name>": float}, for metrics.jsonl.

    Nested entries (per_class, per_keypoint_rmse_px, confusion) and None values are left out.
    Example: prefixed_scalars({"rmse_px": 2.1, "n": 500}, "val") == {"val/rmse_px": 2.1, "val/n": 500.0}.
    """
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, (bool, np.bool_)) or value is None:
            continue
        if isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value):
            out[f"{prefix}/{name}"] = float(value)
    return out


# --------------------------------------------------------------------------------------------------
# Running mean (loss)
# --------------------------------------------------------------------------------------------------


class MeanAccumulator:
    """A weighted running mean, e.g. of the loss: update(batch_mean, batch_size). State: [sum, weight]."""

    def __init__(self) -> None:
        self._sum = 0.0
        self._weight = 0.0

    def update(self, value: float, weight: float = 1.0) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self._sum += float(value) * float(weight)
        self._weight += float(weight)

    def state(self) -> np.ndarray:
        return np.array([self._sum, self._weight], dtype=np.float64)

    @classmethod
    def from_state(cls, state: np.ndarray) -> MeanAccumulator:
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape != (2,):
            raise ValueError(f"MeanAccumulator state must have 2 values, got {state.shape}")
        acc = cls()
        acc._sum, acc._weight = float(state[0]), float(state[1])
        return acc

    def merge(self, states: Iterable[np.ndarray]) -> MeanAccumulator:
        """Add other accumulators' states into this one (in place) and return self."""
        total = self.state() + sum((np.asarray(s, np.float64) for s in states), np.zeros(2))
        self._sum, self._weight = float(total[0]), float(total[1])
        return self

    def compute(self) -> float | None:
        return _ratio(self._sum, self._weight)


# --------------------------------------------------------------------------------------------------
# Keypoints
# --------------------------------------------------------------------------------------------------


def mean_shape(keypoints: np.ndarray | Iterable[np.ndarray | Mapping[str, np.ndarray]]) -> np.ndarray:
    """Per-coordinate mean of the TRAINING targets, ignoring NaN: float64 [30], NaN where no row has it.

    Accepts one [N, 30] array, or an iterable of [B, 30] arrays or of batch dicts with "keypoints"
    (so it can stream a whole split without holding it).
    """
    if isinstance(keypoints, np.ndarray):
        chunks: Iterable[Any] = [keypoints]
    else:
        chunks = keypoints
    total = np.zeros(NUM_COORDS)
    count = np.zeros(NUM_COORDS)
    for chunk in chunks:
        if isinstance(chunk, Mapping):
            chunk = chunk["keypoints"]
        coords = _as_coords(chunk, "keypoints")
        present = ~np.isnan(coords)
        total += np.where(present, coords, 0.0).sum(axis=0)
        count += present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


class KeypointMetricAccumulator:
    """Sums for keypoint RMSE over PRESENT target coordinates (NaN targets are skipped).

    update(pred [B, 30], target [B, 30] with NaN) adds, per coordinate c over rows where target is
    present: squared error, count, sum of targets and sum of squared targets (the last two give the
    mean-shape baseline for any mean shape m: sum (t - m)^2 = sum t^2 - 2 m sum t + n m^2).
    It also sums the inter-ocular normalized mean error (NME) of rows whose eye centres are present.
    """

    # Layout of the flat state vector: four [30] blocks, then scalars.
    _SSE, _COUNT, _SUM_T, _SUM_T2 = (slice(i * NUM_COORDS, (i + 1) * NUM_COORDS) for i in range(4))
    _NME_SUM, _NME_ROWS, _ROWS = 4 * NUM_COORDS, 4 * NUM_COORDS + 1, 4 * NUM_COORDS + 2
    STATE_SIZE = 4 * NUM_COORDS + 3

    def __init__(self) -> None:
        self._state = np.zeros(self.STATE_SIZE, dtype=np.float64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """pred: [B, 30] pixels (no NaN where the target is present); target: [B, 30] pixels, NaN = missing."""
        pred = _as_coords(pred, "pred")
        target = _as_coords(target, "target")
        if pred.shape != target.shape:
            raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
        present = ~np.isnan(target)
        if np.isnan(pred[present]).any():
            raise ValueError("pred has NaN where the target is present")
        err = np.where(present, pred - target, 0.0)
        t = np.where(present, target, 0.0)
        s = self._state
        s[self._SSE] += (err**2).sum(axis=0)
        s[self._COUNT] += present.sum(axis=0)
        s[self._SUM_T] += t.sum(axis=0)
        s[self._SUM_T2] += (t**2).sum(axis=0)
        s[self._ROWS] += present.any(axis=1).sum()

        # NME: per row, mean Euclidean error over keypoints with both x and y present, divided by
        # the true distance between the eye centres; rows lacking either eye centre are skipped.
        p_pts, t_pts = pred.reshape(-1, NUM_KEYPOINTS, 2), target.reshape(-1, NUM_KEYPOINTS, 2)
        pt_present = present.reshape(-1, NUM_KEYPOINTS, 2).all(axis=2)  # [B, 15]
        dist = np.sqrt((np.where(pt_present[..., None], p_pts - t_pts, 0.0) ** 2).sum(axis=2))
        iod = np.linalg.norm(t_pts[:, _LEFT_EYE] - t_pts[:, _RIGHT_EYE], axis=1)  # NaN if missing
        ok = pt_present[:, _LEFT_EYE] & pt_present[:, _RIGHT_EYE] & (np.nan_to_num(iod) > 0)
        if ok.any():
            row_err = dist[ok].sum(axis=1) / pt_present[ok].sum(axis=1)
            s[self._NME_SUM] += (row_err / iod[ok]).sum()
            s[self._NME_ROWS] += ok.sum()

    def state(self) -> np.ndarray:
        """A copy of the sums, float64 [STATE_SIZE]; sum these across ranks, then `from_state`."""
        return self._state.copy()

    @classmethod
    def from_state(cls, state: np.ndarray) -> KeypointMetricAccumulator:
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape != (cls.STATE_SIZE,):
            raise ValueError(f"keypoint state must have {cls.STATE_SIZE} values, got {state.shape}")
        acc = cls()
        acc._state = state.copy()
        return acc

    def merge(self, states: Iterable[np.ndarray]) -> KeypointMetricAccumulator:
        """Add other accumulators' states into this one (in place) and return self."""
        for other in states:
            self._state += KeypointMetricAccumulator.from_state(other)._state
        return self

    def compute(self, mean_shape: np.ndarray | None = None) -> dict[str, Any]:
        """Metrics over everything seen. mean_shape: [30] training mean (see `mean_shape`), or None.

        rmse_px: sqrt(mean squared error over all present coordinates), pixels.
        per_keypoint_rmse_px: the same over the x and y of one keypoint.
        mean_shape_rmse_px: RMSE of always predicting mean_shape; None without one, or when a
        present target coordinate has no training mean (the baseline would not be comparable).
        """
        s = self._state
        sse, count, sum_t, sum_t2 = s[self._SSE], s[self._COUNT], s[self._SUM_T], s[self._SUM_T2]
        per_kp_sse = sse.reshape(NUM_KEYPOINTS, 2).sum(axis=1)
        per_kp_count = count.reshape(NUM_KEYPOINTS, 2).sum(axis=1)
        result: dict[str, Any] = {
            "n": int(s[self._ROWS]),
            "n_coordinates": int(count.sum()),
            "rmse_px": _sqrt_ratio(sse.sum(), count.sum()),
            "mean_shape_rmse_px": None,
            "nme_interocular": _ratio(s[self._NME_SUM], s[self._NME_ROWS]),
            "nme_rows": int(s[self._NME_ROWS]),
            "per_keypoint_rmse_px": {
                name: _sqrt_ratio(per_kp_sse[k], per_kp_count[k]) for k, name in enumerate(KEYPOINT_NAMES)
            },
            "per_keypoint_n": {name: int(per_kp_count[k] // 2) for k, name in enumerate(KEYPOINT_NAMES)},
        }
        if mean_shape is not None:
            m = np.asarray(mean_shape, dtype=np.float64).reshape(-1)
            if m.shape != (NUM_COORDS,):
                raise ValueError(f"mean_shape must have {NUM_COORDS} values, got {m.shape}")
            usable = ~np.isnan(m)
            m0 = np.where(usable, m, 0.0)
            # sum over present targets of (t - m)^2, per coordinate; clip tiny negative round-off.
            base_sse = np.maximum(sum_t2 - 2 * m0 * sum_t + count * m0**2, 0.0)
            base_sse = np.where(usable, base_sse, np.nan)
            if not (count[~usable] > 0).any():
                result["mean_shape_rmse_px"] = _sqrt_ratio(np.nansum(base_sse), count.sum())
            per_kp_base = base_sse.reshape(NUM_KEYPOINTS, 2).sum(axis=1)  # NaN if x or y lacks a mean
            result["per_keypoint_mean_shape_rmse_px"] = {
                name: None if np.isnan(per_kp_base[k]) else _sqrt_ratio(per_kp_base[k], per_kp_count[k])
                for k, name in enumerate(KEYPOINT_NAMES)
            }
        return result


def keypoint_report(
    accumulator: KeypointMetricAccumulator,
    mean_shape: np.ndarray | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `report.json` dict for the keypoint task: {"task": "keypoints", "n", "rmse_px",
    "mean_shape_rmse_px", "per_keypoint_rmse_px", ...} plus `metadata` (checkpoint, data, split...).

    JSON-safe: plain ints/floats, None where a value is undefined.
    """
    return _report("keypoints", accumulator.compute(mean_shape), metadata)


# --------------------------------------------------------------------------------------------------
# Emotion
# --------------------------------------------------------------------------------------------------


class EmotionMetricAccumulator:
    """A confusion matrix (rows = true class, columns = predicted class); its flat float64 copy is the state."""

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self._confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """pred: [B, C] logits or probabilities (argmax taken) or [B] predicted labels;
        target: [B] labels, -1 = no label (the row is skipped)."""
        pred = np.asarray(pred)
        target = np.asarray(target).astype(np.int64).reshape(-1)
        if pred.ndim == 2:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"pred has {pred.shape[1]} classes, expected {self.num_classes}")
            pred = pred.argmax(axis=1)
        pred = pred.astype(np.int64).reshape(-1)
        if pred.shape != target.shape:
            raise ValueError(f"pred {pred.shape} and target {target.shape} differ in length")
        keep = target >= 0
        pred, target = pred[keep], target[keep]
        for name, labels in (("target", target), ("pred", pred)):
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"{name} labels must lie in [0, {self.num_classes}), got {labels.min()}..{labels.max()}"
                )
        np.add.at(self._confusion, (target, pred), 1)

    @property
    def confusion(self) -> np.ndarray:
        """int64 [C, C] copy: confusion[t, p] = number of rows with true class t predicted as p."""
        return self._confusion.copy()

    def state(self) -> np.ndarray:
        """float64 [C * C] (exact for counts below 2**53); sum across ranks, then `from_state`."""
        return self._confusion.astype(np.float64).reshape(-1)

    @classmethod
    def from_state(cls, state: np.ndarray, num_classes: int | None = None) -> EmotionMetricAccumulator:
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        c = num_classes if num_classes is not None else math.isqrt(state.size)
        if c * c != state.size:
            raise ValueError(f"emotion state of {state.size} values is not a {c}x{c} confusion matrix")
        acc = cls(c)
        acc._confusion = np.rint(state).astype(np.int64).reshape(c, c)
        return acc

    def merge(self, states: Iterable[np.ndarray]) -> EmotionMetricAccumulator:
        """Add other accumulators' states into this one (in place) and return self."""
        for other in states:
            self._confusion += EmotionMetricAccumulator.from_state(other, self.num_classes)._confusion
        return self

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """accuracy, balanced_accuracy, macro_f1, per_class and confusion over everything seen.

        Zero-division convention (as scikit-learn's default): a class never predicted has precision
        0, a class with no support has recall 0, and F1 is 0 when precision + recall is 0; none is NaN.
        macro_f1 averages F1 over the classes that occur as a target OR a prediction (scikit-learn's
        f1_score(average="macro") without `labels`); they are listed in "macro_f1_classes".
        balanced_accuracy is the mean recall over classes with support > 0.
        """
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        cm = self._confusion.astype(np.float64)
        tp = np.diag(cm)
        support = cm.sum(axis=1)  # true rows per class
        predicted = cm.sum(axis=0)  # predictions per class
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
        pr_sum = precision + recall
        f1 = np.divide(2 * precision * recall, pr_sum, out=np.zeros_like(tp), where=pr_sum > 0)
        seen = (support > 0) | (predicted > 0)
        total = cm.sum()
        return {
            "n": int(total),
            "accuracy": _ratio(tp.sum(), total),
            "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else None,
            "macro_f1": float(f1[seen].mean()) if seen.any() else None,
            "macro_f1_classes": [names[i] for i in np.flatnonzero(seen)],
            "per_class": {
                names[i]: {
                    "precision": float(precision[i]),
                    "recall": float(recall[i]),
                    "f1": float(f1[i]),
                    "support": int(support[i]),
                    "predicted": int(predicted[i]),
                }
                for i in range(self.num_classes)
            },
            "class_names": names,
            "confusion": self._confusion.tolist(),
        }


def emotion_report(
    accumulator: EmotionMetricAccumulator,
    class_names: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `report.json` dict for the emotion task: {"task": "emotion", "n", "accuracy", "macro_f1",
    "per_class": {name: {precision, recall, f1, support, predicted}}, "confusion" (rows = true), ...}
    plus `metadata`. JSON-safe: plain ints/floats, None where a value is undefined.
    """
    return _report("emotion", accumulator.compute(class_names), metadata)


def _report(task: str, metrics: dict[str, Any], metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    report: dict[str, Any] = {"task": task, **metrics}
    for key, value in (metadata or {}).items():
        if key in report:
            raise ValueError(f"metadata key {key!r} would overwrite a computed metric")
        report[key] = value
    return json_safe(report)
