"""Procedural grey faces with exact keypoints and a visible emotion: the built-in data source.

Every face is defined in a CANONICAL frame: pixels of a 96x96 Kaggle-style crop at the neutral pose,
origin at the crop centre (47.5, 47.5), y down, +x towards the image's right, which is the subject's
LEFT (emokp_ray.labels' convention). A per-face pose matrix M [2, 3] (shift, scale, in-plane
rotation) maps canonical points to output pixels. Keypoints are canonical feature points mapped
through M; pixels are drawn by mapping every output pixel through M^-1 back into the canonical frame
and evaluating soft masks there (distance to ellipses, parabolas and strokes, edge = clip(0.5 - d)),
so the drawing and the keypoints come from one geometry and agree exactly.

Emotions (seed5) change the geometry: brow height and slant, eye opening, mouth curvature, width and
opening, plus asymmetry for disgust; identity (head shape, eye spacing, tones, hair) varies per face.

Speed: faces are rendered a chunk at a time with numpy over [B, h, w] pixel windows (each feature is
evaluated only on the rows and columns its chunk can reach), then blurred (separable [1, 2, 1]) and
given uniform sensor noise. Output is a pure function of (config, chunk index): same seed, same bytes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emokp_ray.data.schema import SPLITS, DatasetInfo, DatasetWriter, count_summary, make_table, merge_counts
from emokp_ray.errors import UserError
from emokp_ray.labels import KEYPOINT_IMAGE_SIZE, KEYPOINT_NAMES, NUM_KEYPOINTS, SEED5

CANONICAL_SIZE = KEYPOINT_IMAGE_SIZE  # 96: the canonical frame is a 96x96 crop

# ---------------------------------------------------------------------------------------------
# Configuration and results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides the synthetic faces; the output is a pure function of it."""

    n: int = 10_000
    seed: int = 0
    image_size: int = 96  # output crops are image_size x image_size grey
    max_shift_px: float = 4.0  # uniform shift in [-max, max] px (at 96 px), both axes
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_rotation_deg: float = 12.0  # uniform in-plane rotation in [-max, max] degrees
    noise_std_range: tuple[float, float] = (0.0, 8.0)  # per-face sensor noise std, grey levels
    blur_range: tuple[float, float] = (0.0, 1.6)  # per-face blur: 0 none, 1 = [1,2,1], 2 = twice
    intensity_range: tuple[float, float] = (0.4, 1.2)  # per-face expression strength (1 = typical)
    class_probabilities: tuple[float, ...] | None = None  # seed5 order; None = uniform
    chunk_size: int = 32  # faces per random stream and per render (part of the output's identity)

    def __post_init__(self) -> None:
        def bad(what: str) -> UserError:
            return UserError(f"invalid synth config: {what}")

        if self.n < 0:
            raise bad(f"n must be >= 0, got {self.n}")
        if self.image_size < 16:
            raise bad(f"image_size must be >= 16, got {self.image_size}")
        if self.chunk_size < 1:
            raise bad(f"chunk_size must be >= 1, got {self.chunk_size}")
        for name in ("scale_range", "noise_std_range", "blur_range", "intensity_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise bad(f"{name} must satisfy 0 <= low <= high, got {(lo, hi)}")
        if self.scale_range[0] <= 0 or self.scale_range[1] > 1.3:
            raise bad(f"scale_range must lie in (0, 1.3], got {self.scale_range}")
        if self.blur_range[1] > 2:
            raise bad(f"blur_range must lie in [0, 2], got {self.blur_range}")
        if not 0 <= self.max_rotation_deg <= 45 or not 0 <= self.max_shift_px <= 12:
            raise bad("max_rotation_deg must lie in [0, 45] and max_shift_px in [0, 12]")
        if self.class_probabilities is not None:
            p = np.asarray(self.class_probabilities, dtype=float)
            if p.shape != (SEED5.num_classes,) or (p < 0).any() or p.sum() <= 0:
                raise bad(
                    f"class_probabilities needs {SEED5.num_classes} non-negative values, got {self.class_probabilities}"
                )

    def probabilities(self) -> np.ndarray:
        p = (
            np.ones(SEED5.num_classes)
            if self.class_probabilities is None
            else np.asarray(self.class_probabilities, float)
        )
        return p / p.sum()


@dataclass(frozen=True)
class SynthBatch:
    """Synthetic faces: images uint8 [N, S, S], keypoints float32 [N, 30] (Kaggle order, crop
    pixels), labels int64 [N] (seed5)."""

    images: np.ndarray
    keypoints: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def as_batch(self) -> dict[str, np.ndarray]:
        """The pipeline's batch dict: {"image", "keypoints", "label"}."""
        return {"image": self.images, "keypoints": self.keypoints, "label": self.labels}


def make_config(n: int, seed: int = 0, **options: Any) -> SynthConfig:
    """SynthConfig(n, seed, **options); an unknown option is a UserError naming it."""
    known = {f.name for f in fields(SynthConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(
            f"unknown synth option(s) {', '.join(unknown)}; known: {', '.join(sorted(known - {'n', 'seed'}))}"
        )
    tuples = {k: tuple(v) for k, v in options.items() if isinstance(v, list)}  # JSON/CLI lists -> tuples
    return SynthConfig(n=n, seed=seed, **{**options, **tuples})


# ---------------------------------------------------------------------------------------------
# Face parameters: identity + expression, canonical pixels
# ---------------------------------------------------------------------------------------------

# Change from the identity's resting face per seed5 class (canonical px; +y = down), times a per-face
# intensity. Columns: anger, disgust, sad, happiness, surprise.
_EXPRESSION: dict[str, tuple[float, float, float, float, float]] = {
    "brow_in_dy": (4.0, 2.2, -3.2, -0.8, -5.5),  # inner brow end (anger: down; sad: up)
    "brow_out_dy": (-0.8, 0.8, 2.0, -0.8, -4.5),  # outer brow end (sad: down)
    "brow_in_dx": (-1.8, -1.0, 0.6, 0.0, 0.0),  # inner ends towards (-) the midline: frown
    "brow_arch": (-0.4, 0.0, 0.4, 0.3, 1.4),
    "brow_asym": (0.0, 2.2, 0.0, 0.0, 0.0),  # disgust: the sneer side's brow lower by this
    "eye_up": (-1.3, -1.3, -0.6, -0.5, 2.0),  # upper-lid opening (anger, disgust: narrowed)
    "eye_lo": (-0.7, -1.0, -0.1, -0.9, 1.1),  # lower-lid opening (happiness: cheeks push up)
    "mouth_k": (0.8, 1.6, 4.2, -5.5, 0.0),  # corners below (+) / above (-) the lip centre
    "mouth_w": (-2.5, -1.0, -0.8, 4.0, -4.5),  # half width
    "mouth_g": (0.0, 1.0, 0.0, 1.7, 5.2),  # half opening at the centre
    "mouth_tilt": (0.0, 2.6, 0.0, 0.0, 0.0),  # disgust: the sneer side's corner up by this
    "mouth_dy": (0.0, -1.0, 0.6, 0.0, 1.6),  # whole mouth (surprise: jaw drops)
    "lip_up": (-1.6, 0.9, -0.5, -1.2, -0.8),  # upper lip thickness (anger: pressed)
    "lip_lo": (-1.8, 0.0, -0.8, -1.0, -1.0),
    "teeth": (0.0, 0.45, 0.0, 0.6, 0.25),  # fraction of the opening showing upper teeth
    "nose_dy": (0.0, -1.0, 0.0, 0.0, 0.0),  # disgust: nose wrinkles up
}


def sample_faces(
    rng: np.random.Generator, labels: np.ndarray, intensity_range: tuple[float, float] = (0.4, 1.2)
) -> dict[str, np.ndarray]:
    """Random identities wearing the given seed5 expressions: a dict of float32 [B] arrays (canonical px,
    grey levels). The draw order is fixed, so the same generator state gives the same faces."""
    b = len(labels)

    def uni(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, b).astype(np.float32)

    strength = uni(*intensity_range)
    ex = {name: np.asarray(v, np.float32)[labels] * strength for name, v in _EXPRESSION.items()}
    sneer_left = rng.random(b) < 0.5  # which side an asymmetric (disgust) expression favours
    p: dict[str, np.ndarray] = {}

    # Head, neck and hair (canonical px).
    p["head_ax"], p["head_ay"], p["head_cy"] = uni(34.0, 40.0), uni(45.0, 51.0), uni(0.0, 4.0)
    p["jaw"] = uni(0.04, 0.16)  # head narrows by this fraction at the chin
    p["neck_w"] = p["head_ax"] * uni(0.5, 0.62)
    bald = rng.random(b) < 0.1
    p["hairline"] = np.where(bald, -80.0, uni(-44.0, -27.0)).astype(np.float32)  # fringe edge at u = part
    p["hair_curve"] = uni(0.004, 0.014)  # fringe edge descends by curve * (u - part)^2
    p["hair_part"] = uni(-8.0, 8.0)
    p["hair_volume"] = uni(1.5, 8.0)  # hair extends this far beyond the head
    p["hair_length"] = np.where(bald, -80.0, uni(-25.0, 45.0)).astype(np.float32)  # lowest y of the back hair

    # Tones (grey levels 0..255).
    skin = uni(105.0, 200.0)
    dark_hair = rng.random(b) < 0.75
    p["skin"] = skin
    p["hair"] = np.where(dark_hair, uni(10.0, 70.0), np.minimum(skin + uni(30.0, 60.0), 245.0)).astype(np.float32)
    p["background"] = uni(20.0, 235.0)
    p["bg_grad_x"], p["bg_grad_y"] = uni(-1.2, 1.2), uni(-1.2, 1.2)  # grey levels per canonical px
    p["brow"] = skin * uni(0.25, 0.55)
    p["lip"] = skin * uni(0.62, 0.8)
    p["cavity"] = uni(10.0, 45.0)
    p["teeth_tone"] = uni(195.0, 240.0)
    p["sclera"] = np.minimum(skin + uni(25.0, 55.0), 245.0).astype(np.float32)
    p["iris"] = uni(25.0, 90.0)
    p["pupil"] = uni(4.0, 20.0)
    p["socket"] = uni(0.05, 0.25)  # eye-socket shadow depth (fraction)
    p["shade"] = uni(0.08, 0.25)  # darkening towards the head outline
    p["light_x"], p["light_y"] = uni(-0.006, 0.006), uni(-0.004, 0.004)  # lighting gradient per canonical px

    # Eyes: centres at (+-eye_x, eye_y); almond of half width eye_hw between two parabolic lids.
    p["eye_x"], p["eye_hw"], p["eye_tilt"] = uni(14.5, 17.0), uni(5.2, 6.6), uni(-0.04, 0.12)
    eye_y = uni(-11.0, -8.5)
    p["eye_y_l"], p["eye_y_r"] = eye_y + uni(-0.4, 0.4), eye_y + uni(-0.4, 0.4)
    eye_up = np.maximum(uni(2.4, 3.2) + ex["eye_up"], 1.2)
    eye_lo = np.maximum(uni(1.8, 2.5) + ex["eye_lo"], 0.9)
    squint = 0.25 * ex["brow_asym"]  # disgust: the sneer side squints more
    p["eye_up_l"] = np.maximum(eye_up - squint * sneer_left, 1.2)
    p["eye_up_r"] = np.maximum(eye_up - squint * ~sneer_left, 1.2)
    p["eye_lo_l"], p["eye_lo_r"] = eye_lo, eye_lo.copy()
    p["iris_r"] = uni(2.3, 2.9)
    p["pupil_r"] = p["iris_r"] * uni(0.4, 0.55)

    # Brows: inner end above the eye's inner side, outer end beyond the outer corner, in |x| terms.
    brow_gap = uni(8.5, 11.5)
    brow_in_x = np.maximum(uni(7.5, 10.5) + ex["brow_in_dx"], 5.5)
    brow_out_x = p["eye_x"] + p["eye_hw"] + uni(4.0, 8.0)
    brow_drop = uni(0.0, 3.5)  # outer end lower than the inner at rest
    brow_slant = uni(-1.0, 1.0)  # resting inner-end offset: some faces look stern
    for side, eye_y_side, lowered in (("l", p["eye_y_l"], sneer_left), ("r", p["eye_y_r"], ~sneer_left)):
        inner_y = eye_y_side - brow_gap + brow_slant + ex["brow_in_dy"] + ex["brow_asym"] * lowered
        p[f"brow_in_x_{side}"] = brow_in_x
        p[f"brow_in_y_{side}"] = inner_y
        p[f"brow_out_x_{side}"] = brow_out_x
        p[f"brow_out_y_{side}"] = (
            eye_y_side - brow_gap + brow_drop + ex["brow_out_dy"] + 0.5 * ex["brow_asym"] * lowered
        )
    p["brow_arch"] = uni(0.5, 2.5) + ex["brow_arch"]
    p["brow_th"] = uni(2.0, 3.4)  # stroke thickness at the inner end

    # Nose: the tip sits on the nose's lower outline, a parabola rising towards the nostril wings.
    p["nose_y"] = uni(7.5, 11.5) + ex["nose_dy"]
    p["nose_w"], p["nose_curve"], p["nose_th"] = uni(4.5, 6.5), uni(0.04, 0.09), uni(1.3, 1.9)
    p["nose_bridge"] = uni(2.5, 4.0)  # half distance between the bridge shadows

    # Mouth: centre line y(s) = mouth_y + k s^2 + tilt s for s = x / mouth_w in [-1, 1].
    p["mouth_y"] = uni(23.5, 27.0) + ex["mouth_dy"]
    p["mouth_w"] = np.maximum(uni(11.5, 14.0) + ex["mouth_w"], 6.5)
    p["mouth_k"] = uni(-0.8, 0.8) + ex["mouth_k"]
    p["mouth_tilt"] = np.where(sneer_left, -1.0, 1.0).astype(np.float32) * ex["mouth_tilt"]  # -: left corner up
    p["mouth_g"] = ex["mouth_g"]
    p["lip_up"] = np.maximum(uni(2.8, 4.2) + ex["lip_up"], 1.2)
    p["lip_lo"] = np.maximum(uni(4.2, 6.2) + ex["lip_lo"], 1.4)
    p["teeth"] = ex["teeth"]
    return {k: np.asarray(v, np.float32) for k, v in p.items()}


def canonical_keypoints(p: dict[str, np.ndarray]) -> np.ndarray:
    """The 15 keypoints of the faces in the canonical frame: [B, 15, 2] float32, Kaggle order."""
    ex, hw, tilt = p["eye_x"], p["eye_hw"], p["eye_tilt"]
    # An eye's axis rises towards its outer corner by eye_tilt per px (canthal tilt).
    points = {
        "left_eye_center": (ex, p["eye_y_l"]),
        "right_eye_center": (-ex, p["eye_y_r"]),
        "left_eye_inner_corner": (ex - hw, p["eye_y_l"] + tilt * hw),
        "left_eye_outer_corner": (ex + hw, p["eye_y_l"] - tilt * hw),
        "right_eye_inner_corner": (-ex + hw, p["eye_y_r"] + tilt * hw),
        "right_eye_outer_corner": (-ex - hw, p["eye_y_r"] - tilt * hw),
        "left_eyebrow_inner_end": (p["brow_in_x_l"], p["brow_in_y_l"]),
        "left_eyebrow_outer_end": (p["brow_out_x_l"], p["brow_out_y_l"]),
        "right_eyebrow_inner_end": (-p["brow_in_x_r"], p["brow_in_y_r"]),
        "right_eyebrow_outer_end": (-p["brow_out_x_r"], p["brow_out_y_r"]),
        "nose_tip": (np.zeros_like(ex), p["nose_y"]),
        "mouth_left_corner": (p["mouth_w"], p["mouth_y"] + p["mouth_k"] + p["mouth_tilt"]),
        "mouth_right_corner": (-p["mouth_w"], p["mouth_y"] + p["mouth_k"] - p["mouth_tilt"]),
        "mouth_center_top_lip": (np.zeros_like(ex), p["mouth_y"] - p["mouth_g"] - p["lip_up"]),
        "mouth_center_bottom_lip": (np.zeros_like(ex), p["mouth_y"] + p["mouth_g"] + p["lip_lo"]),
    }
    return np.stack([np.stack(points[name], axis=-1) for name in KEYPOINT_NAMES], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Pose: canonical frame -> output pixels
# ---------------------------------------------------------------------------------------------


def pose_matrices(
    scale: np.ndarray, angle_rad: np.ndarray, shift: np.ndarray, out_size: float, offset: np.ndarray | float = 0.0
) -> np.ndarray:
    """Affine maps [B, 2, 3] from canonical points to output pixels: rotate by angle (positive turns
    the face clockwise on screen, y being down), scale by scale * out_size / 96, centre on the output
    crop's centre, then shift [B, 2] (output px) and offset (canvas px where the crop starts)."""
    k = scale * (out_size / CANONICAL_SIZE)
    cos, sin = np.cos(angle_rad) * k, np.sin(angle_rad) * k
    centre = (out_size - 1) / 2.0
    m = np.empty((len(scale), 2, 3), np.float64)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    m[:, :, 2] = centre + shift + offset
    return m


def apply_pose(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """points [B, K, 2] canonical -> [B, K, 2] output pixels through m [B, 2, 3]."""
    return (np.einsum("bij,bkj->bki", m[:, :, :2], points) + m[:, None, :, 2]).astype(np.float32)


def _invert(m: np.ndarray) -> np.ndarray:
    a_inv = np.linalg.inv(m[:, :, :2])
    return np.concatenate([a_inv, -np.einsum("bij,bj->bi", a_inv, m[:, :, 2])[:, :, None]], axis=2)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _cover(d_px: np.ndarray) -> np.ndarray:
    """Coverage of a pixel by a shape whose signed distance (px, negative inside) is d_px: a 1 px ramp.
    Works in place on d_px (always a temporary here): np.clip is several times slower."""
    np.subtract(0.5, d_px, out=d_px)
    np.maximum(d_px, 0.0, out=d_px)
    return np.minimum(d_px, 1.0, out=d_px)


def _clamp01(x: np.ndarray) -> np.ndarray:
    """x clipped to [0, 1] in place (x is a temporary)."""
    np.maximum(x, 0.0, out=x)
    return np.minimum(x, 1.0, out=x)


def _paint(view: np.ndarray, alpha: np.ndarray, tone: np.ndarray) -> None:
    """view <- view + alpha * (tone - view), in place (view is a window of the canvas)."""
    view += alpha * (tone - view)


class _Canvas:
    """A batch of output images plus the inverse pose that takes their pixels into the canonical frame."""

    def __init__(self, m: np.ndarray, height: int, width: int, background: tuple[np.ndarray, np.ndarray, np.ndarray]):
        """m: poses [B, 2, 3]; background: (grey, d grey / dx, d grey / dy) [B] each, canonical px."""
        self.m, self.inv = m, _invert(m)
        self.height, self.width = height, width
        self.full = (slice(0, height), slice(0, width))
        # Output pixels per canonical unit: a distance d (canonical) is d * px output pixels.
        self.px = np.sqrt(np.abs(np.linalg.det(m[:, :, :2])))[:, None, None].astype(np.float32)
        self.images = self.linear(self.full, *background)  # [B, H, W] float32 grey levels

    def window(
        self, x0: np.ndarray | float, x1: np.ndarray | float, y0: np.ndarray | float, y1: np.ndarray | float
    ) -> tuple[slice, slice] | None:
        """Rows and columns that can hold the canonical box [x0, x1] x [y0, y1] of any face, or None."""
        xs, ys = np.empty((len(self.m), 4)), np.empty((len(self.m), 4))  # the box's 4 corners
        xs[:, 0], xs[:, 1], xs[:, 2], xs[:, 3] = x0, x0, x1, x1
        ys[:, 0], ys[:, 1], ys[:, 2], ys[:, 3] = y0, y1, y0, y1
        m = self.m[:, :, :, None]
        px, py = m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2], m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2]
        c0, r0 = math.floor(px.min()) - 1, math.floor(py.min()) - 1
        c1, r1 = math.ceil(px.max()) + 2, math.ceil(py.max()) + 2
        r0, c0 = max(int(r0), 0), max(int(c0), 0)
        r1, c1 = min(int(r1), self.height), min(int(c1), self.width)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def linear(self, win: tuple[slice, slice], f0: Any, fx: Any, fy: Any) -> np.ndarray:
        """f0 + fx * x + fy * y at the window's pixels, (x, y) canonical, per-face coefficients [B] or
        scalars: [B, h, w] float32. Affine in the pixel grid, so one full-size add (the rest is [B, 1, w]
        and [B, h, 1])."""
        rows, cols = win
        ys = np.arange(rows.start, rows.stop, dtype=np.float64)[None, :, None]
        xs = np.arange(cols.start, cols.stop, dtype=np.float64)[None, None, :]
        f0, fx, fy = (np.asarray(f, np.float64).reshape(-1, 1, 1) for f in (f0, fx, fy))
        inv = self.inv[:, :, :, None, None]  # [B, 2, 3, 1, 1]: canonical = inv[:, :, :2] @ pixel + inv[:, :, 2]
        along_x = fx * inv[:, 0, 0] + fy * inv[:, 1, 0]
        along_y = fx * inv[:, 0, 1] + fy * inv[:, 1, 1]
        at_0 = f0 + fx * inv[:, 0, 2] + fy * inv[:, 1, 2]
        return (along_x * xs + at_0).astype(np.float32) + (along_y * ys).astype(np.float32)

    def local(
        self, win: tuple[slice, slice], cx: Any, cy: Any, mirror: float = 1.0, sx: Any = 1.0, sy: Any = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Canonical coordinates of the window's pixels relative to (cx, cy): u = mirror * (x - cx) / sx,
        v = (y - cy) / sy, each [B, h, w] float32."""
        ku, kv = mirror / np.asarray(sx, np.float64), 1.0 / np.asarray(sy, np.float64)
        return self.linear(win, -np.asarray(cx) * ku, ku, 0.0), self.linear(win, -np.asarray(cy) * kv, 0.0, kv)


def _col(x: np.ndarray) -> np.ndarray:
    """[B] -> [B, 1, 1] float32, to broadcast a per-face value over a window."""
    return np.asarray(x, np.float32)[:, None, None]


def _ellipse_r2(c: _Canvas, win: tuple[slice, slice], cy: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """(x / ax)^2 + ((y - cy) / ay)^2 at the window's pixels (canonical; centred on x = 0): [B, h, w]."""
    eu, ev = c.local(win, 0.0, cy, sx=ax, sy=ay)
    np.multiply(eu, eu, out=eu)
    np.multiply(ev, ev, out=ev)
    return np.add(eu, ev, out=eu)


def _ellipse_cover(r2: np.ndarray, radius_px: np.ndarray) -> np.ndarray:
    """Coverage of an ellipse from r2 (consumed): near the edge the distance is (r2 - 1) / 2 * radius
    (first order in r - 1, no square root), radius_px [B, 1, 1] the semi-axis in output pixels."""
    half = 0.5 * radius_px
    r2 *= -half
    r2 += 0.5 + half
    return _clamp01(r2)


def _draw_head(c: _Canvas, p: dict[str, np.ndarray], alpha: np.ndarray | None) -> None:
    """Back hair, neck, head and fringe: full-frame work, so written with few passes over the pixels."""
    px, full = c.px, c.full
    k = px[:, 0, 0]  # [B] output px per canonical px
    # Hair behind the head: an ellipse a little larger than the head, cut below y = hair_length.
    ax, ay = p["head_ax"] + p["hair_volume"], p["head_ay"] + p["hair_volume"]
    back = _ellipse_cover(
        _ellipse_r2(c, full, p["head_cy"] - 0.5 * p["hair_volume"], ax, ay), _col(np.minimum(ax, ay)) * px
    )
    back *= _clamp01(c.linear(full, 0.5 + p["hair_length"] * k, 0.0, -k))  # 0.5 - (y - hair_length) px
    _paint(c.images, back, _col(p["hair"]))
    # Neck: a vertical band below the head's centre, a little darker than the face.
    neck_win = c.window(-p["neck_w"], p["neck_w"], p["head_cy"], 2.0 * CANONICAL_SIZE)
    if neck_win is not None:
        side = np.abs(c.linear(neck_win, 0.0, k, 0.0))  # |x| px
        np.subtract(_col(0.5 + p["neck_w"] * k), side, out=side)  # 0.5 - (|x| - neck_w) px
        top = c.linear(neck_win, 0.5 - p["head_cy"] * k, 0.0, k)  # 0.5 - (head_cy - y) px
        neck = _clamp01(np.minimum(side, top, out=side))
        _paint(c.images[:, neck_win[0], neck_win[1]], neck, _col(p["skin"] * 0.8))
    # Head: an ellipse narrowing towards the chin (x scaled by 1 + jaw * y / ay), shaded towards its outline.
    eu, ev = c.local(full, 0.0, p["head_cy"], sx=p["head_ax"], sy=p["head_ay"])
    eu *= c.linear(full, 1.0 - p["jaw"] * p["head_cy"] / p["head_ay"], 0.0, p["jaw"] / p["head_ay"])  # 1 + jaw * ev
    np.multiply(eu, eu, out=eu)
    np.multiply(ev, ev, out=ev)
    r2 = np.add(eu, ev, out=eu)
    tone = r2 * _col(-p["skin"] * p["shade"])
    tone += _col(p["skin"])  # skin * (1 - shade * r2)
    head = _ellipse_cover(r2, _col(p["head_ax"]) * px)
    _paint(c.images, head, tone)
    # Fringe: hair over the forehead above the hairline y = hairline + curve (x - part)^2.
    # Coverage 0.5 - (y - hairline - curve (x - part)^2) px = [0.5 + (hairline - y) px] + [sqrt(curve px) (x - part)]^2.
    bend = c.linear(full, -p["hair_part"] * np.sqrt(p["hair_curve"] * k), np.sqrt(p["hair_curve"] * k), 0.0)
    np.multiply(bend, bend, out=bend)
    bend += c.linear(full, 0.5 + p["hairline"] * k, 0.0, -k)
    fringe = _clamp01(bend)
    fringe *= np.maximum(head, back, out=tone)  # max: no seam at the head's edge
    _paint(c.images, fringe, _col(p["hair"]))
    if alpha is not None:  # foreground = hair, neck or head (photos composite faces with it)
        np.maximum(head, back, out=alpha)
        if neck_win is not None:
            region = alpha[:, neck_win[0], neck_win[1]]
            np.maximum(region, neck, out=region)


def _draw_eye(c: _Canvas, p: dict[str, np.ndarray], side: str) -> None:
    o = 1.0 if side == "l" else -1.0  # subject's left eye is on the image's right (+x)
    cx, cy, hw = o * p["eye_x"], p[f"eye_y_{side}"], p["eye_hw"]
    up, lo = p[f"eye_up_{side}"], p[f"eye_lo_{side}"]
    # The window holds the socket shadow (1.6 hw by 6 px around (cx, cy - 1.5)), which holds the eye.
    win = c.window(cx - 1.6 * hw, cx + 1.6 * hw, cy - 7.5, cy + 5.5)
    if win is None:
        return
    view = c.images[:, win[0], win[1]]
    px = c.px
    u, v = c.local(win, cx, cy, mirror=o)  # u > 0 towards the outer corner
    # Socket: a soft shadow around the eye, deepest just above it (under the brow ridge).
    su, sv = u / _col(1.6 * hw), (v + 1.5) / 6.0
    view *= 1.0 - _col(p["socket"]) * _clamp01(1.0 - (su * su + sv * sv))
    vv = v + _col(p["eye_tilt"]) * u  # along the tilted eye axis
    s = u / _col(hw)
    q = 1.0 - s * s  # 1 at the centre, 0 at the corners
    up_edge = -_col(up) * q  # upper lid y (relative to the axis)
    lo_edge = _col(lo) * q
    eye = _cover(np.maximum(up_edge - vv, vv - lo_edge) * px)
    _paint(view, eye, _col(p["sclera"]))
    r = np.sqrt(u * u + v * v)
    _paint(view, eye * _cover((r - _col(p["iris_r"])) * px), _col(p["iris"]))
    _paint(view, eye * _cover((r - _col(p["pupil_r"])) * px), _col(p["pupil"]))
    # Upper lid line (lashes): a dark stroke centred on the upper lid, corner to corner, 1.3 px thick
    # across the lid (vertical distance / sqrt(1 + slope^2): the lid is steep near the corners).
    slope = s * _col(2.0 * up / hw) - _col(p["eye_tilt"])
    across = np.abs(vv - up_edge) / np.sqrt(1.0 + slope * slope)
    lid = _cover(np.maximum(across - 0.65, (np.abs(s) - 1.0) * _col(hw) - 0.3) * px)
    _paint(view, lid, _col(p["brow"]))


def _draw_brow(c: _Canvas, p: dict[str, np.ndarray], side: str) -> None:
    o = 1.0 if side == "l" else -1.0
    x_in, y_in = p[f"brow_in_x_{side}"], p[f"brow_in_y_{side}"]
    x_out, y_out = p[f"brow_out_x_{side}"], p[f"brow_out_y_{side}"]
    th, arch = p["brow_th"], p["brow_arch"]
    top = np.minimum(y_in, y_out) - np.maximum(arch, 0) - th
    bottom = np.maximum(y_in, y_out) + th
    win = c.window(np.minimum(o * x_in, o * x_out) - th, np.maximum(o * x_in, o * x_out) + th, top, bottom)
    if win is None:
        return
    view = c.images[:, win[0], win[1]]
    length = x_out - x_in
    # t: 0 at the inner end, 1 at the outer end; centre line y(t) = y_in + dy t - 4 arch t (1 - t).
    t, v = c.local(win, o * x_in, 0.0, mirror=o, sx=length)
    dy, a4 = _col(y_out - y_in), _col(4.0 * arch)
    centre = _col(y_in) + t * (dy - a4 + a4 * t)
    beyond = np.maximum(np.abs(t - 0.5) - 0.5, 0.0) * _col(length)  # past an end, along the brow
    half_th = _col(0.5 * th) * (1.0 - 0.35 * _clamp01(t))  # tapers towards the outer end
    d = np.sqrt(np.square(v - centre) + beyond * beyond) - half_th
    _paint(view, _cover(d * c.px), _col(p["brow"]))


def _draw_nose(c: _Canvas, p: dict[str, np.ndarray]) -> None:
    ny, nw, bridge = p["nose_y"], p["nose_w"], p["nose_bridge"]
    win = c.window(-nw - 2.0, nw + 2.0, ny - 20.0, ny + 2.5)
    if win is None:
        return
    view = c.images[:, win[0], win[1]]
    px = c.px
    u, v = c.local(win, 0.0, ny)
    au = np.abs(u)
    # Bridge shadows: soft lines at |u| = bridge widening to the nostril wings, from y = -18 to -3.
    along = _clamp01((v + 18.0) / 15.0)
    side_x = _col(bridge) + along * _col(0.85 * nw - bridge)
    shadow = 0.25 * _clamp01(1.0 - np.abs(au - side_x) / 1.6) * (along > 0) * (v < -2.0)
    _paint(view, shadow, _col(p["brow"]))
    # Lower outline through the tip: y = -curve u^2 (the wings are higher), |u| <= nose_w.
    d = np.maximum(np.abs(v + _col(p["nose_curve"]) * u * u) - _col(0.5 * p["nose_th"]), au - _col(nw))
    _paint(view, 0.8 * _cover(d * px), _col(p["brow"]))
    # Nostrils: small dark ellipses either side of the tip, just above the outline.
    nu = (au - _col(0.5 * nw)) / 1.5
    nv = (v + _col(p["nose_curve"] * (0.5 * nw) ** 2) + 1.0) / 0.9
    _paint(view, 0.7 * _cover((np.sqrt(nu * nu + nv * nv) - 1.0) * 0.9 * px), _col(p["cavity"]))


def _draw_mouth(c: _Canvas, p: dict[str, np.ndarray]) -> None:
    my, w, k, tilt, g = p["mouth_y"], p["mouth_w"], p["mouth_k"], p["mouth_tilt"], p["mouth_g"]
    up, lo = p["lip_up"], p["lip_lo"]
    top = my - g - up - np.abs(tilt) - np.maximum(-k, 0) - 1.0
    bottom = my + g + lo + np.abs(tilt) + np.maximum(k, 0) + 1.0
    win = c.window(-w - 1.5, w + 1.5, top, bottom)
    if win is None:
        return
    view = c.images[:, win[0], win[1]]
    px = c.px
    s, v = c.local(win, 0.0, my, sx=w)  # s: -1 at the right corner, +1 at the left corner
    s2 = s * s
    q = np.maximum(1.0 - s2, 0.0)
    dv = v - (_col(k) * s2 + _col(tilt) * s)  # height above (-) / below (+) the mouth's centre line
    gap = _col(g) * np.sqrt(q)  # half opening: an ellipse profile (O in surprise)
    lips = _cover(np.maximum(-dv - gap - _col(up) * q, dv - gap - _col(lo) * q) * px) * (q > 0)
    _paint(view, lips, np.where(dv < 0, _col(p["lip"] * 0.88), _col(p["lip"])))
    # The opening, at least a 1.2 px dark line, running to the corners exactly.
    opening = _cover(np.maximum(np.abs(dv) - gap - 0.6, (np.abs(s) - 1.0) * _col(w) - 0.5) * px)
    _paint(view, opening, _col(p["cavity"]))
    teeth = opening * _cover((dv + gap - 2.0 * gap * _col(p["teeth"])) * px) * (gap > 0.8)
    _paint(view, teeth, _col(p["teeth_tone"]))


def render_faces(
    p: dict[str, np.ndarray], m: np.ndarray, height: int, width: int, with_alpha: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw faces p through poses m [B, 2, 3] on [B, height, width] float32 canvases (grey levels,
    lit, no blur or noise). With with_alpha, also the foreground coverage [B, height, width] in [0, 1]."""
    c = _Canvas(m, height, width, background=(p["background"], p["bg_grad_x"], p["bg_grad_y"]))
    alpha = np.empty((len(m), height, width), np.float32) if with_alpha else None
    _draw_head(c, p, alpha)
    for side in ("l", "r"):
        _draw_eye(c, p, side)
        _draw_brow(c, p, side)
    _draw_nose(c, p)
    _draw_mouth(c, p)
    # Lighting: a linear gradient across the face (canonical px), applied to the whole scene.
    c.images *= c.linear(c.full, 1.0, p["light_x"], p["light_y"])
    return c.images, alpha


def _blur121(x: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur over the last two axes (edges replicated); sigma ~0.7 px."""
    rows = np.empty_like(x)  # horizontal pass, x4
    np.add(x[..., :-2], x[..., 2:], out=rows[..., 1:-1])
    rows[..., 1:-1] += x[..., 1:-1]
    rows[..., 1:-1] += x[..., 1:-1]
    rows[..., 0] = 3 * x[..., 0] + x[..., 1]
    rows[..., -1] = 3 * x[..., -1] + x[..., -2]
    out = np.empty_like(x)  # vertical pass, x16 in all
    np.add(rows[..., :-2, :], rows[..., 2:, :], out=out[..., 1:-1, :])
    out[..., 1:-1, :] += rows[..., 1:-1, :]
    out[..., 1:-1, :] += rows[..., 1:-1, :]
    out[..., 0, :] = 3 * rows[..., 0, :] + rows[..., 1, :]
    out[..., -1, :] = 3 * rows[..., -1, :] + rows[..., -2, :]
    out *= 1.0 / 16.0
    return out


def degrade(images: np.ndarray, blur: np.ndarray, noise_std: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (per-image level in [0, 2]: linear between none, one and two [1,2,1] passes), add uniform
    noise with the given std [B] (grey levels), round and clip to uint8. images: [B, H, W] float32,
    overwritten."""
    if blur.max() > 0:
        once = _blur121(images)
        twice = np.flatnonzero(blur > 1)  # the second pass only where it is asked for
        if len(twice):
            sub = once[twice]
            sub += _col(blur[twice] - 1.0) * (_blur121(sub) - sub)
            once[twice] = sub
        once -= images
        once *= _col(np.minimum(blur, 1.0))
        images += once
    if noise_std.max() > 0:
        # Uniform integer noise, 8 samples per 64-bit draw (4x cheaper than rng.random): values
        # 0..255 have mean 127.5 and std 73.9, scaled to noise_std grey levels.
        raw = rng.bit_generator.random_raw(-(-images.size // 8)).view(np.uint8)[: images.size]
        noise = raw.reshape(images.shape).astype(np.float32)
        noise -= 127.5
        noise *= _col(noise_std / 73.9)
        images += noise
    images += 0.5  # round to nearest on the cast below
    np.maximum(images, 0.0, out=images)
    np.minimum(images, 255.0, out=images)
    return images.astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Crops: the keypoint/emotion data set
# ---------------------------------------------------------------------------------------------


def _keep_keypoints_inside(
    points: np.ndarray, scale: np.ndarray, angle: np.ndarray, shift: np.ndarray, size: int
) -> np.ndarray:
    """Clip shifts [B, 2] so every keypoint lands at least 1.5 px (at 96) inside the crop; a face too
    large for that is centred on its keypoints instead."""
    placed = apply_pose(points, pose_matrices(scale, angle, np.zeros_like(shift), size))  # [B, K, 2], no shift
    margin = 1.5 * size / CANONICAL_SIZE
    low = margin - placed.min(axis=1)  # [B, 2] smallest allowed shift
    high = (size - 1 - margin) - placed.max(axis=1)
    return np.where(low <= high, np.clip(shift, low, high), (low + high) / 2)


def _chunk(config: SynthConfig, index: int, count: int) -> SynthBatch:
    """The first count faces of chunk `index` of the config's stream. Every random draw is made for
    the whole chunk and then cut to count, so a face never depends on how many were asked for."""
    size = config.chunk_size
    rng = np.random.default_rng([config.seed, index])
    labels = rng.choice(SEED5.num_classes, size=size, p=config.probabilities()).astype(np.int64)
    p = sample_faces(rng, labels, config.intensity_range)
    scale = rng.uniform(*config.scale_range, size)
    angle = np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg, size))
    shift = rng.uniform(-config.max_shift_px, config.max_shift_px, (size, 2)) * (config.image_size / CANONICAL_SIZE)
    blur = rng.uniform(*config.blur_range, size).astype(np.float32)
    noise = rng.uniform(*config.noise_std_range, size).astype(np.float32)
    keep = slice(0, count)
    p = {k: v[keep] for k, v in p.items()}
    shift = _keep_keypoints_inside(canonical_keypoints(p), scale[keep], angle[keep], shift[keep], config.image_size)
    m = pose_matrices(scale[keep], angle[keep], shift, config.image_size)
    images, _ = render_faces(p, m, config.image_size, config.image_size)
    keypoints = apply_pose(canonical_keypoints(p), m).reshape(count, 2 * NUM_KEYPOINTS)
    # The noise stream is a byte stream in face order, so its first faces are the same for any count.
    return SynthBatch(degrade(images, blur[keep], noise[keep], rng), keypoints, labels[keep])


def _keep_temporaries_on_the_heap() -> None:
    """Rendering makes many ~1 MB temporaries. glibc serves blocks over its mmap threshold (128 KiB at
    start) with fresh mmaps and page faults, costing ~30 % of the time, until a block of that size
    has been freed once: freeing an mmapped block raises the threshold to its size (glibc's dynamic
    M_MMAP_THRESHOLD, up to 32 MiB; see mallopt(3)). So free one 30 MiB block, untouched. Elsewhere
    (other libcs) this is a harmless allocation."""
    np.empty(30 * 2**20, np.uint8)


def iter_synth(config: SynthConfig, start: int = 0, stop: int | None = None) -> Iterator[SynthBatch]:
    """Faces [start, stop) of the config's stream (stop defaults to config.n), a chunk at a time."""
    _keep_temporaries_on_the_heap()
    stop = config.n if stop is None else min(stop, config.n)
    cs = config.chunk_size
    for index in range(start // cs, (stop + cs - 1) // cs):
        lo, hi = index * cs, min((index + 1) * cs, config.n)
        batch = _chunk(config, index, hi - lo)
        a, b = max(start, lo) - lo, min(stop, hi) - lo
        if b > a:
            yield (
                batch
                if (a, b) == (0, hi - lo)
                else SynthBatch(batch.images[a:b], batch.keypoints[a:b], batch.labels[a:b])
            )


def synthesize(n: int, seed: int = 0, **options: Any) -> SynthBatch:
    """n synthetic faces for a seed; options are any other SynthConfig fields. Face i is the same
    whatever n is (for the same seed, options and chunk_size)."""
    config = make_config(n, seed, **options)
    s = config.image_size
    images = np.empty((n, s, s), np.uint8)
    keypoints = np.empty((n, 2 * NUM_KEYPOINTS), np.float32)
    labels = np.empty(n, np.int64)
    at = 0
    for batch in iter_synth(config):
        images[at : at + len(batch)], keypoints[at : at + len(batch)], labels[at : at + len(batch)] = (
            batch.images,
            batch.keypoints,
            batch.labels,
        )
        at += len(batch)
    return SynthBatch(images, keypoints, labels)


def seeded_split(n: int, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """A seeded split of n rows with exact rounded counts: int8 [n], indices into schema.SPLITS
    (0 train, 1 val, 2 test)."""
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise UserError(f"split fractions must be >= 0 and sum below 1, got val={val_fraction} test={test_fraction}")
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    order = np.random.default_rng([seed, 0x5D1]).permutation(n)
    codes = np.zeros(n, np.int8)
    codes[order[:n_val]] = SPLITS.index("val")
    codes[order[n_val : n_val + n_test]] = SPLITS.index("test")
    return codes


def write_synth_dataset(
    out_dir: str | os.PathLike,
    n: int = 10_000,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    rows_per_write: int = 4096,
    **options: Any,
) -> dict[str, Any]:
    """Write n synthetic faces as a prepared data set (unified Parquet schema, atomic), a few thousand
    rows at a time. Returns a summary: out_dir, n, counts per split, seconds, faces_per_s, config."""
    config = make_config(n, seed, **options)
    split_names = np.asarray(SPLITS, dtype=object)
    splits = seeded_split(n, seed, val_fraction, test_fraction)
    counts: dict[str, dict[str, int]] = {}
    started = time.perf_counter()
    step = max(rows_per_write // config.chunk_size, 1) * config.chunk_size
    with DatasetWriter(out_dir) as writer:
        for lo in range(0, n, step):
            parts = list(iter_synth(config, lo, lo + step))
            images = np.concatenate([b.images for b in parts])
            table = make_table(
                images,
                np.concatenate([b.keypoints for b in parts]),
                np.concatenate([b.labels for b in parts]),
                split_names[splits[lo : lo + len(images)]],
                source="synth",
                row_ids=np.arange(lo, lo + len(images)),
            )
            writer.write(table)
            counts = merge_counts(counts, count_summary(table, SEED5.classes))
        config_dict = asdict(config)
        writer.info = DatasetInfo(
            tasks=["keypoints", "emotion"],
            scheme=SEED5.name,
            counts=counts,
            sources=["synth"],
            image_sizes=[[config.image_size, config.image_size]] if n else [],
            extra={"synth": {"config": config_dict, "val_fraction": val_fraction, "test_fraction": test_fraction}},
        )
    seconds = time.perf_counter() - started
    return {
        "out_dir": str(Path(out_dir).resolve()),
        "n": n,
        "counts": counts,
        "seconds": round(seconds, 3),
        "faces_per_s": round(n / seconds, 1) if seconds > 0 else None,
        "config": config_dict,
    }


def face_grid(per_class: int = 5, seed: int = 0, draw_keypoints: bool = False, **options: Any) -> np.ndarray:
    """A preview: per_class faces of each seed5 class, one class per row (seed5 order), as one uint8
    grey image [5 * S, per_class * S]; with draw_keypoints, keypoints are marked white-on-black."""
    config = make_config(per_class * SEED5.num_classes * 20, seed, **options)
    rows = [[] for _ in range(SEED5.num_classes)]
    for batch in iter_synth(config):
        for image, kp, label in zip(batch.images, batch.keypoints, batch.labels):
            if len(rows[label]) < per_class:
                image = image.copy()
                if draw_keypoints:
                    for x, y in np.rint(kp.reshape(-1, 2)).astype(int):
                        image[max(y - 1, 0) : y + 2, x] = 0
                        image[y, max(x - 1, 0) : x + 2] = 0
                        image[y, x] = 255
                rows[label].append(image)
        if all(len(r) == per_class for r in rows):
            break
    blank = np.zeros((config.image_size, config.image_size), np.uint8)  # a class the options left out
    rows = [r + [blank] * (per_class - len(r)) for r in rows]
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)


# ---------------------------------------------------------------------------------------------
# Photos: several faces on a textured background (for detection and the end-to-end demo)
# ---------------------------------------------------------------------------------------------

PHOTO_SIZES = ((320, 240), (480, 360), (640, 480), (240, 320), (360, 480))  # (width, height)
FACE_SIZE_RANGE = (60, 200)  # side of a face's box (its Kaggle-style crop), photo px


@dataclass(frozen=True)
class SynthPhoto:
    """A photo with its faces: image uint8 [H, W, 3] (or [H, W] grey); boxes int32 [F, 4] (x, y, w, h:
    the square whose crop, resized to 96, frames the face like a Kaggle crop); keypoints float32
    [F, 30] in photo pixels (pixel-centre convention); labels int64 [F] (seed5)."""

    image: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray
    labels: np.ndarray


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A background: smooth random blobs at two scales, a few flat rectangles, fine grain. [H, W] float32."""
    out = np.zeros((height, width), np.float32)
    for cells, amp in ((4, 70.0), (16, 25.0)):
        low = rng.uniform(-amp, amp, (cells, cells)).astype(np.float32)
        out += np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC))
    out += rng.uniform(60.0, 190.0)
    for _ in range(rng.integers(2, 7)):  # furniture: flat rectangles of another grey
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        out[y0 : y0 + rng.integers(10, height // 2), x0 : x0 + rng.integers(10, width // 2)] = rng.uniform(20, 235)
    out += rng.uniform(-6.0, 6.0, (height, width)).astype(np.float32)
    return out


def _place_boxes(rng: np.random.Generator, count: int, width: int, height: int) -> list[tuple[int, int, int]]:
    """Up to count non-overlapping squares (x, y, side) inside the photo, with room for hair and chin."""
    boxes: list[tuple[int, int, int]] = []
    for _ in range(count * 30):
        if len(boxes) == count:
            break
        side = int(rng.integers(FACE_SIZE_RANGE[0], min(FACE_SIZE_RANGE[1], int(0.8 * min(width, height))) + 1))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        pad = side // 8
        if all(
            x + side + pad <= bx or bx + bs + pad <= x or y + side + pad <= by or by + bs + pad <= y
            for bx, by, bs in boxes
        ):
            boxes.append((x, y, side))
    return boxes


def _photo(rng: np.random.Generator, color: bool, max_rotation_deg: float) -> SynthPhoto:
    width, height = PHOTO_SIZES[rng.integers(len(PHOTO_SIZES))]
    grey = _texture(rng, height, width)
    placed = _place_boxes(rng, int(rng.integers(1, 4)), width, height)
    labels = rng.integers(0, SEED5.num_classes, len(placed)).astype(np.int64)
    p = sample_faces(rng, labels)
    face_mask = np.zeros((height, width), np.float32)
    keypoints = np.zeros((len(placed), 2 * NUM_KEYPOINTS), np.float32)
    for i, (x, y, side) in enumerate(placed):
        face = {k: v[i : i + 1] for k, v in p.items()}
        # Render on the box grown by a quarter on every side (chin and hair spill out of a Kaggle
        # crop), clipped to the photo; the pose maps canonical points to that canvas.
        x0, y0 = max(x - side // 4, 0), max(y - side // 4, 0)
        x1, y1 = min(x + side + side // 4, width), min(y + side + side // 4, height)
        angle = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 1))
        m = pose_matrices(np.ones(1), angle, np.zeros((1, 2)), side, offset=np.array([x - x0, y - y0], float))
        canvas, alpha = render_faces(face, m, y1 - y0, x1 - x0, with_alpha=True)
        view = grey[y0:y1, x0:x1]
        view += alpha[0] * (canvas[0] - view)
        face_mask[y0:y1, x0:x1] = np.maximum(face_mask[y0:y1, x0:x1], alpha[0])
        keypoints[i] = (apply_pose(canonical_keypoints(face), m)[0] + [x0, y0]).reshape(-1)
    # Photo-wide light blur and grain; JPEG, if chosen on save, adds its own artefacts.
    image = degrade(
        grey[None], np.array([rng.uniform(0.0, 1.0)], np.float32), np.array([rng.uniform(1.0, 4.0)], np.float32), rng
    )[0]
    if color:
        bg_tint = rng.uniform(0.8, 1.2, 3).astype(np.float32)
        skin_tint = np.array([1.1, 0.95, 0.82], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
        tint = bg_tint + face_mask[..., None] * (skin_tint - bg_tint)  # [H, W, 3]
        image = np.clip(image[..., None] * tint + 0.5, 0, 255).astype(np.uint8)
    boxes = np.array([[x, y, s, s] for x, y, s in placed], np.int32).reshape(-1, 4)
    return SynthPhoto(image, boxes, keypoints, labels)


def synthesize_photos(
    n_photos: int, seed: int = 0, color: bool = True, max_rotation_deg: float = 10.0
) -> list[SynthPhoto]:
    """n_photos photos (320x240 .. 640x480, landscape or portrait) with 1-3 faces each of 60-200 px,
    on a textured background, with their true boxes, keypoints and emotions."""
    return [_photo(np.random.default_rng([seed, 0xF0, i]), color, max_rotation_deg) for i in range(n_photos)]


CORRUPT_KINDS = ("truncated JPEG", "text file named .jpg")


def write_synth_photos(
    out_dir: str | os.PathLike, n: int = 8, seed: int = 0, n_corrupt: int = 2, color: bool = True
) -> dict[str, Any]:
    """Save n synthetic photos (PNG and JPEG alternately), n_corrupt broken files (truncated JPEG, a
    text file named .jpg) and truth.json (per photo: file, size, faces with box, keypoints by name,
    emotion). The folder appears atomically and replaces an existing one. Returns the truth dict."""
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        truth: dict[str, Any] = {
            "scheme": SEED5.name,
            "classes": list(SEED5.classes),
            "keypoint_names": list(KEYPOINT_NAMES),
            "photos": [],
            "corrupt": [],
        }
        for i, photo in enumerate(synthesize_photos(n, seed, color=color)):
            name = f"photo_{i:03d}.{'png' if i % 2 == 0 else 'jpg'}"
            Image.fromarray(photo.image).save(tmp / name, **({"quality": 90} if name.endswith(".jpg") else {}))
            faces = [
                {
                    "box": [int(v) for v in box],
                    "keypoints": {
                        k: [round(float(kp[2 * j]), 3), round(float(kp[2 * j + 1]), 3)]
                        for j, k in enumerate(KEYPOINT_NAMES)
                    },
                    "emotion": SEED5.classes[int(label)],
                    "label": int(label),
                }
                for box, kp, label in zip(photo.boxes, photo.keypoints, photo.labels)
            ]
            truth["photos"].append(
                {"file": name, "width": photo.image.shape[1], "height": photo.image.shape[0], "faces": faces}
            )
        rng = np.random.default_rng([seed, 0xBAD])
        for j in range(n_corrupt):
            kind = CORRUPT_KINDS[j % len(CORRUPT_KINDS)]
            name = f"corrupt_{j:03d}.jpg"
            if kind == "truncated JPEG":
                img = (rng.random((120, 160)) * 255).astype(np.uint8)
                path = tmp / name
                Image.fromarray(img).save(path, quality=90)
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 3])  # header intact, scan data cut short
            else:
                (tmp / name).write_text("this is not an image, only text with a .jpg name\n")
            truth["corrupt"].append({"file": name, "kind": kind})
        (tmp / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return truth
