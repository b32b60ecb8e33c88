"""The synthetic face generator: determinism, exact keypoints, visible emotions, the written data set
and the synthetic photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from emokp_ray.data.schema import SPLITS, images_from_column, iter_split, keypoints_from_column, read_info
from emokp_ray.data.synth.crops import seeded_split, synthesize, write_synth_dataset
from emokp_ray.data.synth.geometry import apply_pose, canonical_keypoints, pose_matrices, sample_faces
from emokp_ray.data.synth.photos import synthesize_photos, write_synth_photos
from emokp_ray.data.synth.render import render_faces
from emokp_ray.errors import UserError
from emokp_ray.labels import KEYPOINT_NAMES, SEED5

K = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
ANGER, DISGUST, SAD, HAPPINESS, SURPRISE = range(5)


@pytest.fixture(scope="module")
def faces():
    """1,000 faces as the data set delivers them (default poses, blur and noise)."""
    return synthesize(1000, seed=11)


def _face_frame(keypoints: np.ndarray) -> np.ndarray:
    """[N, 30] -> [N, 15, 2] in a per-face frame: eye midpoint at 0, eye line along +x, unit = the
    distance between the eye centres. Removes pose so the expression alone remains."""
    kp = keypoints.reshape(-1, 15, 2).astype(np.float64)
    left, right = kp[:, K["left_eye_center"]], kp[:, K["right_eye_center"]]
    axis = left - right
    iod = np.linalg.norm(axis, axis=1)
    cos, sin = axis[:, 0] / iod, axis[:, 1] / iod
    rel = kp - (left + right)[:, None] / 2
    x = rel[..., 0] * cos[:, None] + rel[..., 1] * sin[:, None]
    y = -rel[..., 0] * sin[:, None] + rel[..., 1] * cos[:, None]
    return np.stack([x, y], axis=-1) / iod[:, None, None]


def _clean_render(labels, seed, size, scale, angle_deg, shift):
    """Faces without lighting, shading, blur or noise, so every drawn tone is known exactly."""
    rng = np.random.default_rng(seed)
    p = sample_faces(rng, np.asarray(labels))
    for key in ("light_x", "light_y", "shade", "socket"):
        p[key] = np.zeros_like(p[key])
    m = pose_matrices(np.asarray(scale, float), np.deg2rad(angle_deg), np.asarray(shift, float), size)
    images, _ = render_faces(p, m, size, size)
    return p, m, images


def _at(images, points):
    """Pixel values nearest to points [N, 2] (x, y), one per image."""
    cols = np.clip(np.rint(points[:, 0]).astype(int), 0, images.shape[2] - 1)
    rows = np.clip(np.rint(points[:, 1]).astype(int), 0, images.shape[1] - 1)
    return images[np.arange(len(images)), rows, cols]


def _bilinear(images, points):
    """Values interpolated at sub-pixel points [N, 2] (x, y), one per image."""
    x, y = points[:, 0], points[:, 1]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    i = np.arange(len(images))
    top = images[i, y0, x0] * (1 - fx) + images[i, y0, x0 + 1] * fx
    bottom = images[i, y0 + 1, x0] * (1 - fx) + images[i, y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


# --- determinism, shapes, configuration ---------------------------------------------------------


def test_same_seed_same_bytes_and_prefix_stable():
    a, b = synthesize(70, seed=3), synthesize(70, seed=3)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.keypoints.tobytes() == b.keypoints.tobytes() and (a.labels == b.labels).all()
    # Face i does not depend on how many faces were asked for.
    c = synthesize(40, seed=3)
    assert c.images.tobytes() == a.images[:40].tobytes() and (c.labels == a.labels[:40]).all()
    d = synthesize(70, seed=4)
    assert (d.images != a.images).mean() > 0.5


def test_shapes_dtypes_and_frame(faces):
    assert faces.images.shape == (1000, 96, 96) and faces.images.dtype == np.uint8
    assert faces.keypoints.shape == (1000, 30) and faces.keypoints.dtype == np.float32
    assert faces.labels.shape == (1000,) and faces.labels.dtype == np.int64
    assert set(np.unique(faces.labels)) == set(range(SEED5.num_classes))
    assert np.isfinite(faces.keypoints).all()
    assert faces.keypoints.min() >= 1.0 and faces.keypoints.max() <= 94.0  # inside the crop, not on its edge
    batch = faces.as_batch()
    assert set(batch) == {"image", "keypoints", "label"}
    # Kaggle-like framing: eyes near y = 38, bottom lip near y = 79, eye centres ~32 px apart.
    kp = faces.keypoints.reshape(-1, 15, 2)
    assert abs(kp[:, K["left_eye_center"], 1].mean() - 38) < 3
    assert abs(kp[:, K["mouth_center_bottom_lip"], 1].mean() - 79) < 4
    assert abs((kp[:, K["left_eye_center"], 0] - kp[:, K["right_eye_center"], 0]).mean() - 31.6) < 3
    assert (kp[:, K["left_eye_center"], 0] > kp[:, K["right_eye_center"], 0]).all()  # subject's left = image right


def test_keypoints_stay_inside_under_extreme_poses():
    b = synthesize(300, seed=8, max_rotation_deg=40, max_shift_px=12, scale_range=(1.1, 1.3))
    assert b.keypoints.min() >= 1.0 and b.keypoints.max() <= 94.0


def test_image_size_option_scales_the_frame():
    small, big = synthesize(8, seed=2, image_size=48), synthesize(8, seed=2, image_size=96)
    assert small.images.shape == (8, 48, 48)
    # Same faces and poses: keypoints scale about the pixel-centre convention, (x + 0.5) * 48 / 96 - 0.5.
    np.testing.assert_allclose(small.keypoints, (big.keypoints + 0.5) / 2 - 0.5, atol=1e-3)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="unknown synth option"):
        synthesize(4, seed=0, rotation=10)
    with pytest.raises(UserError, match="scale_range"):
        synthesize(4, seed=0, scale_range=(1.2, 0.9))
    with pytest.raises(UserError, match="class_probabilities"):
        synthesize(4, seed=0, class_probabilities=(1.0, 0.0))


def test_class_probabilities():
    labels = synthesize(200, seed=1, class_probabilities=(0, 0, 1, 0, 1)).labels
    assert set(np.unique(labels)) == {SAD, SURPRISE}


# --- keypoints land on what is drawn --------------------------------------------------------------


@pytest.mark.parametrize("pose", ["neutral", "rotated, shifted, scaled"])
def test_keypoints_sit_on_their_features(pose):
    """Rendered 4x (384 px) without lighting or noise, the pixel under each keypoint has the tone of
    the feature it names: pupil, lid line at the eye corners, brow, nose outline, mouth line, lip edge."""
    n, size = 25, 384
    labels = np.arange(n) % 5
    rng = np.random.default_rng(5)
    if pose == "neutral":
        scale, angle, shift = np.ones(n), np.zeros(n), np.zeros((n, 2))
    else:
        scale, angle, shift = rng.uniform(0.8, 1.2, n), rng.uniform(-30, 30, n), rng.uniform(-24, 24, (n, 2))
    p, m, images = _clean_render(labels, 9, size, scale, angle, shift)
    kp = apply_pose(canonical_keypoints(p), m)  # [n, 15, 2], 384 px
    skin = p["skin"]

    def near(name, tone, tol=2.0):
        got = _at(images, kp[:, K[name]])
        np.testing.assert_allclose(got, tone, atol=tol, err_msg=name)

    for side in ("left", "right"):
        near(f"{side}_eye_center", p["pupil"])
        near(f"{side}_eye_inner_corner", p["brow"])  # the lid line runs through both corners
        near(f"{side}_eye_outer_corner", p["brow"])
        near(f"{side}_eyebrow_inner_end", p["brow"])
        near(f"{side}_eyebrow_outer_end", p["brow"])
    near("nose_tip", skin + 0.8 * (p["brow"] - skin))  # nose outline, drawn at 80 %
    near("mouth_left_corner", p["cavity"])
    near("mouth_right_corner", p["cavity"])
    # Lip centres lie ON the lips' outer edge (anti-aliased: half lip, half skin), plain skin 1 px out.
    for name, outward, lip in (
        ("mouth_center_top_lip", -1.0, p["lip"] * 0.88),
        ("mouth_center_bottom_lip", 1.0, p["lip"]),
    ):
        coverage = (skin - _bilinear(images, kp[:, K[name]])) / (skin - lip)
        assert ((coverage > 0.25) & (coverage < 0.75)).all(), (name, coverage)
        beyond = canonical_keypoints(p)[:, K[name]] + [0.0, outward]
        np.testing.assert_allclose(_at(images, apply_pose(beyond[:, None], m)[:, 0]), skin, atol=1.0, err_msg=name)
    # And a cheek is plain skin: the dark tones above belong to the features.
    cheek = apply_pose(np.tile([[24.0, 14.0]], (n, 1, 1)), m)[:, 0]
    np.testing.assert_allclose(_at(images, cheek), skin, atol=1.0)


def test_delivered_faces_are_dark_at_the_keypoints(faces):
    """In the data as delivered (pose, light, blur, noise), eye centres and mouth corners are much
    darker than the cheek next to them."""
    kp = faces.keypoints.reshape(-1, 15, 2)
    img = faces.images.astype(np.float32)

    def mean3(points):
        c = np.rint(points).astype(int)
        return np.mean(
            [img[np.arange(len(img)), c[:, 1] + dy, c[:, 0] + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0
        )

    for side in ("left", "right"):
        eye, corner = kp[:, K[f"{side}_eye_center"]], kp[:, K[f"mouth_{side}_corner"]]
        cheek = mean3(corner + 0.5 * (kp[:, K[f"{side}_eye_outer_corner"]] - corner))
        assert np.mean(mean3(eye) < 0.8 * cheek) > 0.97
        assert np.mean(mean3(corner) < 0.9 * cheek) > 0.95


# --- emotions show in the geometry ------------------------------------------------------------------


def test_expressions_move_the_keypoints(faces):
    f = _face_frame(faces.keypoints)
    y = f[..., 1]
    lab = faces.labels
    corners_y = (y[:, K["mouth_left_corner"]] + y[:, K["mouth_right_corner"]]) / 2
    lip_mid_y = (y[:, K["mouth_center_top_lip"]] + y[:, K["mouth_center_bottom_lip"]]) / 2
    smile = lip_mid_y - corners_y  # > 0: corners above the lips' centre
    assert (smile[lab == HAPPINESS] > 0).mean() > 0.97
    assert (smile[lab == SAD] < 0).mean() > 0.95

    def mean(values, cls):
        return values[lab == cls].mean()

    others = lambda cls: [c for c in range(5) if c != cls]  # noqa: E731
    opening = y[:, K["mouth_center_bottom_lip"]] - y[:, K["mouth_center_top_lip"]]
    brow_lift = -(y[:, K["left_eyebrow_inner_end"]] + y[:, K["right_eyebrow_inner_end"]]) / 2  # above the eye line
    width = f[:, K["mouth_left_corner"], 0] - f[:, K["mouth_right_corner"], 0]
    tilt = np.abs(y[:, K["mouth_left_corner"]] - y[:, K["mouth_right_corner"]])
    assert all(mean(opening, SURPRISE) > mean(opening, c) + 0.1 for c in others(SURPRISE))
    assert all(mean(brow_lift, SURPRISE) > mean(brow_lift, c) + 0.05 for c in others(SURPRISE))
    assert all(mean(width, HAPPINESS) > mean(width, c) + 0.1 for c in others(HAPPINESS))
    assert all(mean(tilt, DISGUST) > mean(tilt, c) + 0.05 for c in others(DISGUST))
    assert mean(brow_lift, ANGER) < mean(brow_lift, SAD) - 0.15  # inner brows down vs up
    # Every pair of classes differs clearly in its mean keypoints (|z| of the best coordinate).
    flat = f.reshape(len(f), -1)
    for a in range(5):
        for b in range(a + 1, 5):
            xa, xb = flat[lab == a], flat[lab == b]
            z = np.abs(xa.mean(0) - xb.mean(0)) / np.sqrt(xa.var(0) / len(xa) + xb.var(0) / len(xb) + 1e-12)
            assert z.max() > 10, (a, b)


def test_surprise_opens_the_eyes_and_anger_narrows_them():
    """Sclera visible in a column through the eye, 70 % of the way to the outer corner (off the iris)."""
    n, size = 60, 384
    labels = np.arange(n) % 5
    p, m, images = _clean_render(labels, 21, size, np.ones(n), np.zeros(n), np.zeros((n, 2)))
    column = apply_pose(np.stack([p["eye_x"] + 0.7 * p["eye_hw"], p["eye_y_l"]], axis=-1)[:, None], m)[:, 0]
    cols = np.rint(column[:, 0]).astype(int)
    strip = images[np.arange(n), :, cols]  # [n, rows] the whole column
    sclera_px = (np.abs(strip - p["sclera"][:, None]) < 1.0).sum(axis=1) / 4.0  # canonical px
    by_class = np.array([sclera_px[labels == c].mean() for c in range(5)])
    assert by_class[SURPRISE] > 1.5 * np.delete(by_class, SURPRISE).max()
    assert by_class[ANGER] < by_class[SAD]


# --- the written data set -----------------------------------------------------------------------------


def test_written_dataset_round_trips(tmp_path):
    out = tmp_path / "synth"
    summary = write_synth_dataset(out, n=300, seed=5, val_fraction=0.2, test_fraction=0.1, rows_per_write=64)
    info = read_info(out)
    assert info.tasks == ["keypoints", "emotion"] and info.scheme == "seed5" and info.sources == ["synth"]
    assert {s: c["rows"] for s, c in info.counts.items()} == {"train": 210, "val": 60, "test": 30}
    assert info.counts == summary["counts"]
    expected = synthesize(300, seed=5)
    seen = []
    for split in SPLITS:
        for table in iter_split(out, split):
            ids = table["row_id"].to_numpy()
            seen.extend(ids)
            assert set(table["split"].to_pylist()) == {split} and set(table["source"].to_pylist()) == {"synth"}
            np.testing.assert_array_equal(images_from_column(table["image"], 96, 96), expected.images[ids])
            np.testing.assert_array_equal(keypoints_from_column(table["keypoints"]), expected.keypoints[ids])
            np.testing.assert_array_equal(table["label"].to_numpy(), expected.labels[ids])
        assert info.counts[split]["complete_keypoints"] == info.counts[split]["rows"]
    assert sorted(seen) == list(range(300))
    # Class counts in dataset.json add up to the labels.
    assert sum(info.counts[s][name] for s in SPLITS for name in SEED5.classes) == 300
    # The split is seeded: the same call gives the same split; another seed another one.
    np.testing.assert_array_equal(seeded_split(300, 5, 0.2, 0.1), seeded_split(300, 5, 0.2, 0.1))
    assert (seeded_split(300, 5, 0.2, 0.1) != seeded_split(300, 6, 0.2, 0.1)).any()


def test_write_failure_leaves_no_output(tmp_path):
    with pytest.raises(UserError):
        write_synth_dataset(tmp_path / "bad", n=10, seed=0, val_fraction=0.7, test_fraction=0.5)
    assert not (tmp_path / "bad").exists()


# --- photos ------------------------------------------------------------------------------------------------


def test_photos_have_faces_inside_their_boxes():
    photos = synthesize_photos(6, seed=3)
    again = synthesize_photos(6, seed=3)
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(photos, again))
    for photo in photos:
        h, w, channels = photo.image.shape
        assert (
            photo.image.dtype == np.uint8
            and channels == 3
            and (w, h) in {(320, 240), (480, 360), (640, 480), (240, 320), (360, 480)}
        )
        assert 1 <= len(photo.boxes) <= 3 and len(photo.keypoints) == len(photo.boxes) == len(photo.labels)
        for (x, y, bw, bh), kp in zip(photo.boxes, photo.keypoints.reshape(-1, 15, 2)):
            assert bw == bh and 60 <= bw <= 200
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            assert (
                (kp[:, 0] > x).all()
                and (kp[:, 0] < x + bw).all()
                and (kp[:, 1] > y).all()
                and (kp[:, 1] < y + bh).all()
            )
    grey = synthesize_photos(1, seed=3, color=False)[0]
    assert grey.image.ndim == 2


def test_written_photos_and_corrupt_files(tmp_path):
    out = tmp_path / "photos"
    truth = write_synth_photos(out, n=3, seed=1, n_corrupt=2)
    assert json.loads((out / "truth.json").read_text()) == truth
    for entry in truth["photos"]:
        with Image.open(out / entry["file"]) as im:
            im.load()
            assert im.size == (entry["width"], entry["height"])
        for face in entry["faces"]:
            assert face["emotion"] == SEED5.classes[face["label"]] and set(face["keypoints"]) == set(KEYPOINT_NAMES)
    assert [c["kind"] for c in truth["corrupt"]] == ["truncated JPEG", "text file named .jpg"]
    for entry in truth["corrupt"]:
        with pytest.raises(OSError):  # UnidentifiedImageError is an OSError too
            with Image.open(out / entry["file"]) as im:
                im.load()
