"""The warp kernel: per-sample affine matrices -> pixels and keypoints, pure numpy, no randomness.

Batches are dicts of numpy arrays: "image" uint8 [B, H, W], "keypoints" float32 [B, 30] (Kaggle
order, pixels, NaN = missing); every other key passes through untouched (no row is ever dropped or
reordered). The random policies that draw the matrices live in `augment/policies.py`.

Geometry. A sample's whole geometric change (augmentation and horizontal flip) is ONE affine map,
stored as its inverse
    M [B, 2, 3]: output pixel (x, y, 1) -> input pixel (x, y)
in the labels.py convention (origin at the centre of the top-left pixel). `warp_images` pulls pixels
through M with a vectorized bilinear gather; `transform_keypoints` pushes keypoints through M's
inverse and, for flipped samples, swaps left/right names (FLIP_PERMUTATION). Pixels and labels move
by the same matrix, so they cannot disagree. `AugmentPlan` holds the matrices (and an intensity map)
of one batch; `apply_plan` applies it. The output has the input's size: images reach their model's
input size through the one resize (data/resize.py) before they are augmented.

Borders: where M samples outside the input, "replicate" (the default; Keras fill_mode="nearest")
repeats the edge pixel and "reflect" mirrors the image about its outer edge (d c b a | a b c d,
scipy/Keras "reflect", numpy.pad "symmetric").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emokp_ray.labels import FLIP_PERMUTATION, NUM_KEYPOINTS

BORDER_MODES = ("replicate", "reflect")
# Pixels warped per chunk: keeps the ~10 float32 temporaries of a chunk inside the CPU cache
# (measured ~2x faster than whole-batch arrays for B=256 at 96x96 and at 48x48).
_CHUNK_PIXELS = 1 << 15

Size = tuple[int, int]  # (height, width) in pixels


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
# Matrices: homogeneous 3x3 maps, and the full output -> input map of a batch


def affine3(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[n, 2, 2] linear part and [n, 2] translation -> [n, 3, 3] homogeneous matrices."""
    m = np.zeros((len(a), 3, 3))
    m[:, :2, :2] = a
    m[:, :2, 2] = t
    m[:, 2, 2] = 1.0
    return m


def compose_warp(inverse_aug: np.ndarray, flipped: np.ndarray, size: Size) -> np.ndarray:
    """Full output -> input matrices [n, 2, 3] on images of `size` (h, w): centre the output pixel,
    mirror x if flipped, apply the augmentation's inverse map, un-centre."""
    height, width = size
    n = len(inverse_aug)
    sx = np.where(flipped, -1.0, 1.0)
    sy = np.ones(n)
    pre = affine3(
        np.stack([np.stack([sx, np.zeros(n)], -1), np.stack([np.zeros(n), sy], -1)], -2),
        np.stack([-sx * (width - 1) / 2, -sy * (height - 1) / 2], -1),
    )
    post = affine3(np.broadcast_to(np.eye(2), (n, 2, 2)), np.broadcast_to([(width - 1) / 2, (height - 1) / 2], (n, 2)))
    return (post @ inverse_aug @ pre)[:, :2, :]


# --------------------------------------------------------------------------------------------------
# Plans: a batch's drawn per-sample transforms, separate from applying them (tests and debugging read them)


@dataclass(frozen=True)
class AugmentPlan:
    """What one call does to each sample of a batch."""

    matrices: np.ndarray  # [B, 2, 3] float64, output pixel -> input pixel
    flipped: np.ndarray  # [B] bool, mirrored (left/right names swapped)
    gain: np.ndarray | None  # [B] intensity v -> v * gain + bias; None = unchanged
    bias: np.ndarray | None  # [B]
    withdrawn: np.ndarray  # [B] bool, geometric augmentation withdrawn: keypoints left the frame
    border: str


def batch_images(batch: dict) -> np.ndarray:
    """A batch's "image" as uint8 [B, H, W] (ValueError otherwise)."""
    images = np.asarray(batch["image"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f'batch["image"] must be uint8 [B, H, W], got {images.dtype} {images.shape}')
    return images


def batch_keypoints(batch: dict, n: int) -> np.ndarray | None:
    """A batch's "keypoints" as float32 [n, 30], or None when it carries none."""
    if batch.get("keypoints") is None:
        return None
    return np.asarray(batch["keypoints"], np.float32).reshape(n, 2 * NUM_KEYPOINTS)


def _is_plain_identity(matrices: np.ndarray) -> bool:
    return bool(np.array_equal(matrices, np.broadcast_to([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], matrices.shape)))


def apply_plan(batch: dict, plan: AugmentPlan) -> dict:
    """Apply a plan: a new batch dict with "image" and "keypoints" replaced (same sizes); other keys
    are the same objects. Unchanged arrays may be returned as they are."""
    images = batch_images(batch)
    n = len(images)
    out = dict(batch)
    geometric = not _is_plain_identity(plan.matrices)
    if geometric:
        out["image"] = warp_images(
            images, plan.matrices, (images.shape[1], images.shape[2]), plan.border, plan.gain, plan.bias
        )
    elif plan.gain is not None and plan.bias is not None:  # set together
        out["image"] = adjust_intensity(images, plan.gain, plan.bias)
    keypoints = batch_keypoints(batch, n)
    if keypoints is not None and geometric:
        out["keypoints"] = transform_keypoints(keypoints, plan.matrices, plan.flipped)
    return out
