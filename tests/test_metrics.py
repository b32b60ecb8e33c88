"""Metrics: exact values on hand-computed examples, NaN masks, zero-support classes, accumulator
merging (what distributed evaluation relies on) and JSON-safe reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from emokp_ray.labels import KEYPOINT_NAMES, SEED5
from emokp_ray.training.metrics import (
    EmotionMetricAccumulator,
    KeypointMetricAccumulator,
    MeanAccumulator,
    emotion_report,
    json_safe,
    keypoint_report,
    mean_shape,
    prefixed_scalars,
)

LE, RE, NOSE = (KEYPOINT_NAMES.index(n) for n in ("left_eye_center", "right_eye_center", "nose_tip"))


def _kp(points: dict[int, tuple[float, float]], rows: int = 1) -> np.ndarray:
    """A [rows, 30] NaN array with the given keypoints set on every row."""
    out = np.full((rows, 30), np.nan)
    for k, (x, y) in points.items():
        out[:, 2 * k], out[:, 2 * k + 1] = x, y
    return out


@pytest.fixture
def sparse_example():
    # row 0 has the left eye (10, 20) and nose (30, 40); row 1 only the left eye (12, 22).
    target = np.vstack([_kp({LE: (10, 20), NOSE: (30, 40)}), _kp({LE: (12, 22)})])
    # Errors on present coordinates: row 0 eye (3, 4), nose (1, -2); row 1 eye (0, 0).
    # The prediction is NaN wherever the target is missing: those coordinates must be ignored.
    pred = np.vstack([_kp({LE: (13, 24), NOSE: (31, 38)}), _kp({LE: (12, 22)})])
    return pred, target


def test_rmse_counts_only_present_coordinates(sparse_example):
    acc = KeypointMetricAccumulator()
    acc.update(*sparse_example)
    m = acc.compute()
    # SSE = 9 + 16 + 1 + 4 + 0 + 0 = 30 over 6 present coordinates.
    assert m["rmse_px"] == pytest.approx(math.sqrt(30 / 6))
    assert m["n"] == 2 and m["n_coordinates"] == 6
    assert m["per_keypoint_rmse_px"]["left_eye_center"] == pytest.approx(math.sqrt(25 / 4))
    assert m["per_keypoint_rmse_px"]["nose_tip"] == pytest.approx(math.sqrt(5 / 2))
    assert m["per_keypoint_rmse_px"]["mouth_left_corner"] is None  # never present: undefined, not 0
    assert m["per_keypoint_n"]["left_eye_center"] == 2 and m["per_keypoint_n"]["nose_tip"] == 1
    assert m["mean_shape_rmse_px"] is None  # no mean shape given


def test_mean_shape_baseline(sparse_example):
    acc = KeypointMetricAccumulator()
    acc.update(*sparse_example)
    shape = _kp({LE: (11, 21), NOSE: (30, 40)})[0]
    m = acc.compute(mean_shape=shape)
    # Baseline squared errors: row 0 eye 1 + 1, nose 0; row 1 eye 1 + 1 -> 4 over 6 coordinates.
    assert m["mean_shape_rmse_px"] == pytest.approx(math.sqrt(4 / 6))
    assert m["per_keypoint_mean_shape_rmse_px"]["left_eye_center"] == pytest.approx(1.0)
    assert m["per_keypoint_mean_shape_rmse_px"]["nose_tip"] == pytest.approx(0.0)
    assert m["per_keypoint_mean_shape_rmse_px"]["mouth_left_corner"] is None


def test_mean_shape_baseline_undefined_when_a_present_coordinate_has_no_training_mean(sparse_example):
    acc = KeypointMetricAccumulator()
    acc.update(*sparse_example)
    m = acc.compute(mean_shape=_kp({LE: (11, 21)})[0])  # nose has no training mean
    assert m["mean_shape_rmse_px"] is None
    assert m["per_keypoint_mean_shape_rmse_px"]["left_eye_center"] == pytest.approx(1.0)
    assert m["per_keypoint_mean_shape_rmse_px"]["nose_tip"] is None


def test_mean_shape_is_nanmean_per_coordinate_and_streams():
    kp = np.vstack([_kp({LE: (10, 20)}), _kp({LE: (14, 30), NOSE: (48, 60)}), _kp({})])
    shape = mean_shape(kp)
    assert shape.shape == (30,)
    assert shape[2 * LE : 2 * LE + 2] == pytest.approx([12, 25])
    assert shape[2 * NOSE : 2 * NOSE + 2] == pytest.approx([48, 60])
    assert np.isnan(shape[2 * RE])
    streamed = mean_shape([{"keypoints": kp[:1]}, {"keypoints": kp[1:]}])
    np.testing.assert_allclose(streamed, shape, equal_nan=True)
    np.testing.assert_allclose(mean_shape(iter([kp[:2], kp[2:]])), shape, equal_nan=True)


def test_predicting_the_mean_shape_scores_the_baseline():
    rng = np.random.default_rng(0)
    target = rng.normal(48, 5, size=(40, 30))
    target[rng.random(target.shape) < 0.4] = np.nan
    shape = mean_shape(target)
    acc = KeypointMetricAccumulator()
    acc.update(np.broadcast_to(shape, target.shape), target)
    m = acc.compute(shape)
    assert m["rmse_px"] == pytest.approx(m["mean_shape_rmse_px"], rel=1e-9)


def test_nme_divides_mean_point_error_by_interocular_distance():
    target = _kp({LE: (60, 40), RE: (30, 40)})  # eyes 30 px apart
    pred = _kp({LE: (63, 44), RE: (30, 40)})  # left eye 5 px off, right eye exact
    acc = KeypointMetricAccumulator()
    acc.update(pred, target)
    acc.update(_kp({NOSE: (1, 1)}), _kp({NOSE: (0, 0)}))  # no eyes: excluded from NME
    m = acc.compute()
    assert m["nme_interocular"] == pytest.approx((5 + 0) / 2 / 30)
    assert m["nme_rows"] == 1


def test_keypoint_input_validation(sparse_example):
    pred, target = sparse_example
    acc = KeypointMetricAccumulator()
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.full_like(target, np.nan), target)
    with pytest.raises(ValueError, match="shape"):
        acc.update(pred[:, :28], target[:, :28])
    acc.update(pred.reshape(2, 15, 2), target.reshape(2, 15, 2))  # [B, 15, 2] is accepted
    assert acc.compute()["rmse_px"] == pytest.approx(math.sqrt(5))


def test_keypoint_accumulator_merge_of_halves_equals_whole():
    rng = np.random.default_rng(1)
    target = rng.uniform(0, 95, size=(50, 30))
    target[rng.random(target.shape) < 0.3] = np.nan
    pred = target + rng.normal(0, 2, size=target.shape)
    pred[np.isnan(pred)] = 0.0
    shape = mean_shape(target[:30])

    whole = KeypointMetricAccumulator()
    whole.update(pred, target)
    first, second = KeypointMetricAccumulator(), KeypointMetricAccumulator()
    first.update(pred[:20], target[:20])
    second.update(pred[20:], target[20:])
    merged = KeypointMetricAccumulator.from_state(first.state()).merge([second.state()])
    # What an all-reduce does: sum the state vectors, rebuild, compute.
    reduced = KeypointMetricAccumulator.from_state(first.state() + second.state())

    expected = whole.compute(shape)
    for acc in (merged, reduced):
        got = acc.compute(shape)
        assert got.keys() == expected.keys()
        for key in ("n", "n_coordinates", "nme_rows", "per_keypoint_n"):
            assert got[key] == expected[key]
        for key in ("rmse_px", "mean_shape_rmse_px", "nme_interocular"):
            assert got[key] == pytest.approx(expected[key], rel=1e-12)
        for name in KEYPOINT_NAMES:
            assert got["per_keypoint_rmse_px"][name] == pytest.approx(expected["per_keypoint_rmse_px"][name])
    assert first.state().shape == (KeypointMetricAccumulator.STATE_SIZE,)


def test_empty_keypoint_accumulator_is_undefined_not_nan():
    m = KeypointMetricAccumulator().compute(np.zeros(30))
    assert m["n"] == 0 and m["rmse_px"] is None and m["mean_shape_rmse_px"] is None
    assert m["nme_interocular"] is None


@pytest.fixture
def emotion_example():
    # 4 classes; class 2 is never predicted, class 3 has no support and no predictions.
    target = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0, 1])
    return pred, target


def test_emotion_metrics_by_hand(emotion_example):
    acc = EmotionMetricAccumulator(4)
    acc.update(*emotion_example)
    m = acc.compute(["a", "b", "c", "d"])
    assert m["confusion"] == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]  # rows = true
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(3 / 6)
    # precision tp/predicted: a 1/2, b 2/4; recall tp/support: a 1/2, b 2/3, c 0/1.
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "predicted": 2}
    )
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["f1"] == pytest.approx(4 / 7)  # 2 * 1/2 * 2/3 / (1/2 + 2/3)
    # Never predicted: precision 0 (not NaN); no support: recall 0 and f1 0.
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0}
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0}
    # macro F1 over classes seen as target or prediction (a, b, c): (1/2 + 4/7 + 0) / 3 = 5/14.
    assert m["macro_f1"] == pytest.approx(5 / 14)
    assert m["macro_f1_classes"] == ["a", "b", "c"]
    # balanced accuracy: mean recall over classes with support: (1/2 + 2/3 + 0) / 3 = 7/18.
    assert m["balanced_accuracy"] == pytest.approx(7 / 18)


def test_predicted_class_without_support_counts_in_macro_f1():
    # Same as scikit-learn's f1_score([0, 0], [0, 1], average="macro") == 1/3.
    acc = EmotionMetricAccumulator(2)
    acc.update(np.array([0, 1]), np.array([0, 0]))
    m = acc.compute()
    assert m["per_class"]["1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 1}
    assert m["macro_f1"] == pytest.approx(1 / 3)
    assert m["balanced_accuracy"] == pytest.approx(0.5)


def test_emotion_accepts_logits_and_skips_unlabelled_rows(emotion_example):
    pred, target = emotion_example
    logits = np.full((len(pred) + 1, 4), -1.0)
    logits[np.arange(len(pred)), pred] = 3.0
    labels_with_none = np.append(target, -1)  # the extra row has no emotion label
    from_logits, from_labels = EmotionMetricAccumulator(4), EmotionMetricAccumulator(4)
    from_logits.update(logits, labels_with_none)
    from_labels.update(pred, target)
    np.testing.assert_array_equal(from_logits.confusion, from_labels.confusion)


def test_emotion_input_validation():
    acc = EmotionMetricAccumulator(3)
    with pytest.raises(ValueError, match="classes"):
        acc.update(np.zeros((2, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="target labels"):
        acc.update(np.array([0, 1]), np.array([0, 3]))
    with pytest.raises(ValueError, match="length"):
        acc.update(np.array([0, 1, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="class names"):
        acc.compute(["only", "two"])


def test_emotion_accumulator_merge_of_halves_equals_whole():
    rng = np.random.default_rng(2)
    target = rng.integers(-1, 5, size=200)
    logits = rng.normal(size=(200, 5))
    whole, first, second = (EmotionMetricAccumulator(5) for _ in range(3))
    whole.update(logits, target)
    first.update(logits[:77], target[:77])
    second.update(logits[77:], target[77:])
    merged = EmotionMetricAccumulator.from_state(first.state()).merge([second.state()])
    reduced = EmotionMetricAccumulator.from_state(first.state() + second.state())
    expected = whole.compute(SEED5.classes)
    assert merged.compute(SEED5.classes) == expected
    assert reduced.compute(SEED5.classes) == expected
    assert expected["n"] == int((target >= 0).sum())


def test_empty_emotion_accumulator_is_undefined_not_nan():
    m = EmotionMetricAccumulator(5).compute(SEED5.classes)
    assert m["n"] == 0 and m["accuracy"] is None and m["macro_f1"] is None
    assert m["balanced_accuracy"] is None


def test_mean_accumulator_is_weighted_and_mergeable():
    a, b = MeanAccumulator(), MeanAccumulator()
    a.update(2.0, 3)
    b.update(4.0, 1)
    assert a.compute() == pytest.approx(2.0)
    assert MeanAccumulator.from_state(a.state()).merge([b.state()]).compute() == pytest.approx(10 / 4)
    assert MeanAccumulator().compute() is None


def test_reports_match_design_and_are_strict_json(sparse_example, emotion_example):
    kp = KeypointMetricAccumulator()
    kp.update(*sparse_example)
    report = keypoint_report(kp, mean_shape=np.full(30, 20.0), metadata={"split": "test", "checkpoint": "run/best"})
    text = json.dumps(report, allow_nan=False)  # raises on NaN/inf
    assert json.loads(text) == report
    assert report["task"] == "keypoints" and report["n"] == 2 and report["split"] == "test"
    assert isinstance(report["rmse_px"], float) and isinstance(report["mean_shape_rmse_px"], float)
    assert list(report["per_keypoint_rmse_px"]) == list(KEYPOINT_NAMES)
    assert report["per_keypoint_rmse_px"]["mouth_left_corner"] is None

    emo = EmotionMetricAccumulator(4)
    emo.update(*emotion_example)
    report = emotion_report(emo, ["a", "b", "c", "d"], metadata={"scheme": "custom"})
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert report["task"] == "emotion" and report["n"] == 6
    assert {"accuracy", "macro_f1", "per_class", "confusion"} <= report.keys()
    assert {"precision", "recall", "support"} <= report["per_class"]["d"].keys()

    with pytest.raises(ValueError, match="overwrite"):
        emotion_report(emo, metadata={"accuracy": 1.0})

    empty = keypoint_report(KeypointMetricAccumulator())
    assert json.loads(json.dumps(empty, allow_nan=False))["rmse_px"] is None


def test_json_safe_and_prefixed_scalars():
    value = {"a": np.float32(1.5), "b": np.array([1, 2]), "c": float("nan"), "d": np.int64(3), "e": (np.bool_(True),)}
    assert json_safe(value) == {"a": 1.5, "b": [1, 2], "c": None, "d": 3, "e": [True]}
    scalars = prefixed_scalars({"rmse_px": 2.5, "n": 4, "mean_shape_rmse_px": None, "per_class": {}}, "val")
    assert scalars == {"val/rmse_px": 2.5, "val/n": 4.0}


def test_against_scikit_learn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    target = rng.integers(0, 5, size=300)
    pred = np.where(rng.random(300) < 0.6, target, rng.integers(0, 4, size=300))  # class 4 rarely predicted
    acc = EmotionMetricAccumulator(5)
    acc.update(pred, target)
    m = acc.compute()
    assert m["accuracy"] == pytest.approx(metrics.accuracy_score(target, pred))
    assert m["macro_f1"] == pytest.approx(metrics.f1_score(target, pred, average="macro", zero_division=0))
    assert m["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(target, pred))
    np.testing.assert_array_equal(acc.confusion, metrics.confusion_matrix(target, pred, labels=range(5)))
