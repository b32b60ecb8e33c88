"""Face detection in photos: OpenCV's frontal-face Haar cascade (the optional `detect` extra).

opencv-python-headless 4.x ships the cascade XML files under `cv2.data.haarcascades`; 5.x no longer
does, hence the pin `opencv-python-headless>=4.8,<5` in pyproject's `detect` extra. cv2 is imported
only when a detector is built, so the rest of the package works without it.

Which cascade: `haarcascade_frontalface_alt2.xml`. On 60 synthetic photos (117 faces,
`synthesize_photos(60, seed=1)`) at scale_factor 1.1 / min_neighbors 5 it found 100 faces with no
false positive, against 86 for `haarcascade_frontalface_default.xml`; on 416 real Kaggle faces
(upscaled 3x onto a padded canvas) it found 402. Histogram equalization did not help on either.

A Haar box is tighter than the training framing; `predictor.crop_box_from_detection` converts it
(the measured numbers are documented there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emokp_ray.errors import UserError

CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
INSTALL_HINT = "pip install 'emokp-ray[detect]' (opencv-python-headless>=4.8,<5)"
DETECT_MAX_SIDE = 1280  # larger photos are detected on a downscaled copy (Haar time grows with pixels)

Detection = tuple[int, int, int, int]  # (x, y, w, h) photo pixels; x, y = top-left corner of the box


def _import_cv2():
    """cv2, or a one-line UserError saying how to install it."""
    try:
        import cv2
    except ImportError:
        raise UserError(f"face detection needs OpenCV, which is not installed: {INSTALL_HINT}") from None
    return cv2


def cascade_path(cv2_module) -> Path:
    """The frontal-face cascade shipped with opencv-python(-headless) 4.x."""
    folder = getattr(getattr(cv2_module, "data", None), "haarcascades", None)
    path = Path(folder) / CASCADE_FILE if folder else None
    if path is None or not path.is_file():
        version = getattr(cv2_module, "__version__", "?")
        raise UserError(f"OpenCV {version} ships no Haar cascade {CASCADE_FILE} (5.x dropped them): {INSTALL_HINT}")
    return path


class FaceDetector:
    """Frontal faces in a grey photo with OpenCV's Haar cascade.

    min_size: smallest face side searched (photo px); scale_factor / min_neighbors: OpenCV's
    detectMultiScale settings (smaller scale_factor finds more, slower; more neighbours, fewer false
    positives). Photos whose longer side exceeds max_side are searched at max_side (boxes scaled back).
    """

    def __init__(
        self, min_size: int = 24, scale_factor: float = 1.1, min_neighbors: int = 5, max_side: int = DETECT_MAX_SIDE
    ):
        if min_size < 8 or not scale_factor > 1.0 or min_neighbors < 0 or max_side < 64:
            raise UserError(
                f"invalid detector settings: min_size {min_size} (>= 8), scale_factor {scale_factor} (> 1), "
                f"min_neighbors {min_neighbors} (>= 0), max_side {max_side} (>= 64)"
            )
        self._cv2 = _import_cv2()
        path = cascade_path(self._cv2)
        self._cascade = self._cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise UserError(f"OpenCV could not load the cascade {path}: reinstall with {INSTALL_HINT}")
        self.min_size, self.scale_factor, self.min_neighbors, self.max_side = (
            min_size,
            scale_factor,
            min_neighbors,
            max_side,
        )

    def detect(self, grey: np.ndarray) -> list[Detection]:
        """Face boxes (x, y, w, h) in `grey`'s pixels (uint8 [H, W]), largest first; [] when none."""
        if grey.dtype != np.uint8 or grey.ndim != 2:
            raise ValueError(f"detect expects a uint8 grey image [H, W], got {grey.dtype} {list(grey.shape)}")
        height, width = grey.shape
        scale = min(1.0, self.max_side / max(height, width))
        search = grey
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            search = self._cv2.resize(grey, size, interpolation=self._cv2.INTER_AREA)
        min_side = max(8, round(self.min_size * scale))
        found = self._cascade.detectMultiScale(
            np.ascontiguousarray(search),
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
        )
        boxes = [tuple(round(v / scale) for v in box) for box in (found if len(found) else [])]
        return sorted(boxes, key=lambda b: (-b[2] * b[3], b[1], b[0]))


def require_detector(**settings) -> FaceDetector:
    """A FaceDetector, or a one-line UserError saying how to install OpenCV when it is missing."""
    return FaceDetector(**settings)
