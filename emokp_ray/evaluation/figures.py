"""Report figures (PNG): learning curves, confusion matrix, reliability diagram, face grids and
per-keypoint RMSE.

Every function draws on a `matplotlib.figure.Figure` with its own Agg canvas: nothing here touches
pyplot or the global backend, so importing or calling this module is safe in a server, a Ray
worker or a test. Each writes one PNG (creating its folder) and returns its path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emokp_ray.tasks import SPECS

DPI = 100
PRED_COLOR = "#d62728"  # red: predictions, wrong labels
TRUE_COLOR = "#2ca02c"  # green: ground truth, right labels
BASELINE_COLOR = "#7f7f7f"


def _figure(width_in: float, height_in: float):
    """A Figure bound to an Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_path: str | os.PathLike) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


# --------------------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------------------


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows that carry a finite `key`; a later row for the same epoch wins
    (a resumed run repeats epochs). Rows without "epoch" are numbered 1, 2, ... in order."""
    by_epoch: dict[float, float] = {}
    for i, row in enumerate(rows):
        value = row.get(key)
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        by_epoch[float(row.get("epoch", i + 1))] = float(value)
    epochs = sorted(by_epoch)
    return epochs, [by_epoch[e] for e in epochs]


def _plot_keys(ax, rows, keys_styles: Sequence[tuple[str, str, dict]]) -> bool:
    """Plot each (key, label, style) present in rows; return whether anything was drawn."""
    drawn = False
    for key, label, style in keys_styles:
        x, y = _series(rows, key)
        if x:
            ax.plot(x, y, label=label, marker="o" if len(x) < 30 else None, markersize=3, **style)
            drawn = True
    return drawn


def plot_learning_curves(metrics_rows: Sequence[Mapping[str, Any]], out_path: str | os.PathLike) -> Path:
    """Loss per epoch (train/val) and the task metric: RMSE in pixels with the mean-shape baseline
    dashed (keypoints), or accuracy and macro-F1 (emotion). Rows are metrics.jsonl lines."""
    if not metrics_rows:
        raise ValueError("no metrics rows to plot")
    rows = list(metrics_rows)

    def has(key: str) -> bool:
        return any(key in row for row in rows)

    # the task whose headline metric the rows carry (tasks.py), if any
    spec = next((t for t in SPECS.values() if has(f"val/{t.headline}") or has(f"train/{t.headline}")), None)
    ncols = 2 if spec else 1
    fig = _figure(5.2 * ncols, 3.8)
    axes = fig.subplots(1, ncols, squeeze=False)[0]

    loss_ax = axes[0]
    _plot_keys(loss_ax, rows, [("train/loss", "train", {"color": "C0"}), ("val/loss", "val", {"color": "C1"})])
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="loss")

    if spec is not None:
        panel, ax = spec.curves, axes[1]
        lines: list[tuple[str, str, dict[str, Any]]] = [
            (key, label, {"color": f"C{i}"}) for i, (key, label) in enumerate(panel.lines)
        ]
        lines.append((*panel.baseline, {"color": BASELINE_COLOR, "linestyle": "--"}))
        _plot_keys(ax, rows, lines)
        ax.set(title=panel.title, xlabel="epoch", ylabel=panel.ylabel)
        ax.set_ylim(*panel.ylim)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_path)


# --------------------------------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------------------------------


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    out_path: str | os.PathLike,
    normalize: bool = True,
) -> Path:
    """Rows = true class, columns = predicted. normalize=True colours each row by its share (the
    diagonal is recall); every cell is annotated with its count (and share)."""
    counts = np.asarray(confusion, dtype=np.int64)
    c = len(class_names)
    if counts.shape != (c, c):
        raise ValueError(f"confusion has shape {counts.shape}, expected ({c}, {c}) for {c} class names")
    support = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    values = shares if normalize else counts.astype(np.float64)
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)

    size = 2.2 + 0.85 * c
    fig = _figure(size + 1.0, size)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class" if normalize else "count")
    for t in range(c):
        for p in range(c):
            text = f"{shares[t, p]:.2f}\n({counts[t, p]})" if normalize else f"{counts[t, p]}"
            dark = values[t, p] > 0.55 * vmax
            ax.text(p, t, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    labels_with_n = [f"{name}\n(n={int(n)})" for name, n in zip(class_names, support[:, 0])]
    ax.set_xticks(range(c), labels=class_names, rotation=35, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(c), labels=labels_with_n, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    total = int(counts.sum())
    accuracy = np.trace(counts) / total if total else float("nan")
    norm_note = "row-normalized" if normalize else "counts"
    ax.set_title(f"Confusion matrix ({norm_note}), accuracy {accuracy:.3f}, n={total}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_path)


# --------------------------------------------------------------------------------------------------
# Reliability diagram
# --------------------------------------------------------------------------------------------------


def plot_reliability(
    bins_before: Sequence[Mapping[str, Any]],
    bins_after: Sequence[Mapping[str, Any]],
    temperature: float,
    out_path: str | os.PathLike,
) -> Path:
    """Accuracy against confidence per bin (inference/calibration.py `reliability` tables), at T = 1
    and at the checkpoint's temperature; a calibrated model lies on the diagonal. Bar widths are the
    bins, the numbers under the axis the faces per bin."""
    fig = _figure(9.0, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, bins, title in (
        (axes[0], bins_before, "uncalibrated (T = 1)"),
        (axes[1], bins_after, f"temperature T = {temperature:.3f}"),
    ):
        lo = np.array([b["lo"] for b in bins])
        width = np.array([b["hi"] - b["lo"] for b in bins])
        acc = np.array([np.nan if b["accuracy"] is None else b["accuracy"] for b in bins])
        conf = np.array([np.nan if b["confidence"] is None else b["confidence"] for b in bins])
        n = np.array([b["n"] for b in bins])
        ax.bar(lo, np.nan_to_num(acc), width=width, align="edge", color="#1f77b4", edgecolor="white", label="accuracy")
        ax.bar(
            lo,
            np.nan_to_num(conf - acc),
            bottom=np.nan_to_num(acc),
            width=width,
            align="edge",
            color=PRED_COLOR,
            alpha=0.35,
            edgecolor="white",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "--", color=BASELINE_COLOR, linewidth=1)
        total = max(int(n.sum()), 1)
        ece = float(np.nansum(n / total * np.abs(acc - conf)))
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", title=f"{title}: ECE {ece:.3f}")
        for x, w, count in zip(lo, width, n):
            if count:
                ax.text(
                    x + w / 2, 0.02, str(int(count)), ha="center", va="bottom", fontsize=6, rotation=90, color="white"
                )
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, out_path)


# --------------------------------------------------------------------------------------------------
# Face grid
# --------------------------------------------------------------------------------------------------


def _points(keypoints: np.ndarray | None, i: int) -> np.ndarray | None:
    """Row i of [N, 30] keypoints as [15, 2] (x, y), or None."""
    if keypoints is None:
        return None
    return np.asarray(keypoints[i], dtype=np.float64).reshape(-1, 2)


def _label_title(i, pred_labels, true_labels, class_names, probabilities) -> tuple[str, str]:
    """('pred: happiness (0.93)\\ntrue: sad', colour): green if right, red if wrong, black if unknown."""

    def name(k):
        return class_names[k] if class_names is not None else str(k)

    lines, color = [], "black"
    pred = None
    if pred_labels is not None:
        pred = int(pred_labels[i])
    elif probabilities is not None:
        pred = int(np.argmax(probabilities[i]))
    if pred is not None:
        prob = f" ({float(probabilities[i][pred]):.2f})" if probabilities is not None else ""
        lines.append(f"pred: {name(pred)}{prob}")
    if true_labels is not None and int(true_labels[i]) >= 0:
        truth = int(true_labels[i])
        lines.append(f"true: {name(truth)}")
        if pred is not None:
            color = TRUE_COLOR if pred == truth else PRED_COLOR
    return "\n".join(lines), color


def plot_face_grid(
    images: np.ndarray,
    out_path: str | os.PathLike,
    pred_keypoints: np.ndarray | None = None,
    true_keypoints: np.ndarray | None = None,
    pred_labels: Sequence[int] | np.ndarray | None = None,
    true_labels: Sequence[int] | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    probabilities: np.ndarray | None = None,
    ncols: int = 6,
) -> Path:
    """A grid of grey faces [N, H, W] uint8 with predicted keypoints (red x) and true ones (green o),
    [N, 30] pixels, NaN = missing; titled with the emotion ("pred: happiness (0.93) / true: sad",
    green when right, red when wrong) or, for keypoints alone, that face's RMSE in pixels.

    Pixel centres sit at integer coordinates (labels.py's convention), which is imshow's default.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be [N, H, W] grey, got shape {images.shape}")
    n = len(images)
    if n == 0:
        raise ValueError("no images to plot")
    for what, arr in (
        ("pred_keypoints", pred_keypoints),
        ("true_keypoints", true_keypoints),
        ("pred_labels", pred_labels),
        ("true_labels", true_labels),
        ("probabilities", probabilities),
    ):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{what} has {len(arr)} rows for {n} images")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    has_labels = pred_labels is not None or true_labels is not None or probabilities is not None
    has_points = pred_keypoints is not None or true_keypoints is not None
    # Fixed layout in inches (tight_layout misjudges square images): each cell is a square image
    # with room for a one- or two-line title above it; a strip at the bottom holds the legend.
    side, gap = 1.8, 0.12
    title_h = 0.42 if has_labels else 0.26
    legend_h = 0.3 if has_points else 0.0
    width, height = ncols * (side + gap) + gap, nrows * (side + title_h) + gap + legend_h
    fig = _figure(width, height)
    axes = np.empty((nrows, ncols), dtype=object)
    for r in range(nrows):
        for c in range(ncols):
            left = gap + c * (side + gap)
            bottom = height - (r + 1) * (side + title_h)
            axes[r, c] = fig.add_axes((left / width, bottom / height, side / width, side / height))
    marker_size = 16 if images.shape[1] <= 64 else 14

    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        truth, pred = _points(true_keypoints, i), _points(pred_keypoints, i)
        if truth is not None:
            ax.scatter(
                truth[:, 0],
                truth[:, 1],
                s=marker_size,
                facecolors="none",
                edgecolors=TRUE_COLOR,
                linewidths=1.0,
                label="true",
            )
        if pred is not None:
            ax.scatter(
                pred[:, 0], pred[:, 1], s=marker_size, marker="x", c=PRED_COLOR, linewidths=1.0, label="predicted"
            )
        # Keep the view on the image even when a prediction falls outside it.
        ax.set_xlim(-0.5, images.shape[2] - 0.5)
        ax.set_ylim(images.shape[1] - 0.5, -0.5)
        if has_labels:
            title, color = _label_title(i, pred_labels, true_labels, class_names, probabilities)
        elif truth is not None and pred is not None:
            present = ~np.isnan(truth)
            err = (pred - truth)[present]
            title = f"RMSE {math.sqrt(np.mean(err**2)):.1f} px" if err.size else "no true keypoints"
            color = "black"
        else:
            title, color = "", "black"
        if title:
            ax.set_title(title, fontsize=8, color=color, pad=3)

    if has_points:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    return _save(fig, out_path)


# --------------------------------------------------------------------------------------------------
# Per-keypoint RMSE and emotion probabilities
# --------------------------------------------------------------------------------------------------


def plot_per_keypoint_rmse(
    per_keypoint: Mapping[str, float | None],
    out_path: str | os.PathLike,
    baseline: Mapping[str, float | None] | float | None = None,
) -> Path:
    """Horizontal bars of RMSE (pixels) per keypoint, in the given order. baseline: per-keypoint
    mean-shape RMSE (grey bars beside each) or one number (a dashed line). None values say 'n/a'."""
    names = list(per_keypoint)
    if not names:
        raise ValueError("no keypoints to plot")

    def values(mapping: Mapping[str, float | None]) -> np.ndarray:  # None (undefined) -> NaN
        return np.array([np.nan if (v := mapping.get(k)) is None else float(v) for k in names])

    model = values(per_keypoint)
    base = values(baseline) if isinstance(baseline, Mapping) else None
    line = None if baseline is None or isinstance(baseline, Mapping) else float(baseline)  # one number

    fig = _figure(7.5, 1.2 + 0.36 * len(names))
    ax = fig.subplots()
    y = np.arange(len(names))
    height = 0.4 if base is not None else 0.7
    offset = height / 2 if base is not None else 0.0
    ax.barh(y - offset, np.nan_to_num(model), height=height, color="C0", label="model")
    if base is not None:
        ax.barh(
            y + offset, np.nan_to_num(base), height=height, color=BASELINE_COLOR, alpha=0.6, label="mean-shape baseline"
        )
    elif line is not None:
        ax.axvline(line, color=BASELINE_COLOR, linestyle="--", label=f"mean-shape baseline ({line:.2f} px)")
    finite = np.concatenate([model[np.isfinite(model)]] + ([base[np.isfinite(base)]] if base is not None else []))
    xmax = max(float(finite.max()) if finite.size else 1.0, line if line is not None else 0.0)
    for yi, v in zip(y - offset, model):
        ax.text(
            (v if np.isfinite(v) else 0) + 0.01 * xmax,
            yi,
            f"{v:.2f}" if np.isfinite(v) else "n/a",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(y, labels=names, fontsize=8)
    ax.invert_yaxis()  # first keypoint at the top
    ax.set_xlim(0, xmax * 1.15)
    ax.set(xlabel="RMSE (pixels)", title="Keypoint RMSE per keypoint")
    ax.grid(axis="x", alpha=0.3)
    if base is not None or baseline is not None:  # below the axis, where it hides no bar
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    fig.tight_layout()
    return _save(fig, out_path)
