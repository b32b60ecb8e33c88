"""Horizontal-flip test-time augmentation: run a network on the crops and on their mirror images,
map the mirrored outputs back, average. Pure numpy around any forward function, so the predictor
(every backend) and `emokp evaluate` give the same answers.

Keypoints: the mirrored prediction is flipped back (x -> S - 1 - x, labels.py convention) with every
left_* / right_* pair swapped (FLIP_PERMUTATION), then averaged with the direct one, point by point.
Emotion: the logits of the two views are averaged (the temperature applies after, to the average).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from emokp_ray.labels import KEYPOINT_NAMES
from emokp_ray.tasks import KEYPOINTS, task_spec

Forward = Callable[[np.ndarray], np.ndarray]  # uint8 crops [N, S, S] -> float32 outputs [N, K]


def mirror(crops: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S] -> the same crops mirrored left-right (a new, contiguous array)."""
    return np.ascontiguousarray(crops[:, :, ::-1])


def unflip_keypoints(outputs: np.ndarray, size: int) -> np.ndarray:
    """Keypoint outputs [N, 30] predicted on mirrored crops -> the same points on the original crops."""
    return KEYPOINTS.mirrored_back(outputs, size)


def forward_with_flip(
    forward: Forward, crops: np.ndarray, task: str, keypoint_names: tuple[str, ...] = KEYPOINT_NAMES
) -> np.ndarray:
    """The average of the network's outputs on `crops` and (mapped back) on their mirror images.

    One forward call over both views at once (2N crops), so batching stays as efficient as without
    TTA. Keypoint models whose names are not Kaggle's 15 have no known left/right pairing: they get
    the direct outputs only.
    """
    n, spec = len(crops), task_spec(task)
    if n == 0 or not spec.mirrors(keypoint_names):
        return forward(crops)
    both = forward(np.concatenate([crops, mirror(crops)]))
    direct, mirrored = both[:n], spec.mirrored_back(both[n:], crops.shape[2])
    return ((direct.astype(np.float32) + mirrored.astype(np.float32)) / 2.0).astype(np.float32)
