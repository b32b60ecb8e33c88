"""Calibrated emotion probabilities: temperature scaling (Guo et al., 2017) and its measurement.

    p = softmax(logits / T)

T > 0 is one scalar fitted on the validation split by minimizing the negative log-likelihood (it
changes confidences, never the predicted class). It is stored in the checkpoint's meta
(`calibration.temperature`) and the predictor applies it; a checkpoint without one has T = 1.
Expected calibration error (ECE): the |accuracy - confidence| gap of equal-width confidence bins,
weighted by their share of the faces (15 bins, as in Guo et al.).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

ECE_BINS = 15
T_RANGE = (0.05, 20.0)  # search range of the temperature


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Logits [N, K] -> probabilities [N, K] (float64, rows sum to 1)."""
    z = logits.astype(np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=1, keepdims=True)


def temperature_of(calibration: Mapping[str, Any] | None) -> float:
    """The temperature a checkpoint's `calibration` meta gives (1.0 when absent)."""
    value = (calibration or {}).get("temperature")
    return float(value) if value else 1.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true labels [N] under softmax(logits / T)."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimizing the NLL of `labels` (golden-section search over log T; the NLL is unimodal in T)."""
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one labelled face")
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(60):  # (hi - lo) * 0.618^60 < 1e-11
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE and the per-bin table of a reliability diagram: confidence = max probability.

    Returns {"ece", "bins": [{"lo", "hi", "n", "confidence", "accuracy"}]} (empty bins have n = 0 and
    None for their means).
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        conf = float(confidence[inside].mean()) if n else None
        acc = float(correct[inside].mean()) if n else None
        if conf is not None and acc is not None:  # the bin holds a face
            ece += n / len(labels) * abs(acc - conf)
        table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n, "confidence": conf, "accuracy": acc})
    return {"ece": float(ece), "bins": table}
