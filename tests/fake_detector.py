"""A deterministic stand-in for a face detector, for tests that must not depend on OpenCV.

It lives in its own importable module (not a test file) because Ray pickles it by reference into
the labeling actors, which import it by name.
"""

from __future__ import annotations

import numpy as np

from emokp_ray.inference.detect import Detection


class HalvesDetector:
    """No face in a flat image (standard deviation below 1); otherwise two faces, the left and the
    right half of the image, as Detections without landmarks (cropped like Haar's boxes), larger
    first (as the detectors of detect.make_detector)."""

    def detect(self, image: np.ndarray) -> list[Detection]:
        if float(image.std()) < 1.0:
            return []
        height, width = image.shape[:2]
        half = width // 2
        boxes = sorted([(0, 0, half, height), (half, 0, width - half, height)], key=lambda b: -b[2] * b[3])
        return [Detection(box=tuple(float(v) for v in b)) for b in boxes]  # type: ignore[misc]
