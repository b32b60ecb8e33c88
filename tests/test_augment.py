"""Augmentations: labels move with the pixels, flips swap names, keypoints stay in the frame, and
everything is exact where it should be (identity, flip, integer shift) and reproducible per seed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emokp_ray.data.augment.policies import (
    EmotionAugment,
    KeypointAugment,
    augment_emotion_batch,
    augment_keypoint_batch,
    keras_inverse_map,
    plan_emotion_augment,
    plan_keypoint_augment,
)
from emokp_ray.data.augment.warp import BORDER_MODES, apply_plan, compose_warp, warp_images
from emokp_ray.errors import UserError
from emokp_ray.labels import KEYPOINT_NAMES, NUM_KEYPOINTS, flip_keypoints

IDX = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
NO_INTENSITY_KP = dict(intensity_prob=0.0)
NO_INTENSITY_EMO = dict(brightness_range=(1.0, 1.0))


def kp_xy(keypoints: np.ndarray, name: str) -> np.ndarray:
    """[B, 2] coordinates of one named keypoint."""
    return keypoints[:, 2 * IDX[name] : 2 * IDX[name] + 2]


def identity_matrices(n: int) -> np.ndarray:
    return np.broadcast_to(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (n, 2, 3)).copy()


# Five well-separated keypoints (the others NaN), placed like a face: offsets from the centre in units
# of a fifth of the image side. "left" is the subject's left, on the image's right (larger x).
DOTS = {
    "left_eye_center": (1, -1),
    "right_eye_center": (-1, -1),
    "nose_tip": (0, 0),
    "mouth_left_corner": (1, 1),
    "mouth_right_corner": (-1, 1),
}


def dot_batch(n: int, size: int, seed: int = 0) -> dict:
    """Black images with a bright 3x3 square under each of five keypoints (integer coordinates)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), np.uint8)
    keypoints = np.full((n, 2 * NUM_KEYPOINTS), np.nan, np.float32)
    centre, step = size // 2, round(size / 5)
    for b in range(n):
        jitter = rng.integers(-2, 3, 2) * size // 96  # a few pixels, scaled with the image
        for name, (dx, dy) in DOTS.items():
            x, y = centre + dx * step + jitter[0], centre + dy * step + jitter[1]
            images[b, y - 1 : y + 2, x - 1 : x + 2] = 255
            kp_xy(keypoints, name)[b] = (x, y)
    return {
        "image": images,
        "keypoints": keypoints,
        "label": rng.integers(0, 5, n),
        "row_id": np.arange(n, dtype=np.int64) + 1000,
    }


def mirror(batch: dict, rows: np.ndarray | None = None) -> dict:
    """The reference flip the warp path must reproduce exactly: `rows` ([B] bool; all if None)
    mirrored, their keypoints through labels.flip_keypoints (x -> W-1-x, left/right names swapped)."""
    images = batch["image"]
    n, _, width = images.shape
    rows = np.ones(n, bool) if rows is None else np.asarray(rows, bool)
    out = dict(batch, image=images.copy())
    out["image"][rows] = images[rows, :, ::-1]
    if batch.get("keypoints") is not None:
        points = batch["keypoints"].reshape(n, NUM_KEYPOINTS, 2).copy()
        points[rows] = flip_keypoints(points[rows], width)
        out["keypoints"] = points.reshape(n, 2 * NUM_KEYPOINTS)
    return out


def assert_dots_under_keypoints(out: dict, radius: float) -> None:
    """Every non-NaN keypoint has its dot's intensity centroid within 0.4 px (and a clear peak).

    Measured worst case 0.23 px (96->48, where a 3x3 dot becomes 1.5 px); a half-pixel convention
    slip (centre vs corner origin) shows as >= 0.5 px."""
    images, keypoints = out["image"].astype(np.float64), out["keypoints"]
    n, height, width = images.shape
    yy, xx = np.mgrid[0:height, 0:width]
    for b in range(n):
        for k in range(NUM_KEYPOINTS):
            x, y = keypoints[b, 2 * k], keypoints[b, 2 * k + 1]
            if np.isnan(x):
                continue
            window = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
            weights = images[b] * window
            assert weights.max() >= 100, f"sample {b} {KEYPOINT_NAMES[k]}: no dot near ({x:.1f}, {y:.1f})"
            cx, cy = (weights * xx).sum() / weights.sum(), (weights * yy).sum() / weights.sum()
            err = np.hypot(cx - x, cy - y)
            assert err <= 0.4, (
                f"sample {b} {KEYPOINT_NAMES[k]}: dot at ({cx:.2f}, {cy:.2f}), keypoint ({x:.2f}, {y:.2f})"
            )


def assert_exercised(plan, size: int) -> None:
    """Most samples really were transformed: not withdrawn to the plain (flip) matrix."""
    n = len(plan.matrices)
    plain = compose_warp(np.broadcast_to(np.eye(3), (n, 3, 3)), plan.flipped, (size, size))
    warped = np.abs(plan.matrices - plain).max(axis=(1, 2)) > 1e-6
    assert plan.withdrawn.mean() < 0.25
    assert (warped | plan.flipped).mean() > 0.5


# --- flips -----------------------------------------------------------------------------------------


@st.composite
def random_batches(draw):
    n = draw(st.integers(1, 4))
    height, width = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(0, [width - 1, height - 1] * NUM_KEYPOINTS, (n, 2 * NUM_KEYPOINTS))
    # On a 1/256 px grid, (W-1) - x is exact in float32, so a double flip can be exact (see mirror).
    keypoints = (np.round(keypoints * 256) / 256).astype(np.float32)
    missing = rng.random((n, NUM_KEYPOINTS)) < 0.3
    keypoints[np.repeat(missing, 2, axis=1)] = np.nan
    return {
        "image": rng.integers(0, 256, (n, height, width), dtype=np.uint8),
        "keypoints": keypoints,
        "label": rng.integers(-1, 5, n),
    }


@settings(max_examples=40, deadline=None)
@given(random_batches())
def test_flip_twice_is_identity(batch):
    """The warp path (flip folded into the affine matrix) is an exact mirror, and twice the identity."""
    cfg = KeypointAugment(flip_prob=1.0, affine_prob=0.0, **NO_INTENSITY_KP)
    once = augment_keypoint_batch(batch, cfg, np.random.default_rng(0))
    assert np.array_equal(once["image"], mirror(batch)["image"])
    assert np.array_equal(once["keypoints"], mirror(batch)["keypoints"], equal_nan=True)
    back = augment_keypoint_batch(once, cfg, np.random.default_rng(1))
    assert np.array_equal(back["image"], batch["image"])
    assert np.array_equal(back["keypoints"], batch["keypoints"], equal_nan=True)


def test_flip_swaps_left_and_right_names():
    batch = dot_batch(3, 96)
    width = 96
    flipped = augment_keypoint_batch(
        batch, KeypointAugment(flip_prob=1.0, affine_prob=0.0, **NO_INTENSITY_KP), np.random.default_rng(0)
    )
    before, after = batch["keypoints"], flipped["keypoints"]
    for left, right in [("left_eye_center", "right_eye_center"), ("mouth_left_corner", "mouth_right_corner")]:
        for a, b in [(left, right), (right, left)]:
            assert np.array_equal(kp_xy(after, a)[:, 0], (width - 1) - kp_xy(before, b)[:, 0])
            assert np.array_equal(kp_xy(after, a)[:, 1], kp_xy(before, b)[:, 1])
    assert np.array_equal(kp_xy(after, "nose_tip")[:, 0], (width - 1) - kp_xy(before, "nose_tip")[:, 0])
    # The subject's left eye is still on the image's right after the flip: the labels stay true.
    assert (kp_xy(before, "left_eye_center")[:, 0] > kp_xy(before, "right_eye_center")[:, 0]).all()
    assert (kp_xy(after, "left_eye_center")[:, 0] > kp_xy(after, "right_eye_center")[:, 0]).all()
    # Emotion flips swap names too when the batch carries keypoints.
    cfg = EmotionAugment(
        flip_prob=1.0, rotation_deg=0, width_shift=0, height_shift=0, shear_deg=0, zoom_range=(1, 1), **NO_INTENSITY_EMO
    )
    emo = augment_emotion_batch(batch, cfg, np.random.default_rng(0))
    assert np.array_equal(emo["keypoints"], after, equal_nan=True)
    assert np.array_equal(emo["image"], flipped["image"])


# --- the warp itself -------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(random_batches(), st.sampled_from(BORDER_MODES))
def test_identity_warp_reproduces_the_image_exactly(batch, border):
    images = batch["image"]
    assert np.array_equal(warp_images(images, identity_matrices(len(images)), images.shape[1:], border), images)


@settings(max_examples=30, deadline=None)
@given(random_batches(), st.integers(-11, 11), st.integers(-11, 11))
def test_integer_shift_matches_edge_padding(batch, dx, dy):
    """Sampling at (x - dx, y - dy) is an exact shift; outside pixels follow the border mode."""
    images = batch["image"]
    n, height, width = images.shape
    matrices = identity_matrices(n)
    matrices[:, 0, 2], matrices[:, 1, 2] = -dx, -dy
    pad = 12
    for border, mode in [("replicate", "edge"), ("reflect", "symmetric")]:
        padded = np.stack([np.pad(img, pad, mode=mode) for img in images])  # symmetric repeats for wide pads
        expected = padded[:, pad - dy : pad - dy + height, pad - dx : pad - dx + width]
        assert np.array_equal(warp_images(images, matrices, (height, width), border), expected), border


def test_brightness_and_contrast_saturate_in_uint8():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (2, 1, 1)).reshape(2, 16, 16)
    batch = {"image": ramp}
    bright = KeypointAugment(
        flip_prob=0, affine_prob=0, intensity_prob=1, brightness_range=(1.2, 1.2), contrast_range=(1.0, 1.0)
    )
    out = augment_keypoint_batch(batch, bright, np.random.default_rng(0))["image"]
    assert out.dtype == np.uint8
    assert np.array_equal(out, np.clip(np.floor(ramp * 1.2 + 0.5), 0, 255).astype(np.uint8))  # 255 is kept, not wrapped
    low_contrast = KeypointAugment(
        flip_prob=0, affine_prob=0, intensity_prob=1, brightness_range=(1.0, 1.0), contrast_range=(0.5, 0.5)
    )
    out = augment_keypoint_batch(batch, low_contrast, np.random.default_rng(0))["image"].astype(float)
    expected = ramp.mean() + 0.5 * (ramp - ramp.mean())
    assert np.abs(out - expected).max() <= 0.5 + 1e-6
    dark = EmotionAugment(
        enabled=True,
        flip_prob=0,
        rotation_deg=0,
        width_shift=0,
        height_shift=0,
        shear_deg=0,
        zoom_range=(1, 1),
        brightness_range=(0.8, 0.8),
    )
    out = augment_emotion_batch(batch, dark, np.random.default_rng(0))["image"].astype(float)
    assert np.abs(out - ramp * 0.8).max() <= 0.5 + 1e-6
    # Random draws with a geometric warp: still uint8, full range used, no wrap-around at 0 or 255.
    wide = KeypointAugment(intensity_prob=1, brightness_range=(0.5, 2.0), contrast_range=(0.5, 2.0))
    out = augment_keypoint_batch({"image": np.tile(ramp, (8, 1, 1))}, wide, np.random.default_rng(1))["image"]
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() == 0


# --- geometry: a dot stays under its keypoint ------------------------------------------------------

KP_GEOMETRY = {
    "rotation": dict(flip_prob=0, affine_prob=1, rotation_deg=20, scale_range=(1, 1), shift_frac=0),
    "scale": dict(flip_prob=0, affine_prob=1, rotation_deg=0, scale_range=(0.8, 1.25), shift_frac=0),
    "shift": dict(flip_prob=0, affine_prob=1, rotation_deg=0, scale_range=(1, 1), shift_frac=0.1),
    "flip": dict(flip_prob=1, affine_prob=0),
    "combined": dict(flip_prob=0.5, affine_prob=1, rotation_deg=15, scale_range=(0.85, 1.15), shift_frac=0.08),
}
EMO_GEOMETRY = {
    "rotation": dict(rotation_deg=15, width_shift=0, height_shift=0, shear_deg=0, zoom_range=(1, 1), flip_prob=0),
    "shear": dict(rotation_deg=0, width_shift=0, height_shift=0, shear_deg=20, zoom_range=(1, 1), flip_prob=0),
    "zoom": dict(rotation_deg=0, width_shift=0, height_shift=0, shear_deg=0, zoom_range=(0.8, 1.2), flip_prob=0),
    "shift": dict(rotation_deg=0, width_shift=0.1, height_shift=0.1, shear_deg=0, zoom_range=(1, 1), flip_prob=0),
    "flip": dict(rotation_deg=0, width_shift=0, height_shift=0, shear_deg=0, zoom_range=(1, 1), flip_prob=1),
    "combined": dict(shear_deg=10),  # Keras defaults otherwise (0.1 degree shear is invisible)
}


def geometry_cases(kinds) -> list:
    """Each single transform at 96x96, and the combined one at 48x48."""
    return [pytest.param(kind, 96, id=f"{kind}-96") for kind in kinds] + [
        pytest.param("combined", 48, id="combined-48")
    ]


@pytest.mark.parametrize("kind,size", geometry_cases(KP_GEOMETRY))
def test_keypoint_augment_keeps_dots_under_keypoints(kind, size):
    batch = dot_batch(16, size, seed=3)
    cfg = KeypointAugment(**NO_INTENSITY_KP, **KP_GEOMETRY[kind])
    plan = plan_keypoint_augment(batch, cfg, np.random.default_rng(7))
    out = apply_plan(batch, plan)
    assert out["image"].shape == (16, size, size)
    assert_exercised(plan, size)
    assert_dots_under_keypoints(out, radius=4.5)


@pytest.mark.parametrize("kind,size", geometry_cases(EMO_GEOMETRY))
def test_emotion_augment_keeps_dots_under_keypoints(kind, size):
    batch = dot_batch(16, size, seed=4)
    cfg = EmotionAugment(**NO_INTENSITY_EMO, **EMO_GEOMETRY[kind])
    plan = plan_emotion_augment(batch, cfg, np.random.default_rng(8))
    out = apply_plan(batch, plan)
    assert_exercised(plan, size)
    assert_dots_under_keypoints(out, radius=4.5)


def test_keras_matrix_matches_keras_composition():
    """Our centred (x, y) matrix is Keras's (row, col) R @ T @ Shear @ Zoom, offset to the centre."""
    theta, tx, ty, shear, zx, zy = 12.0, 3.0, -5.0, 7.0, 0.93, 1.08
    h = w = 48
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    keras = (
        np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        @ np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
        @ np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
        @ np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    )
    o_x, o_y = h / 2 - 0.5, w / 2 - 0.5  # Keras's transform_matrix_offset_center
    keras = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]]) @ keras @ np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    ours = compose_warp(
        keras_inverse_map(*(np.array([v]) for v in (theta, tx, ty, shear, zx, zy))), np.zeros(1, bool), (h, w)
    )[0]
    # (row, col) -> (x, y): swap both the rows and the columns of the 2x2 part and the offset.
    assert np.allclose(ours[:, :2], keras[:2, :2][::-1, ::-1])
    assert np.allclose(ours[:, 2], keras[:2, 2][::-1])
    # Keras's shear unit is degrees: its default 0.1 moves a 48x48 image's corner by < 0.1 px.
    tiny = keras_inverse_map(np.zeros(1), np.zeros(1), np.zeros(1), np.full(1, 0.1), np.ones(1), np.ones(1))[0]
    assert abs(tiny[1, 0]) * 24 < 0.1


# --- keypoints stay in the frame; NaN stays NaN ----------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([96, 48]))
def test_keypoints_never_leave_the_frame(seed, size):
    rng = np.random.default_rng(seed)
    n = 32
    keypoints = rng.uniform(1, size - 2, (n, 2 * NUM_KEYPOINTS)).astype(np.float32)  # many near an edge
    keypoints[np.repeat(rng.random((n, NUM_KEYPOINTS)) < 0.2, 2, axis=1)] = np.nan
    batch = {
        "image": rng.integers(0, 256, (n, size, size), dtype=np.uint8),
        "keypoints": keypoints,
        "label": np.full(n, -1),
    }
    wild = KeypointAugment(rotation_deg=45, scale_range=(0.6, 1.6), shift_frac=0.3, affine_prob=1, **NO_INTENSITY_KP)
    plan = plan_keypoint_augment(batch, wild, rng)
    out = apply_plan(batch, plan)
    assert len(out["image"]) == n and len(out["keypoints"]) == n  # no row dropped
    got = out["keypoints"]
    inside = np.isnan(got) | ((got >= 0) & (got <= size - 1))
    assert inside.all()
    # A withdrawn sample is the un-warped one: only flipped (if drawn).
    rows = plan.withdrawn
    if rows.any():
        plain = mirror({k: v[rows] for k, v in batch.items()}, plan.flipped[rows])
        assert np.array_equal(out["image"][rows], plain["image"])
        assert np.allclose(out["keypoints"][rows], plain["keypoints"], atol=1e-4, equal_nan=True)
    # Emotion batches that carry keypoints obey the same rule.
    emo = augment_emotion_batch(batch, EmotionAugment(rotation_deg=45, width_shift=0.3, height_shift=0.3), rng)[
        "keypoints"
    ]
    assert (np.isnan(emo) | ((emo >= 0) & (emo <= size - 1))).all()


def test_nan_keypoints_stay_nan_and_present_ones_stay_present():
    batch = dot_batch(64, 96, seed=5)
    rng = np.random.default_rng(0)
    batch["keypoints"][rng.random(64) < 0.5, 0:2] = np.nan  # some left eyes missing
    plan = plan_keypoint_augment(batch, KeypointAugment(), np.random.default_rng(1))
    out = apply_plan(batch, plan)["keypoints"]
    missing_before = np.isnan(batch["keypoints"])
    expected = np.isnan(mirror(batch, plan.flipped)["keypoints"])  # the mask, names swapped where flipped
    assert plan.flipped.any() and (~plan.flipped).any()
    assert np.array_equal(np.isnan(out), expected)
    assert not np.array_equal(expected, missing_before)  # the permutation really mattered


@pytest.mark.realdata
def test_real_faces_keep_their_keypoints_in_frame_with_default_settings(real_data):
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(real_data / "facial-keypoints" / "training.csv.gz", nrows=300)
    images = np.stack([np.array(s.split(), np.uint8).reshape(96, 96) for s in frame["Image"]])
    keypoints = frame.drop(columns="Image").to_numpy(np.float32)
    batch = {"image": images, "keypoints": keypoints, "label": np.full(len(images), -1)}
    plan = plan_keypoint_augment(batch, KeypointAugment(), np.random.default_rng(0))
    out = apply_plan(batch, plan)["keypoints"]
    assert (np.isnan(out) | ((out >= 0) & (out <= 95))).all()
    assert plan.withdrawn.mean() < 0.05  # the defaults rarely need the fallback


# --- config, determinism, batches ------------------------------------------------------------------


def test_disabled_config_is_the_identity():
    batch = dot_batch(4, 96)
    for out in (
        augment_keypoint_batch(batch, KeypointAugment(enabled=False), np.random.default_rng(0)),
        augment_emotion_batch(batch, EmotionAugment(enabled=False), np.random.default_rng(0)),
    ):
        assert out["image"] is batch["image"] and out["keypoints"] is batch["keypoints"]


@pytest.mark.parametrize(
    "bad",
    [
        dict(border="wrap"),
        dict(flip_prob=1.5),
        dict(brightness_range=(1.2, 0.8)),
        dict(max_redraws=-1),
    ],
)
def test_bad_config_values_are_user_errors(bad):
    with pytest.raises(UserError):
        KeypointAugment(**bad)
    with pytest.raises(UserError):
        EmotionAugment(**bad)


def test_config_canonicalizes_json_lists():
    assert EmotionAugment(zoom_range=[0.9, 1.1]).zoom_range == (0.9, 1.1)
    assert KeypointAugment(scale_range=[0.8, 1.2]).scale_range == (0.8, 1.2)


def test_same_seed_same_result_other_seed_other_result():
    batch = dot_batch(8, 96)
    a = augment_keypoint_batch(batch, KeypointAugment(), np.random.default_rng(42))
    b = augment_keypoint_batch(batch, KeypointAugment(), np.random.default_rng(42))
    c = augment_keypoint_batch(batch, KeypointAugment(), np.random.default_rng(43))
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["keypoints"], b["keypoints"], equal_nan=True)
    assert not np.array_equal(a["image"], c["image"])


@pytest.mark.parametrize("n", [0, 1, 5])
def test_emotion_keeps_labels_and_other_keys_shapes_and_dtypes(n):
    batch = dot_batch(n, 48)
    batch["label"] = np.arange(n, dtype=np.int64) % 5
    del batch["keypoints"]
    out = augment_emotion_batch(batch, EmotionAugment(), np.random.default_rng(0))
    assert out["label"] is batch["label"] and out["row_id"] is batch["row_id"]
    assert out["image"].shape == (n, 48, 48) and out["image"].dtype == np.uint8
    assert "keypoints" not in out
    kp = augment_keypoint_batch(dot_batch(n, 96), KeypointAugment(), np.random.default_rng(0))
    assert kp["image"].shape == (n, 96, 96) and kp["image"].dtype == np.uint8
    assert kp["keypoints"].shape == (n, 30) and kp["keypoints"].dtype == np.float32
    assert kp["label"].dtype == np.int64


def test_module_imports_neither_ray_nor_torch():
    code = (
        "import sys, emokp_ray.data.augment.policies, emokp_ray.data.augment.warp; "
        "bad = [m for m in ('ray', 'torch') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
