"""Face geometry of the synthetic faces: random face parameters and their keypoints, and poses.

Every face is defined in a CANONICAL frame: pixels of a 96x96 Kaggle-style crop at the neutral pose,
origin at the crop centre (47.5, 47.5), y down, +x towards the image's right, which is the subject's
LEFT (emokp_ray.labels' convention). A per-face pose matrix M [2, 3] (shift, scale, in-plane
rotation) maps canonical points to output pixels. Keypoints are canonical feature points mapped
through M; the renderer (synth.render) draws pixels by mapping every output pixel through M^-1 back
into this frame, so the drawing and the keypoints come from one geometry and agree exactly.

Emotions (seed5) change the geometry: brow height and slant, eye opening, mouth curvature, width and
opening, plus asymmetry for disgust; identity (head shape, eye spacing, tones, hair) varies per face.
"""

from __future__ import annotations

import numpy as np

from emokp_ray.labels import KEYPOINT_IMAGE_SIZE, KEYPOINT_NAMES

CANONICAL_SIZE = KEYPOINT_IMAGE_SIZE  # 96: the canonical frame is a 96x96 crop


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
