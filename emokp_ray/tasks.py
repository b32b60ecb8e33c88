"""The two tasks, each described once: what its network outputs, how it trains and is scored, and
what it adds to the answers (label columns, HTTP response fields, class or keypoint names).

Training (training/loop.py, config.py), evaluation (evaluation/evaluate.py), the predictor
(inference/predictor.py, tta.py, quick.py), the label output and the HTTP schemas look a task up
here (`task_spec(name)`) instead of branching on its name. What a task needs from the layers above
this one is looked up the same way, by the task's name, in those layers: its rows, targets and
augmentation in data/task_data.py, its loss, metrics and report in training/task_training.py, its
dataset facts in training/facts.py. A third task is one more `TaskSpec` subclass in `SPECS` and one
entry in each of those.

This module sits at the bottom of the import graph (errors and labels only; numpy inside the
methods that need it), so models, data and artifacts can look a task up too, and `import emokp_ray`
and the CLI's parser stay light.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emokp_ray.errors import UserError
from emokp_ray.labels import KEYPOINT_NAMES

if TYPE_CHECKING:
    import numpy as np

Batch = Mapping[str, Any]  # "image" uint8 [B, S, S] plus the task's target column (numpy)


@dataclass(frozen=True)
class CurvePanel:
    """The task's panel of the learning-curves figure (evaluation/figures.py)."""

    title: str
    ylabel: str
    lines: tuple[tuple[str, str], ...]  # (metrics.jsonl key, legend label), drawn in colours C0, C1, ...
    baseline: tuple[str, str]  # the dashed baseline's key and label
    ylim: tuple[float | None, float | None]  # (bottom, top); None: matplotlib's


@dataclass(frozen=True)
class TaskSpec:
    """One task. The fields are data; the methods are the task's behaviour where code differs."""

    name: str
    target: str  # the batch column the network learns from: "keypoints" float32 [B, 30] or "label" int64 [B]
    coordinates: bool  # outputs are (x, y) pixel pairs (else class logits)
    default_outputs: int  # K of the output [B, K] unless the data says otherwise (the label scheme)
    default_input_size: int  # pixels, when the training config leaves input_size 0
    metric: tuple[str, str]  # the validation metric that picks the best checkpoint, and its order
    headline: str  # the report's main figure (also used for a near-duplicate holdout's figures)
    framing: str  # which training framing its network saw (inference/align.py TEMPLATES)
    mixable: bool  # mixup / cutmix can blend its targets
    # The fields of a face (results.Face.to_dict, the HTTP FaceOut) this task's model fills, with
    # their JSON types; None when the model is absent.
    response_fields: Mapping[str, Any]
    label_columns: tuple[str, ...]  # its columns in the label output (inference/label_output.py)
    curves: CurvePanel  # its learning-curves panel

    # ---------------------------------------------------------------- names
    def output_names(self, meta: Any) -> list[str]:
        """The names of a checkpoint's outputs, in output order (keypoint names or class names)."""
        raise NotImplementedError

    def model_info(self, meta: Any) -> dict[str, Any]:
        """What `/healthz`, `/v1/labels` and `emokp predict` add about such a model beyond run and weights."""
        return {}

    # ---------------------------------------------------------------- training
    def model_overrides(self, num_classes: int) -> dict[str, Any]:
        """Network config fields the task's data fixes (the emotion head's width = the scheme's classes)."""
        return {}

    def label_scheme(self, scheme: str) -> str | None:
        """The label scheme a checkpoint of this task records (None: the task has no classes)."""
        return None

    def labelled(self, batch: Batch) -> np.ndarray:
        """bool [B]: the rows that carry this task's label (Kaggle CSV rows may lack it)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- metrics
    def epoch_summary(self, row: Mapping[str, Any]) -> str:
        """The task's part of the console line per epoch."""
        raise NotImplementedError

    def report_summary(self, report: Mapping[str, Any]) -> str:
        """`emokp evaluate`'s console summary of a report."""
        raise NotImplementedError

    def release_figures(self, test: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
        """`emokp models`: a builtin model's test figures (builtin/release.json's entry and its "test")."""
        raise NotImplementedError

    # ---------------------------------------------------------------- inference
    def mirrors(self, names: Iterable[str]) -> bool:
        """Whether outputs with these names map back from a mirrored crop (flip TTA applies)."""
        return True

    def mirrored_back(self, outputs: np.ndarray, size: int) -> np.ndarray:
        """Outputs [N, K] predicted on mirrored S x S crops (size S) mapped back to the original crops."""
        return outputs

    def int8_fp32_nodes(self, graph: Any) -> list[str]:
        """The ONNX nodes int8 quantization leaves in fp32 (inference/backends.py fp32_nodes says why)."""
        return []


class KeypointTask(TaskSpec):
    """Facial keypoints: 15 (x, y) points in pixels, masked MSE, RMSE in pixels."""

    def output_names(self, meta: Any) -> list[str]:
        return list(meta.keypoint_names)

    def labelled(self, batch: Batch) -> np.ndarray:
        import numpy as np

        return ~np.isnan(np.asarray(batch["keypoints"])).all(axis=1)

    def epoch_summary(self, row: Mapping[str, Any]) -> str:
        base = row.get("val/mean_shape_rmse_px")
        base_txt = f" (mean shape {base:.2f})" if base is not None else ""
        return f"  val rmse {row['val/rmse_px']:.3f} px{base_txt}"

    def report_summary(self, report: Mapping[str, Any]) -> str:
        base = report.get("mean_shape_rmse_px")
        base_txt = f" (mean-shape baseline {base:.3f} px)" if base is not None else ""
        head = f"keypoints on {report['n']} faces: RMSE {report['rmse_px']:.3f} px{base_txt}"
        hold = report.get("near_duplicate_holdout")
        if hold:
            head += (
                f"\n  near-duplicate holdout ({hold['n']} faces whose twin was trained on): RMSE "
                f"{hold['rmse_px']:.3f} px; all {hold['all_n']} rows together: {hold['all_rmse_px']:.3f} px"
            )
        return head

    def release_figures(self, test: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
        nan = float("nan")
        return (
            f"test RMSE {test.get('rmse_px', nan):.3f} px on {test.get('n')} faces "
            f"(mean shape {test.get('mean_shape_rmse_px', nan):.3f})"
        )

    def mirrors(self, names: Iterable[str]) -> bool:
        return tuple(names) == KEYPOINT_NAMES  # other names have no known left/right pairing

    def mirrored_back(self, outputs: np.ndarray, size: int) -> np.ndarray:
        import numpy as np

        from emokp_ray.labels import flip_keypoints

        points = outputs.reshape(len(outputs), -1, 2)
        return flip_keypoints(points, size).reshape(len(outputs), -1).astype(np.float32)


class EmotionTask(TaskSpec):
    """Facial emotion: logits over a label scheme's classes, cross-entropy, accuracy and macro-F1."""

    def output_names(self, meta: Any) -> list[str]:
        return list(meta.class_names)

    def model_info(self, meta: Any) -> dict[str, Any]:
        return {"label_scheme": meta.label_scheme, "class_names": list(meta.class_names)}

    def model_overrides(self, num_classes: int) -> dict[str, Any]:
        return {"num_outputs": num_classes}

    def label_scheme(self, scheme: str) -> str | None:
        return scheme

    def labelled(self, batch: Batch) -> np.ndarray:
        import numpy as np

        return np.asarray(batch["label"]) >= 0

    def epoch_summary(self, row: Mapping[str, Any]) -> str:
        return f"  val acc {row['val/accuracy']:.4f}  macro-F1 {row['val/macro_f1']:.4f}"

    def report_summary(self, report: Mapping[str, Any]) -> str:
        head = f"emotion on {report['n']} faces: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}"
        recalls = ", ".join(
            f"{name} {v['recall']:.2f}" for name, v in report["per_class"].items() if v.get("recall") is not None
        )
        head += f"\n  recall per class: {recalls}"
        cal = report.get("calibration")
        if cal:
            head += (
                f"\n  calibration: ECE {cal['ece_uncalibrated']:.4f} at T=1, {cal['ece']:.4f} at the "
                f"checkpoint's T={cal['temperature']:.3f}"
            )
        return head

    def release_figures(self, test: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
        nan = float("nan")
        return (
            f"test accuracy {test.get('accuracy', nan):.3f}, macro-F1 {test.get('macro_f1', nan):.3f} "
            f"on {test.get('n')} faces, ECE {test.get('ece', nan):.3f} (T={entry.get('temperature', 1.0):.2f})"
        )

    def int8_fp32_nodes(self, graph: Any) -> list[str]:
        convs = [node.name for node in graph.node if node.op_type == "Conv"]
        heads = [node.name for node in graph.node if node.op_type == "Gemm"]
        return convs[:1] + heads


KEYPOINTS = KeypointTask(
    name="keypoints",
    target="keypoints",
    coordinates=True,
    default_outputs=2 * len(KEYPOINT_NAMES),
    default_input_size=96,
    metric=("val/rmse_px", "min"),
    headline="rmse_px",
    framing="kaggle",
    mixable=False,
    response_fields={"keypoints": dict[str, list[float]] | None},  # name -> [x, y], input-image pixels
    label_columns=("keypoints",),
    curves=CurvePanel(
        "Keypoint RMSE",
        "RMSE (pixels)",
        (("train/rmse_px", "train RMSE"), ("val/rmse_px", "val RMSE")),
        ("val/mean_shape_rmse_px", "mean-shape baseline (val)"),
        (0.0, None),
    ),
)
EMOTION = EmotionTask(
    name="emotion",
    target="label",
    coordinates=False,
    default_outputs=5,  # seed5
    default_input_size=48,  # FER's native size
    metric=("val/macro_f1", "max"),
    headline="accuracy",
    framing="fer",
    mixable=True,
    response_fields={"emotion": str | None, "probabilities": dict[str, float] | None},  # argmax class; class -> p
    label_columns=("emotion", "probabilities"),
    curves=CurvePanel(
        "Emotion accuracy",
        "score",
        (("train/accuracy", "train accuracy"), ("val/accuracy", "val accuracy"), ("val/macro_f1", "val macro-F1")),
        ("val/majority_accuracy", "majority-class baseline"),
        (0.0, 1.0),
    ),
)

SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in (KEYPOINTS, EMOTION)}
TASKS: tuple[str, ...] = tuple(SPECS)  # "keypoints", "emotion": the order every listing uses


def task_spec(name: str) -> TaskSpec:
    """The spec of a task by name; an unknown name is a UserError listing the known ones."""
    try:
        return SPECS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None
