"""The augmentation policies: label-preserving random transforms for keypoint and emotion batches.

`KeypointAugment` and `EmotionAugment` say what is drawn; `plan_*_augment` draws one batch's
per-sample transforms as an `AugmentPlan` (warp.py) and `augment_*_batch` draws and applies them in
one warp. Pure numpy, vectorized over a batch; no ray, no torch. Batches: "image" uint8 [B, H, W],
"keypoints" float32 [B, 30] (Kaggle order, pixels, NaN = missing), "label" int64 [B] (-1 = none).

Output images have the input's size (the one resize, data/resize.py, runs before augmentation).

Keypoints stay in the frame: a sample whose non-NaN keypoints would land outside [0, W-1] x [0, H-1]
gets its geometric augmentation re-drawn with every range halved, up to `max_redraws` times; if they
still leave, the sample gets no geometric augmentation (flip and intensity only) and is still
produced. A flip keeps an in-frame point in the frame. NaN keypoints are ignored by the check and
stay NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emokp_ray.data.augment.warp import (
    BORDER_MODES,
    AugmentPlan,
    Size,
    affine3,
    apply_plan,
    batch_images,
    batch_keypoints,
    compose_warp,
    keypoints_inside,
    transform_keypoints,
)
from emokp_ray.errors import UserError

# --------------------------------------------------------------------------------------------------
# Configs


def _check_common(cfg: KeypointAugment | EmotionAugment, ranges: dict[str, tuple[float, float]]) -> None:
    name = type(cfg).__name__
    if cfg.border not in BORDER_MODES:
        raise UserError(f"{name}.border must be one of {', '.join(BORDER_MODES)}, got {cfg.border!r}")
    for field in ("flip_prob", "affine_prob", "intensity_prob"):
        p = getattr(cfg, field, 0.0)
        if not 0.0 <= p <= 1.0:
            raise UserError(f"{name}.{field} must be in [0, 1], got {p}")
    for field, (lo, hi) in ranges.items():
        if not 0.0 < lo <= hi:
            raise UserError(f"{name}.{field} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
    if cfg.max_redraws < 0:
        raise UserError(f"{name}.max_redraws must be >= 0, got {cfg.max_redraws}")
    # Canonical forms (JSON configs give lists): tuples.
    for field in ranges:
        object.__setattr__(cfg, field, tuple(float(v) for v in getattr(cfg, field)))


@dataclass(frozen=True)
class KeypointAugment:
    """Augmentations for the keypoint model; every one keeps the 15 labels true.

    Per sample, independently: a horizontal flip with left/right names swapped (flip_prob); with
    affine_prob, a rotation about the image centre uniform in +-rotation_deg, an isotropic scale
    uniform in scale_range (>1 enlarges the face) and a shift uniform in +-shift_frac of the
    width/height; with intensity_prob, a contrast factor about the image mean and a brightness factor
    (multiplicative), each uniform in its range. `enabled=False` is the identity. Samples whose
    keypoints would leave the frame: see the module docstring.
    """

    enabled: bool = True
    flip_prob: float = 0.5
    affine_prob: float = 0.8
    rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    shift_frac: float = 0.05  # fraction of the input width (x) / height (y)
    intensity_prob: float = 0.8
    brightness_range: tuple[float, float] = (0.8, 1.2)
    contrast_range: tuple[float, float] = (0.8, 1.2)
    border: str = "replicate"
    max_redraws: int = 3  # halvings tried before the warp is withdrawn

    def __post_init__(self) -> None:
        _check_common(
            self,
            {
                "scale_range": self.scale_range,
                "brightness_range": self.brightness_range,
                "contrast_range": self.contrast_range,
            },
        )
        if self.rotation_deg < 0 or self.shift_frac < 0:
            raise UserError("KeypointAugment.rotation_deg and shift_frac must be >= 0")


@dataclass(frozen=True)
class EmotionAugment:
    """Keras ImageDataGenerator(rotation_range=15, width_shift_range=0.1, height_shift_range=0.1,
    shear_range=0.1, zoom_range=0.1, horizontal_flip=True, brightness_range=[0.8, 1.2]), vectorized.

    Matched semantics (keras_preprocessing / tf.keras, scipy path): the inverse map is
    R(theta) @ T(tx, ty) @ Shear(shear) @ Zoom(zx, zy) in (row, col) about the image centre, with
    theta ~ U(+-rotation_deg) degrees, tx ~ U(+-height_shift) * H rows, ty ~ U(+-width_shift) * W
    columns, shear ~ U(+-shear_deg) DEGREES (Keras's unit since 2.2; its default 0.1 is a 0.1 degree
    shear, well under a pixel: kept for equivalence, raise it for a visible shear), zx (rows) and zy
    (columns) drawn independently from zoom_range (inverse-map factors: >1 shows more of the image,
    i.e. shrinks the face); then a horizontal flip with probability flip_prob; then brightness
    out = clip(x * b), b ~ U(brightness_range) (PIL ImageEnhance.Brightness).
    Deliberate differences: Keras's brightness first stretches each image to 0..255 (array_to_img
    scale=True), which we do not; we round once, after the warp and brightness, not after each; a
    flip also swaps left/right keypoint names when the batch carries keypoints, and such keypoints
    are kept in the frame as for KeypointAugment. `enabled=False` is the identity.
    """

    enabled: bool = True
    rotation_deg: float = 15.0
    width_shift: float = 0.1  # fraction of the input width
    height_shift: float = 0.1  # fraction of the input height
    shear_deg: float = 0.1  # Keras shear_range, in degrees
    zoom_range: tuple[float, float] = (0.9, 1.1)  # Keras zoom_range=0.1 -> [0.9, 1.1]
    flip_prob: float = 0.5  # horizontal_flip=True
    brightness_range: tuple[float, float] = (0.8, 1.2)
    border: str = "replicate"  # Keras fill_mode="nearest"
    max_redraws: int = 3  # only matters for rows that carry keypoints

    def __post_init__(self) -> None:
        _check_common(self, {"zoom_range": self.zoom_range, "brightness_range": self.brightness_range})
        if min(self.rotation_deg, self.width_shift, self.height_shift, self.shear_deg) < 0:
            raise UserError("EmotionAugment rotation_deg, width_shift, height_shift and shear_deg must be >= 0")


AugmentConfig = KeypointAugment | EmotionAugment

# --------------------------------------------------------------------------------------------------
# Random geometry, as 3x3 inverse maps in centred coordinates (input pixels about the image centre)


def _rotation2(theta_rad: np.ndarray) -> np.ndarray:
    """[n] angles -> [n, 2, 2] [[cos, -sin], [sin, cos]]."""
    c, s = np.cos(theta_rad), np.sin(theta_rad)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _shrunk(lo_hi: tuple[float, float], factor: float) -> tuple[float, float]:
    """A multiplicative range pulled towards 1 by `factor` (1 = unchanged, 0 = {1})."""
    lo, hi = lo_hi
    return 1.0 + (lo - 1.0) * factor, 1.0 + (hi - 1.0) * factor


def _keypoint_geometry(
    cfg: KeypointAugment, n: int, in_size: Size, rng: np.random.Generator, factor: float
) -> np.ndarray:
    """Inverse maps [n, 3, 3] of `content -> scale * R(theta) * content + shift` (identity if not drawn)."""
    height, width = in_size
    apply = rng.random(n) < cfg.affine_prob
    theta = np.deg2rad(rng.uniform(-1.0, 1.0, n) * cfg.rotation_deg * factor)
    scale = rng.uniform(*_shrunk(cfg.scale_range, factor), n)
    shift = rng.uniform(-1.0, 1.0, (n, 2)) * cfg.shift_frac * factor * np.array([width, height])
    theta, scale = np.where(apply, theta, 0.0), np.where(apply, scale, 1.0)
    shift[~apply] = 0.0
    # Inverse of p' = s R(theta) p + t is p = R(-theta) (p' - t) / s.
    inv_linear = _rotation2(-theta) / scale[:, None, None]
    return affine3(inv_linear, -np.einsum("bij,bj->bi", inv_linear, shift))


# Swaps (row, col) <-> (x, y) in homogeneous coordinates: Keras builds its matrices in (row, col).
_SWAP_RC = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def keras_inverse_map(theta_deg, tx, ty, shear_deg, zx, zy) -> np.ndarray:
    """Keras apply_affine_transform's inverse map, [n, 3, 3] in centred (x, y) coordinates.

    Arguments are [n] arrays in Keras's meaning: theta_deg rotation, tx row shift and ty column shift
    in pixels, shear_deg shear angle, zx row zoom, zy column zoom (all of the output -> input map).
    """
    theta, shear = np.deg2rad(theta_deg), np.deg2rad(shear_deg)
    n = len(theta)
    ones, zeros = np.ones(n), np.zeros(n)
    rotation = affine3(_rotation2(theta), np.zeros((n, 2)))
    shift = affine3(np.broadcast_to(np.eye(2), (n, 2, 2)), np.stack([tx, ty], -1))
    shear_m = affine3(
        np.stack([np.stack([ones, -np.sin(shear)], -1), np.stack([zeros, np.cos(shear)], -1)], -2), np.zeros((n, 2))
    )
    zoom = affine3(np.stack([np.stack([zx, zeros], -1), np.stack([zeros, zy], -1)], -2), np.zeros((n, 2)))
    rc = rotation @ shift @ shear_m @ zoom  # (row, col), as Keras composes it
    return _SWAP_RC @ rc @ _SWAP_RC


def _emotion_geometry(
    cfg: EmotionAugment, n: int, in_size: Size, rng: np.random.Generator, factor: float
) -> np.ndarray:
    """Keras-distributed inverse maps [n, 3, 3] (see EmotionAugment)."""
    height, width = in_size
    theta = rng.uniform(-1.0, 1.0, n) * cfg.rotation_deg * factor
    tx = rng.uniform(-1.0, 1.0, n) * cfg.height_shift * factor * height
    ty = rng.uniform(-1.0, 1.0, n) * cfg.width_shift * factor * width
    shear = rng.uniform(-1.0, 1.0, n) * cfg.shear_deg * factor
    zx, zy = rng.uniform(*_shrunk(cfg.zoom_range, factor), (2, n))
    return keras_inverse_map(theta, tx, ty, shear, zx, zy)


# --------------------------------------------------------------------------------------------------
# Random intensity: per-sample (gain, bias) of v -> v * gain + bias, or None when off


def _keypoint_intensity(cfg: KeypointAugment, images: np.ndarray, rng: np.random.Generator):
    if cfg.intensity_prob == 0 or (cfg.brightness_range == (1.0, 1.0) and cfg.contrast_range == (1.0, 1.0)):
        return None, None
    n = len(images)
    apply = rng.random(n) < cfg.intensity_prob
    brightness = np.where(apply, rng.uniform(*cfg.brightness_range, n), 1.0)
    contrast = np.where(apply, rng.uniform(*cfg.contrast_range, n), 1.0)
    mean = images.mean(axis=(1, 2), dtype=np.float64)
    # brightness * (mean + contrast * (v - mean))
    return brightness * contrast, brightness * (1.0 - contrast) * mean


def _emotion_intensity(cfg: EmotionAugment, images: np.ndarray, rng: np.random.Generator):
    if cfg.brightness_range == (1.0, 1.0):
        return None, None
    n = len(images)
    return rng.uniform(*cfg.brightness_range, n), np.zeros(n)


# --------------------------------------------------------------------------------------------------
# Plans and the public batch functions


def _plan(
    batch: dict, cfg: AugmentConfig, rng: np.random.Generator, draw_geometry: Callable, draw_intensity: Callable
) -> AugmentPlan:
    images = batch_images(batch)
    n, height, width = (int(v) for v in images.shape)
    size = (height, width)
    identity = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    no_flip = np.zeros(n, bool)
    if not cfg.enabled:
        return AugmentPlan(compose_warp(identity, no_flip, size), no_flip, None, None, no_flip.copy(), cfg.border)
    flipped = rng.random(n) < cfg.flip_prob
    inverse_aug = draw_geometry(cfg, n, size, rng, 1.0)
    gain, bias = draw_intensity(cfg, images, rng)
    matrices = compose_warp(inverse_aug, flipped, size)
    withdrawn = np.zeros(n, bool)
    keypoints = batch_keypoints(batch, n)
    if keypoints is not None:
        bad = ~keypoints_inside(transform_keypoints(keypoints, matrices, flipped), size)
        for attempt in range(1, cfg.max_redraws + 1):
            if not bad.any():
                break
            rows = np.flatnonzero(bad)
            matrices[rows] = compose_warp(draw_geometry(cfg, rows.size, size, rng, 0.5**attempt), flipped[rows], size)
            bad[rows] = ~keypoints_inside(transform_keypoints(keypoints[rows], matrices[rows], flipped[rows]), size)
        rows = np.flatnonzero(bad)
        matrices[rows] = compose_warp(identity[rows], flipped[rows], size)
        withdrawn[rows] = True
    return AugmentPlan(matrices, flipped, gain, bias, withdrawn, cfg.border)


def plan_keypoint_augment(batch: dict, cfg: KeypointAugment, rng: np.random.Generator) -> AugmentPlan:
    """Draw the per-sample transforms of `augment_keypoint_batch` without applying them."""
    return _plan(batch, cfg, rng, _keypoint_geometry, _keypoint_intensity)


def plan_emotion_augment(batch: dict, cfg: EmotionAugment, rng: np.random.Generator) -> AugmentPlan:
    """Draw the per-sample transforms of `augment_emotion_batch` without applying them."""
    return _plan(batch, cfg, rng, _emotion_geometry, _emotion_intensity)


def augment_keypoint_batch(batch: dict, cfg: KeypointAugment, rng: np.random.Generator) -> dict:
    """Flip (names swapped), rotate/scale/shift, brightness/contrast: one warp per batch."""
    return apply_plan(batch, plan_keypoint_augment(batch, cfg, rng))


def augment_emotion_batch(batch: dict, cfg: EmotionAugment, rng: np.random.Generator) -> dict:
    """Keras-equivalent emotion augmentation (see EmotionAugment); labels pass through unchanged."""
    return apply_plan(batch, plan_emotion_augment(batch, cfg, rng))
