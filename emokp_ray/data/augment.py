"""Label-preserving augmentations for keypoint and emotion batches: pure numpy, vectorized over a batch.

Batches are dicts of numpy arrays (Ray Data `batch_format="numpy"`): "image" uint8 [B, H, W],
"keypoints" float32 [B, 30] (Kaggle order, pixels, NaN = missing), "label" int64 [B] (-1 = none).
Every other key passes through untouched: no row is ever dropped or reordered. No ray, no torch here.

Geometry. A sample's whole geometric change (augmentation, horizontal flip, resize to `output_size`)
is ONE affine map, stored as its inverse
    M [B, 2, 3]: output pixel (x, y, 1) -> input pixel (x, y)
in the labels.py convention (origin at the centre of the top-left pixel). `warp_images` pulls pixels
through M with a vectorized bilinear gather; `transform_keypoints` pushes keypoints through M's
inverse and, for flipped samples, swaps left/right names (FLIP_PERMUTATION). Pixels and labels move
by the same matrix, so they cannot disagree.

Borders: where M samples outside the input, "replicate" (the default; Keras fill_mode="nearest")
repeats the edge pixel and "reflect" mirrors the image about its outer edge (d c b a | a b c d,
scipy/Keras "reflect", numpy.pad "symmetric").

Keypoints stay in the frame: a sample whose non-NaN keypoints would land outside [0, W-1] x [0, H-1]
of the output gets its geometric augmentation re-drawn with every range halved, up to `max_redraws`
times; if they still leave, the sample gets no geometric augmentation (flip, resize and intensity
only) and is still produced. Flip and resize keep an in-frame point in the frame (a downscale by s
can put a point within 0.5 - 0.5/s px of the edge just outside it: the pixel extent itself shrinks).
NaN keypoints are ignored by the check and stay NaN.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emokp_ray.errors import UserError
from emokp_ray.labels import FLIP_PERMUTATION, NUM_KEYPOINTS

BORDER_MODES = ("replicate", "reflect")
# Pixels warped per chunk: keeps the ~10 float32 temporaries of a chunk inside the CPU cache
# (measured ~2x faster than whole-batch arrays for B=256 at 96x96 and at 48x48).
_CHUNK_PIXELS = 1 << 15

Size = tuple[int, int]  # (height, width) in pixels


# --------------------------------------------------------------------------------------------------
# Configs


def _size_or_none(size: int | tuple[int, int] | list[int] | None, where: str) -> Size | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if int(h) < 2 or int(w) < 2:
        raise UserError(f"{where}.output_size must be at least 2x2 pixels, got {size!r}")
    return int(h), int(w)


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
    # Canonical forms (JSON configs give lists): tuples and (h, w) sizes.
    for field in ranges:
        object.__setattr__(cfg, field, tuple(float(v) for v in getattr(cfg, field)))
    object.__setattr__(cfg, "output_size", _size_or_none(cfg.output_size, name))


@dataclass(frozen=True)
class KeypointAugment:
    """Augmentations for the keypoint model; every one keeps the 15 labels true.

    Per sample, independently: a horizontal flip with left/right names swapped (flip_prob); with
    affine_prob, a rotation about the image centre uniform in +-rotation_deg, an isotropic scale
    uniform in scale_range (>1 enlarges the face) and a shift uniform in +-shift_frac of the
    width/height; with intensity_prob, a contrast factor about the image mean and a brightness factor
    (multiplicative), each uniform in its range. `enabled=False` is the identity (plus the resize to
    output_size, if set). Samples whose keypoints would leave the frame: see the module docstring.
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
    output_size: int | tuple[int, int] | None = None  # (h, w) or a side; None keeps the input size
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
    are kept in the frame as for KeypointAugment. `enabled=False` is the identity (plus resize).
    """

    enabled: bool = True
    rotation_deg: float = 15.0
    width_shift: float = 0.1  # fraction of the input width
    height_shift: float = 0.1  # fraction of the input height
    shear_deg: float = 0.1  # Keras shear_range, in degrees
    zoom_range: tuple[float, float] = (0.9, 1.1)  # Keras zoom_range=0.1 -> [0.9, 1.1]
    flip_prob: float = 0.5  # horizontal_flip=True
    brightness_range: tuple[float, float] = (0.8, 1.2)
    output_size: int | tuple[int, int] | None = None
    border: str = "replicate"  # Keras fill_mode="nearest"
    max_redraws: int = 3  # only matters for rows that carry keypoints

    def __post_init__(self) -> None:
        _check_common(self, {"zoom_range": self.zoom_range, "brightness_range": self.brightness_range})
        if min(self.rotation_deg, self.width_shift, self.height_shift, self.shear_deg) < 0:
            raise UserError("EmotionAugment rotation_deg, width_shift, height_shift and shear_deg must be >= 0")


AugmentConfig = KeypointAugment | EmotionAugment


# --------------------------------------------------------------------------------------------------
# The warp: matrices -> pixels and keypoints


def _fold_coordinates(coords: np.ndarray, size: int, border: str) -> None:
    """Map sample coordinates (in place) into [0, size - 1] by the border rule."""
    if border == "reflect":
        period = 2.0 * size
        coords += 0.5  # reflect about -0.5 and size - 0.5 (the pixel edges)
        np.mod(coords, period, out=coords)
        np.subtract(period, coords, out=coords, where=coords >= size)
        coords -= 0.5
    # The half pixel beyond an edge pixel's centre interpolates that pixel with itself in both
    # modes, so clipping is exact there; in "replicate" it is the whole rule.
    np.clip(coords, 0.0, size - 1.0, out=coords)


def warp_images(
    images: np.ndarray,
    matrices: np.ndarray,
    out_size: Size,
    border: str = "replicate",
    gain: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Bilinear inverse warp of a batch: out[b, y, x] = images[b] sampled at matrices[b] @ (x, y, 1).

    images: uint8 [B, H, W] (H, W >= 2). matrices: [B, 2, 3] output pixel -> input pixel.
    gain, bias: optional [B] intensity map v -> v * gain + bias, applied before the one rounding.
    Returns uint8 [B, Ho, Wo]. An integer-valued matrix (identity, flip, integer shift) is exact.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n_all, height, width = images.shape
    if height < 2 or width < 2:
        raise ValueError(f"warp_images needs images of at least 2x2 pixels, got {height}x{width}")
    out_h, out_w = out_size
    out = np.empty((n_all, out_h, out_w), np.uint8)
    m = np.asarray(matrices, np.float32)
    xs = np.arange(out_w, dtype=np.float32)  # [Wo]
    ys = np.arange(out_h, dtype=np.float32)[:, None]  # [Ho, 1]
    plane = height * width
    step = max(1, _CHUNK_PIXELS // (out_h * out_w))
    for start in range(0, n_all, step):
        stop = min(n_all, start + step)
        mc = m[start:stop, :, :, None, None]  # [n, 2, 3, 1, 1]
        # Sample positions [n, Ho, Wo] in input pixels.
        sx = mc[:, 0, 0] * xs + (mc[:, 0, 1] * ys + mc[:, 0, 2])
        sy = mc[:, 1, 0] * xs + (mc[:, 1, 1] * ys + mc[:, 1, 2])
        _fold_coordinates(sx, width, border)
        _fold_coordinates(sy, height, border)
        # Top-left neighbour (x0, y0) <= (W-2, H-2) so the 2x2 gather stays inside the image; the
        # weights become fx, fy in [0, 1] (fx = 1 at the last column picks that column exactly).
        x0 = np.floor(sx)
        np.minimum(x0, width - 2, out=x0)
        sx -= x0
        y0 = np.floor(sy)
        np.minimum(y0, height - 2, out=y0)
        sy -= y0
        y0 *= width
        y0 += x0  # offset in the image, exact in float32 (< 2**24)
        idx = y0.astype(np.int32)
        idx += (np.arange(stop - start, dtype=np.int32) * plane)[:, None, None]
        flat = images[start:stop].reshape(-1)
        # Shifted views gather the right, lower and lower-right neighbours without index arithmetic.
        top = flat.take(idx).astype(np.float32)
        tmp = flat[1:].take(idx).astype(np.float32)
        tmp -= top
        tmp *= sx
        top += tmp
        bottom = flat[width:].take(idx).astype(np.float32)
        tmp = flat[width + 1 :].take(idx).astype(np.float32)
        tmp -= bottom
        tmp *= sx
        bottom += tmp
        bottom -= top
        bottom *= sy
        top += bottom
        _finish(top, out[start:stop], gain, bias, start, stop)
    return out


def _finish(values: np.ndarray, out: np.ndarray, gain, bias, start: int, stop: int) -> None:
    """Intensity map, clip to 0..255, round half up, store as uint8 (values float32 [n, H, W])."""
    if gain is not None:
        values *= np.asarray(gain[start:stop], np.float32)[:, None, None]
        values += np.asarray(bias[start:stop], np.float32)[:, None, None]
        np.clip(values, 0.0, 255.0, out=values)
    values += 0.5
    out[...] = values  # truncation of v + 0.5 = rounding (v >= 0)


def adjust_intensity(images: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W] -> clip(round(v * gain[b] + bias[b]), 0, 255) as uint8, no geometry."""
    n_all, height, width = images.shape
    out = np.empty_like(images, dtype=np.uint8)
    step = max(1, _CHUNK_PIXELS // (height * width))
    for start in range(0, n_all, step):
        stop = min(n_all, start + step)
        _finish(images[start:stop].astype(np.float32), out[start:stop], gain, bias, start, stop)
    return out


def _invert_affine(matrices: np.ndarray) -> np.ndarray:
    """[B, 2, 3] affine maps -> their inverses [B, 2, 3] (float64)."""
    a = np.asarray(matrices, np.float64)
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    inv = np.empty_like(a)
    inv[:, 0, 0] = a[:, 1, 1] / det
    inv[:, 0, 1] = -a[:, 0, 1] / det
    inv[:, 1, 0] = -a[:, 1, 0] / det
    inv[:, 1, 1] = a[:, 0, 0] / det
    inv[:, :, 2] = -np.einsum("bij,bj->bi", inv[:, :, :2], a[:, :, 2])
    return inv


def transform_keypoints(keypoints: np.ndarray, matrices: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Move keypoints with the pixels of `warp_images(images, matrices, ...)`.

    keypoints: [B, 30] input pixels, NaN allowed (stays NaN; a point missing one coordinate comes out
    missing both, since a rotation needs both). matrices: [B, 2, 3] output -> input.
    flipped: [B] bool, samples whose matrix contains a horizontal flip: their left/right names swap.
    Returns float32 [B, 30] in output pixels.
    """
    n = len(keypoints)
    forward = _invert_affine(matrices)  # input -> output
    points = np.asarray(keypoints, np.float64).reshape(n, NUM_KEYPOINTS, 2)
    moved = np.einsum("bij,bkj->bki", forward[:, :, :2], points) + forward[:, None, :, 2]
    flipped = np.asarray(flipped, bool)
    moved[flipped] = moved[flipped][:, FLIP_PERMUTATION]
    return moved.reshape(n, 2 * NUM_KEYPOINTS).astype(np.float32)


def keypoints_inside(keypoints: np.ndarray, size: Size) -> np.ndarray:
    """[B] bool: every non-NaN keypoint lies in [0, W-1] x [0, H-1]."""
    height, width = size
    x, y = keypoints[:, 0::2], keypoints[:, 1::2]
    ok_x = np.isnan(x) | ((x >= 0) & (x <= width - 1))
    ok_y = np.isnan(y) | ((y >= 0) & (y <= height - 1))
    return (ok_x & ok_y).all(axis=1)


# --------------------------------------------------------------------------------------------------
# Random geometry, as 3x3 inverse maps in centred coordinates (input pixels about the image centre)


def _affine3(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[n, 2, 2] linear part and [n, 2] translation -> [n, 3, 3] homogeneous matrices."""
    m = np.zeros((len(a), 3, 3))
    m[:, :2, :2] = a
    m[:, :2, 2] = t
    m[:, 2, 2] = 1.0
    return m


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
    return _affine3(inv_linear, -np.einsum("bij,bj->bi", inv_linear, shift))


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
    rotation = _affine3(_rotation2(theta), np.zeros((n, 2)))
    shift = _affine3(np.broadcast_to(np.eye(2), (n, 2, 2)), np.stack([tx, ty], -1))
    shear_m = _affine3(
        np.stack([np.stack([ones, -np.sin(shear)], -1), np.stack([zeros, np.cos(shear)], -1)], -2), np.zeros((n, 2))
    )
    zoom = _affine3(np.stack([np.stack([zx, zeros], -1), np.stack([zeros, zy], -1)], -2), np.zeros((n, 2)))
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


def _compose(inverse_aug: np.ndarray, flipped: np.ndarray, in_size: Size, out_size: Size) -> np.ndarray:
    """Full output -> input matrices [n, 2, 3]: centre the output pixel, mirror x if flipped, scale
    output pixels to input pixels (the resize), apply the augmentation's inverse map, un-centre."""
    (height, width), (out_h, out_w) = in_size, out_size
    n = len(inverse_aug)
    sx = np.where(flipped, -1.0, 1.0) * (width / out_w)
    sy = np.full(n, height / out_h)
    pre = _affine3(
        np.stack([np.stack([sx, np.zeros(n)], -1), np.stack([np.zeros(n), sy], -1)], -2),
        np.stack([-sx * (out_w - 1) / 2, -sy * (out_h - 1) / 2], -1),
    )
    post = _affine3(np.broadcast_to(np.eye(2), (n, 2, 2)), np.broadcast_to([(width - 1) / 2, (height - 1) / 2], (n, 2)))
    return (post @ inverse_aug @ pre)[:, :2, :]


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
# Plans: the drawn per-sample transforms, separate from applying them (tests and debugging read them)


@dataclass(frozen=True)
class AugmentPlan:
    """What one call does to each sample of a batch."""

    matrices: np.ndarray  # [B, 2, 3] float64, output pixel -> input pixel
    flipped: np.ndarray  # [B] bool, mirrored (left/right names swapped)
    gain: np.ndarray | None  # [B] intensity v -> v * gain + bias; None = unchanged
    bias: np.ndarray | None  # [B]
    withdrawn: np.ndarray  # [B] bool, geometric augmentation withdrawn: keypoints left the frame
    out_size: Size
    border: str


def _batch_images(batch: dict) -> np.ndarray:
    images = np.asarray(batch["image"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f'batch["image"] must be uint8 [B, H, W], got {images.dtype} {images.shape}')
    return images


def _batch_keypoints(batch: dict, n: int) -> np.ndarray | None:
    if batch.get("keypoints") is None:
        return None
    return np.asarray(batch["keypoints"], np.float32).reshape(n, 2 * NUM_KEYPOINTS)


def _plan(
    batch: dict, cfg: AugmentConfig, rng: np.random.Generator, draw_geometry: Callable, draw_intensity: Callable
) -> AugmentPlan:
    images = _batch_images(batch)
    n, height, width = images.shape
    in_size = (height, width)
    out_size = cfg.output_size or in_size
    identity = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    no_flip = np.zeros(n, bool)
    if not cfg.enabled:
        return AugmentPlan(
            _compose(identity, no_flip, in_size, out_size), no_flip, None, None, no_flip.copy(), out_size, cfg.border
        )
    flipped = rng.random(n) < cfg.flip_prob
    inverse_aug = draw_geometry(cfg, n, in_size, rng, 1.0)
    gain, bias = draw_intensity(cfg, images, rng)
    matrices = _compose(inverse_aug, flipped, in_size, out_size)
    withdrawn = np.zeros(n, bool)
    keypoints = _batch_keypoints(batch, n)
    if keypoints is not None:
        bad = ~keypoints_inside(transform_keypoints(keypoints, matrices, flipped), out_size)
        for attempt in range(1, cfg.max_redraws + 1):
            if not bad.any():
                break
            rows = np.flatnonzero(bad)
            matrices[rows] = _compose(
                draw_geometry(cfg, rows.size, in_size, rng, 0.5**attempt), flipped[rows], in_size, out_size
            )
            bad[rows] = ~keypoints_inside(transform_keypoints(keypoints[rows], matrices[rows], flipped[rows]), out_size)
        rows = np.flatnonzero(bad)
        matrices[rows] = _compose(identity[rows], flipped[rows], in_size, out_size)
        withdrawn[rows] = True
    return AugmentPlan(matrices, flipped, gain, bias, withdrawn, out_size, cfg.border)


def plan_keypoint_augment(batch: dict, cfg: KeypointAugment, rng: np.random.Generator) -> AugmentPlan:
    """Draw the per-sample transforms of `augment_keypoint_batch` without applying them."""
    return _plan(batch, cfg, rng, _keypoint_geometry, _keypoint_intensity)


def plan_emotion_augment(batch: dict, cfg: EmotionAugment, rng: np.random.Generator) -> AugmentPlan:
    """Draw the per-sample transforms of `augment_emotion_batch` without applying them."""
    return _plan(batch, cfg, rng, _emotion_geometry, _emotion_intensity)


def _is_plain_identity(matrices: np.ndarray) -> bool:
    return bool(np.array_equal(matrices, np.broadcast_to([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], matrices.shape)))


def apply_plan(batch: dict, plan: AugmentPlan) -> dict:
    """Apply a plan: a new batch dict with "image", "keypoints" (and "height"/"width" after a resize)
    replaced; other keys are the same objects. Unchanged arrays may be returned as they are."""
    images = _batch_images(batch)
    n = len(images)
    out = dict(batch)
    same_size = tuple(images.shape[1:]) == tuple(plan.out_size)
    geometric = not (same_size and _is_plain_identity(plan.matrices))
    if geometric:
        out["image"] = warp_images(images, plan.matrices, plan.out_size, plan.border, plan.gain, plan.bias)
    elif plan.gain is not None:
        out["image"] = adjust_intensity(images, plan.gain, plan.bias)
    keypoints = _batch_keypoints(batch, n)
    if keypoints is not None and geometric:
        out["keypoints"] = transform_keypoints(keypoints, plan.matrices, plan.flipped)
    if not same_size:
        for key, value in zip(("height", "width"), plan.out_size):
            if key in batch:
                out[key] = np.full(n, value, dtype=np.asarray(batch[key]).dtype)
    return out


# --------------------------------------------------------------------------------------------------
# Public batch functions


def augment_keypoint_batch(batch: dict, cfg: KeypointAugment, rng: np.random.Generator) -> dict:
    """Flip (names swapped), rotate/scale/shift, brightness/contrast, resize: one warp per batch."""
    return apply_plan(batch, plan_keypoint_augment(batch, cfg, rng))


def augment_emotion_batch(batch: dict, cfg: EmotionAugment, rng: np.random.Generator) -> dict:
    """Keras-equivalent emotion augmentation (see EmotionAugment); labels pass through unchanged."""
    return apply_plan(batch, plan_emotion_augment(batch, cfg, rng))


def resize_batch(batch: dict, size: int | tuple[int, int]) -> dict:
    """Resize images to `size` ((h, w) or a side) with keypoints scaled to match; nothing random.

    Bilinear at pixel centres: a 2x downscale averages each 2x2 block exactly; larger downscales alias
    (no prefilter). The identity (same objects) when the size already matches.
    """
    images = _batch_images(batch)
    n, height, width = images.shape
    out_size = _size_or_none(size, "resize_batch")
    identity = np.broadcast_to(np.eye(3), (n, 3, 3))
    no_flip = np.zeros(n, bool)
    plan = AugmentPlan(
        _compose(identity, no_flip, (height, width), out_size), no_flip, None, None, no_flip, out_size, "replicate"
    )
    return apply_plan(batch, plan)


def prepare_eval_batch(batch: dict, cfg: AugmentConfig) -> dict:
    """Validation/test counterpart of the augmenters: only the resize to cfg.output_size (never random)."""
    return batch if cfg.output_size is None else resize_batch(batch, cfg.output_size)


def flip_batch(batch: dict, rows: np.ndarray | None = None) -> dict:
    """Exact horizontal flip of `rows` ([B] bool; all rows if None): pixels mirrored, keypoints
    x -> (W-1) - x with left/right names swapped (labels.FLIP_PERMUTATION).

    Flipping twice restores pixels exactly, and keypoints exactly where float32 holds (W-1) - x
    exactly (e.g. any x on a 1/256 px grid); otherwise to within one float32 step at W-1 (< 1e-5 px
    at 96), since float32 cannot give every x and its mirror image the same precision."""
    images = _batch_images(batch)
    n, _, width = images.shape
    rows = np.ones(n, bool) if rows is None else np.asarray(rows, bool)
    out = dict(batch)
    new_images = images.copy()
    new_images[rows] = images[rows, :, ::-1]
    out["image"] = new_images
    keypoints = _batch_keypoints(batch, n)
    if keypoints is not None:
        points = keypoints.reshape(n, NUM_KEYPOINTS, 2).copy()
        points[rows] = points[rows][:, FLIP_PERMUTATION]
        points[rows, :, 0] = (width - 1) - points[rows, :, 0]
        out["keypoints"] = points.reshape(n, 2 * NUM_KEYPOINTS)
    return out


# --------------------------------------------------------------------------------------------------
# Callables for Ray Data map_batches (and plain loops)


def _fingerprint(batch: dict) -> int:
    """A cheap content hash of the batch's images (crc32): same batch, same random draw."""
    return zlib.crc32(np.ascontiguousarray(batch["image"]).data)


class _SeededAugmenter:
    """A picklable `batch -> batch` callable that draws from its own seeded generator.

    Each call's generator is seeded by (seed, epoch, calls so far by this object, crc32 of the
    batch's images). In a plain loop the object persists, so every batch and every epoch differs and
    a run is reproducible given the seed and the batch order. Ray Data copies the callable into each
    task or actor and each execution, restarting its counter: batches still differ (by content) and
    a result does not depend on which worker ran it, but an epoch repeats the previous one's draws
    unless its batches differ (a shuffle) or the caller passes a new `epoch`. seed=None draws fresh
    OS entropy once, at construction (not reproducible).
    """

    _augment: Callable[[dict, AugmentConfig, np.random.Generator], dict]

    def __init__(self, cfg: AugmentConfig, seed: int | None = 0, epoch: int = 0):
        if (seed is not None and seed < 0) or epoch < 0:
            raise UserError(f"augmenter seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
        self.cfg = cfg
        self.seed = int(np.random.SeedSequence().entropy) if seed is None else int(seed)
        self.epoch = int(epoch)
        self.calls = 0

    def __call__(self, batch: dict) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, self.calls, _fingerprint(batch)])
        self.calls += 1
        return self._augment(batch, self.cfg, rng)


class KeypointAugmenter(_SeededAugmenter):
    """`augment_keypoint_batch` as a seeded callable: KeypointAugmenter(cfg, seed, epoch=0)(batch)."""

    _augment = staticmethod(augment_keypoint_batch)


class EmotionAugmenter(_SeededAugmenter):
    """`augment_emotion_batch` as a seeded callable: EmotionAugmenter(cfg, seed, epoch=0)(batch)."""

    _augment = staticmethod(augment_emotion_batch)
