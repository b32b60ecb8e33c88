"""What the predictor answers: the faces of one image, as plain dataclasses.

Kept apart from predictor.py (which imports torch) so that processes that only carry or show results
never import torch: the Serve ingress unpickles these from the model replica (importing this module),
and render.py draws them. Importing torch there would add ~870 modules and ~160,000 long-lived objects
to a process that never runs a network, and every full garbage collection walks them (measured in the
ingress under load: ~0.1 s of CPU per collection, every few seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Box = tuple[float, float, float, float]  # (x, y, w, h) in the input image's pixels (corner coordinates)


@dataclass
class Face:
    """One face: its box and what each model says about it (None where that model is absent)."""

    box: Box
    keypoints: dict[str, tuple[float, float]] | None  # Kaggle names -> (x, y) input-image pixels
    emotion: str | None  # the most probable class
    probabilities: dict[str, float] | None  # every class -> probability (sums to 1)
    # The learned detector's confidence and its 5 landmarks (detect.LANDMARK_NAMES -> (x, y) input-image
    # pixels); None for Haar boxes, caller boxes and whole crops.
    score: float | None = None
    landmarks: dict[str, tuple[float, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: coordinates rounded to 0.001 px, probabilities and scores to 1e-6."""
        return {
            "box": [round(float(v), 3) for v in self.box],
            "score": None if self.score is None else round(float(self.score), 6),
            "landmarks": None
            if self.landmarks is None
            else {k: [round(x, 3), round(y, 3)] for k, (x, y) in self.landmarks.items()},
            "keypoints": None
            if self.keypoints is None
            else {k: [round(x, 3), round(y, 3)] for k, (x, y) in self.keypoints.items()},
            "emotion": self.emotion,
            "probabilities": None
            if self.probabilities is None
            else {k: round(p, 6) for k, p in self.probabilities.items()},
        }


@dataclass
class ImageResult:
    """The faces of one input image (in the order found: caller's boxes in order, detections largest first)."""

    width: int
    height: int
    faces: list[Face]

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "faces": [f.to_dict() for f in self.faces]}
