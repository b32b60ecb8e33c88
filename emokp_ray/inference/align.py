"""Face alignment geometry: 2x3 affine maps between an S x S crop and a photo, the least-squares
similarity from 5 landmarks, the per-network landmark templates, and the warped crop itself.

Coordinates are labels.py's pixel-centre convention on both sides (pixel (i, j) of a crop is the
point (i, j); OpenCV's warpAffine uses the same). A map `to_image` takes crop points to photo points;
keypoints predicted on a crop go back to the photo through it. No torch here: the detector
(detect.py) uses `warp_crop` too. The templates and what they cost are measured in predictor.py's
docstring (benchmarks/framing.py reproduces them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from emokp_ray.tasks import task_spec

# Aligned crops: where each training set puts the 5 detector landmarks (LANDMARK_NAMES order, (x, y),
# pixel-centre coordinates of its native S x S frame), medians measured by benchmarks/framing.py.
TEMPLATES: dict[str, tuple[int, tuple[tuple[float, float], ...]]] = {
    "kaggle": (96, ((63.12, 36.05), (31.73, 36.66), (47.32, 54.69), (60.61, 71.66), (34.72, 71.90))),  # keypoint net
    "fer": (48, ((32.70, 17.97), (14.65, 18.29), (23.67, 28.26), (31.21, 37.13), (16.13, 37.24))),  # emotion nets
}
ALIAS_MAX_SCALE = 1.25  # photo px per crop px above which an aligned crop is pre-shrunk by area averaging


def template_for(task: str, size: int) -> np.ndarray:
    """The task's landmark template [5, 2] in an S x S crop (the native frame rescaled, pixel centres)."""
    native, points = TEMPLATES[task_spec(task).framing]  # the training framing the task's network saw
    return (np.asarray(points, np.float64) + 0.5) * size / native - 0.5


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation; no reflection) taking points
    src [K, 2] to dst [K, 2] (Umeyama 1991), as a 2x3 matrix M: dst ~ M[:, :2] @ p + M[:, 2]."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / max((a**2).sum() / len(src), 1e-12))
    linear = scale * rotation
    return np.hstack([linear, (mu_d - linear @ mu_s)[:, None]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine map."""
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -linear @ matrix[:, 2:3]])


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [..., 2] through a 2x3 affine map."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def box_to_image(box: Sequence[float], size: int) -> np.ndarray:
    """The 2x3 map from an S x S crop of an axis-aligned box to the image (pixel centres):
    x_image = x + (x_crop + 0.5) w / S - 0.5 (same in y with h)."""
    x, y, w, h = (float(v) for v in box)
    sx, sy = w / size, h / size
    return np.array([[sx, 0.0, x + 0.5 * sx - 0.5], [0.0, sy, y + 0.5 * sy - 0.5]])


def aligned_to_image(landmarks: np.ndarray, task: str, size: int) -> np.ndarray:
    """The 2x3 map from the task's aligned S x S crop to the image: the similarity taking the
    template onto the detector's landmarks [5, 2] (image pixel centres)."""
    return similarity_transform(template_for(task, size), landmarks)


def warp_crop(image: np.ndarray, to_image: np.ndarray, size: int, zeros_outside: bool = False) -> np.ndarray:
    """The S x S crop whose pixel (i, j) is the image (uint8 [H, W] or [H, W, 3]) at to_image @ (i, j, 1)
    (bilinear; outside the image its edge pixels replicated, or zeros). A face more than
    ALIAS_MAX_SCALE image px per crop px is first shrunk by area averaging (as the training crops
    were), only the part of the image the crop covers."""
    import cv2

    scale = math.sqrt(abs(np.linalg.det(to_image[:, :2])))
    matrix = to_image
    source = image
    if scale > ALIAS_MAX_SCALE:
        corners = apply_affine(to_image, np.array([[-1.0, -1.0], [size, -1.0], [-1.0, size], [size, size]]))
        height, width = image.shape[:2]
        (left, top), (right, bottom) = corners.min(axis=0), corners.max(axis=0)
        x0, y0 = max(0, min(math.floor(left) - 1, width - 1)), max(0, min(math.floor(top) - 1, height - 1))
        x1, y1 = max(x0 + 1, min(math.ceil(right) + 2, width)), max(y0 + 1, min(math.ceil(bottom) + 2, height))
        region = image[y0:y1, x0:x1]
        out_w, out_h = max(1, round((x1 - x0) / scale)), max(1, round((y1 - y0) / scale))
        source = cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_AREA)
        fx, fy = out_w / (x1 - x0), out_h / (y1 - y0)
        # image pixel centres -> the shrunk region's pixel centres
        shrink = np.array([[fx, 0.0, (0.5 - x0) * fx - 0.5], [0.0, fy, (0.5 - y0) * fy - 0.5]])
        matrix = np.vstack([shrink, [0.0, 0.0, 1.0]])[:2] @ np.vstack([to_image, [0.0, 0.0, 1.0]])
    return cv2.warpAffine(
        np.ascontiguousarray(source),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT if zeros_outside else cv2.BORDER_REPLICATE,
    )
