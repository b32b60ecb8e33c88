"""A deterministic stand-in for the Haar face detector, for tests that must not depend on OpenCV.

It lives in its own importable module (not a test file) because Ray pickles it by reference into
the labeling actors, which import it by name.
"""

from __future__ import annotations

import numpy as np


class HalvesDetector:
    """No face in a flat image (grey standard deviation below 1); otherwise two faces, the left and
    the right half of the image, as (x, y, w, h) boxes, larger first (as FaceDetector.detect)."""

    def detect(self, grey: np.ndarray) -> list[tuple[int, int, int, int]]:
        if float(grey.std()) < 1.0:
            return []
        height, width = grey.shape
        half = width // 2
        return sorted([(0, 0, half, height), (half, 0, width - half, height)], key=lambda b: -b[2] * b[3])
