"""The Python API: `emokp_ray.FaceAnalyzer` on the bundled photos with the builtin models (every input
kind, batching, per-call boxes and modes), results as DataFrames and drawings, bad inputs, and an
`import emokp_ray` that loads neither torch nor Ray."""

from __future__ import annotations

import doctest
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import emokp_ray
from emokp_ray import builtin
from emokp_ray.errors import UserError
from emokp_ray.inference.images import ImageError, decode_image, image_array
from emokp_ray.inference.results import Face, ImageResult

REPO = Path(__file__).resolve().parents[1]
PHOTOS = sorted((builtin.FOLDER.parent / "photos").glob("*.jpg"))
SHIPPED = all((builtin.FOLDER / f"{n}.pt").is_file() for n in builtin.NAMES)
needs_models = pytest.mark.skipif(not SHIPPED, reason="the release models are not in this checkout")
KEYPOINTS = 15
CLASSES = ("anger", "disgust", "fear", "happiness", "sad", "surprise", "neutral")  # builtin:emotion-fer7
COLUMNS = 9 + len(CLASSES) + 2 * KEYPOINTS  # image, source, face, x, y, w, h, score, emotion; p_*; *_x, *_y


@pytest.fixture(scope="module")
def analyzer():
    if not SHIPPED:
        pytest.skip("the release models are not in this checkout")
    pytest.importorskip("cv2")
    return emokp_ray.FaceAnalyzer()


def assert_same_faces(a: ImageResult, b: ImageResult, tol: float = 1e-4) -> None:
    """Same image size, boxes, emotions; keypoints and probabilities within tol."""
    assert (a.width, a.height, len(a.faces)) == (b.width, b.height, len(b.faces))
    for fa, fb in zip(a.faces, b.faces):
        assert fa.box == pytest.approx(fb.box, abs=1e-6) and fa.emotion == fb.emotion
        assert fa.keypoints is not None and fb.keypoints is not None and fa.keypoints.keys() == fb.keypoints.keys()
        for name in fa.keypoints:
            assert fa.keypoints[name] == pytest.approx(fb.keypoints[name], abs=tol)
        assert fa.probabilities == pytest.approx(fb.probabilities, abs=tol)


# ---- import ----------------------------------------------------------------------------------------


def test_import_emokp_ray_loads_neither_torch_nor_ray():
    code = (
        "import sys, emokp_ray\n"
        "from emokp_ray import FaceAnalyzer, to_pandas\n"  # the names resolve without loading them either
        "print(sorted(m for m in ('torch', 'ray', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "FaceAnalyzer" in dir(emokp_ray) and "to_pandas" in dir(emokp_ray)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        emokp_ray.nope  # noqa: B018


# ---- inputs ----------------------------------------------------------------------------------------


def assert_near_faces(a: ImageResult, b: ImageResult, share: float = 0.05) -> None:
    """The same faces found a little differently: boxes and keypoints within `share` of the face's width."""
    assert (a.width, a.height, len(a.faces)) == (b.width, b.height, len(b.faces))
    for fa, fb in zip(a.faces, b.faces):
        limit = share * fb.box[2]
        assert np.abs(np.subtract(fa.box, fb.box)).max() < 3 * limit and fa.emotion == fb.emotion
        assert fa.keypoints is not None and fb.keypoints is not None
        assert max(np.hypot(*np.subtract(fa.keypoints[k], fb.keypoints[k])) for k in fb.keypoints) < limit


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@needs_models
@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.stem)
def test_every_input_kind_gives_the_same_faces(analyzer, photo):
    reference = analyzer(str(photo))
    assert len(reference.faces) == 1 and reference.source == str(photo)
    assert reference.faces[0].emotion in CLASSES and len(reference.faces[0].keypoints) == KEYPOINTS
    with Image.open(photo) as opened:
        opened.load()
    colour = {"Path": photo, "bytes": photo.read_bytes(), "numpy RGB": np.asarray(opened.convert("RGB")), "PIL": opened}
    for kind, image in colour.items():
        result = analyzer(image)
        assert_same_faces(result, reference)
        assert result.source == (str(photo) if kind == "Path" else None), kind
    # Grey: the same image three ways gives the same answer; the networks see grey anyway (the
    # predictor's grey is Pillow's, ITU-R 601), a colour detector may place the box a little apart.
    grey = opened.convert("L")
    grey_reference = analyzer(np.asarray(grey))
    assert_same_faces(analyzer(grey), grey_reference)
    assert_same_faces(analyzer(png_bytes(grey)), grey_reference)
    assert_near_faces(grey_reference, reference)


@needs_models
def test_a_list_is_one_batched_predictor_call_with_results_in_order(analyzer, monkeypatch):
    first, second = PHOTOS[0], PHOTOS[1]
    alone = [analyzer(first), analyzer(second)]
    calls = []
    predict = analyzer.predictor.predict

    def spy(images, *args, **kwargs):
        calls.append(len(images))
        return predict(images, *args, **kwargs)

    monkeypatch.setattr(analyzer.predictor, "predict", spy)
    blank = np.zeros((120, 160, 3), np.uint8)  # a photo without a face: no row, its place kept
    results = analyzer([second, first.read_bytes(), blank, str(first)])
    assert calls == [4]
    assert isinstance(results, list) and len(results) == 4
    assert_same_faces(results[0], alone[1])
    assert_same_faces(results[1], alone[0])
    assert results[2].faces == [] and (results[2].width, results[2].height) == (160, 120)
    assert_same_faces(results[3], alone[0])
    assert [r.source for r in results] == [str(second), None, None, str(first)]
    assert isinstance(analyzer((first,)), list)  # a tuple is a batch too
    assert analyzer([]) == [] and emokp_ray.to_pandas([]).shape == (0, 8)


@needs_models
def test_boxes_and_mode_per_call(analyzer):
    photo = PHOTOS[0]
    found = analyzer(photo)
    again = analyzer(photo, boxes=[found.faces[0].box])  # a previous result's box: used as it is
    assert again.faces[0].box == found.faces[0].box
    assert_near_faces(again, found, share=0.1)  # the same face (a detector may align it, a caller's box is not)
    two = analyzer([photo, photo], boxes=[None, [found.faces[0].box, (0, 0, 96, 96)]])
    assert [len(r.faces) for r in two] == [1, 2]
    whole = analyzer(photo, mode="crop")
    assert [f.box for f in whole.faces] == [(0.0, 0.0, float(found.width), float(found.height))]
    with pytest.raises(UserError, match="unknown mode 'faces'"):
        analyzer(photo, mode="faces")
    with pytest.raises(
        UserError, match=r"boxes: a list of boxes, e.g. \[\(x, y, w, h\)\], got one box \[0, 0, 96, 96\]"
    ):
        analyzer(photo, boxes=(0, 0, 96, 96))


# ---- bad inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (
            np.zeros((40, 40, 3), np.float32),
            r"^image 1: expected a uint8 array .* got a float32 array of shape \[40, 40, 3\]",
        ),
        (np.zeros((40, 40, 4), np.uint8), r"^image 1: .* got a uint8 array of shape \[40, 40, 4\] \(RGBA\? drop alpha"),
        (np.zeros((0, 40), np.uint8), r"^image 1: image has no pixels"),
        (np.zeros((40, 40, 1), np.uint8), r"\[40, 40, 1\] \(one channel: pass array\[\.\.\., 0\]\)"),
        (np.zeros((2, 40, 40, 3), np.uint8), r"\[2, 40, 40, 3\] \(a batch\? pass a list of images\)"),
        (b"not an image at all", r"^image 1: not an image in a supported format"),
        ("/nonexistent/face.jpg", r"^image file /nonexistent/face.jpg does not exist"),
        (3.5, r"^image 1: expected a path, bytes, a numpy array or a PIL image, got float"),
        (Image.new("F", (8, 8)), r"^image 1: unsupported image mode 'F'"),
    ],
    ids=[
        "float-array",
        "rgba-array",
        "empty-array",
        "one-channel",
        "4d-batch",
        "not-image-bytes",
        "missing-path",
        "number",
        "float-pil",
    ],
)
def test_a_bad_image_is_one_clear_error_naming_it(image, message):
    with pytest.raises(UserError, match=message):
        image_array(image, source="image 1")


@needs_models
def test_a_bad_image_in_a_list_names_its_position(analyzer, monkeypatch):
    calls = []
    monkeypatch.setattr(analyzer.predictor, "predict", lambda *a, **k: calls.append(a))
    with pytest.raises(ImageError, match=r"^image 1 \(ndarray\): expected a uint8 array .* float64"):
        analyzer([PHOTOS[0], np.zeros((50, 50, 3))])
    with pytest.raises(ImageError, match=r"^image 1 \(4 bytes\): not an image"):
        analyzer([PHOTOS[0], b"\x00\x01\x02\x03"])
    with pytest.raises(UserError, match="does not exist"):
        analyzer(Path("/nonexistent/face.png"))
    assert calls == []  # refused before any model ran


def test_a_pil_image_is_turned_by_its_exif_orientation_like_bytes():
    image = Image.fromarray(np.arange(24 * 40 * 3, dtype=np.uint8).reshape(24, 40, 3) * 7, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    data = buffer.getvalue()
    opened = Image.open(io.BytesIO(data))
    turned = image_array(opened)
    assert turned.shape == (40, 24, 3) and np.array_equal(turned, decode_image(data))
    assert opened.size == (40, 24)  # the caller's image is left as it was
    assert image_array(Image.new("LA", (5, 4), (10, 0))).tolist() == np.full((4, 5), 255).tolist()  # alpha on white


# ---- results ---------------------------------------------------------------------------------------


@needs_models
def test_to_pandas_one_row_per_face_and_the_columns_without_faces(analyzer):
    results = analyzer([PHOTOS[0], np.zeros((100, 140), np.uint8), PHOTOS[1]])
    one = results[0].to_pandas()
    assert one.shape == (1, COLUMNS)
    assert list(one.columns[:9]) == ["image", "source", "face", "x", "y", "w", "h", "score", "emotion"]
    assert 0.7 <= one["score"].iloc[0] <= 1.0  # MTCNN's score of the face it found
    assert list(one.columns[9:16]) == [f"p_{c}" for c in CLASSES]
    assert list(one.columns[16:20]) == [
        "left_eye_center_x",
        "left_eye_center_y",
        "right_eye_center_x",
        "right_eye_center_y",
    ]
    face = results[0].faces[0]
    row = one.iloc[0]
    assert (row["image"], row["source"], row["face"], row["emotion"]) == (0, str(PHOTOS[0]), 0, face.emotion)
    assert row["x"] == face.box[0] and row["left_eye_center_y"] == face.keypoints["left_eye_center"][1]
    assert one[[f"p_{c}" for c in CLASSES]].sum(axis=1).iloc[0] == pytest.approx(1.0, abs=1e-4)
    empty = results[1].to_pandas()
    assert empty.shape == (0, COLUMNS) and list(empty.columns) == list(one.columns)
    table = emokp_ray.to_pandas(results)
    assert table.shape == (2, COLUMNS) and table["image"].tolist() == [0, 2]
    assert table["source"].tolist() == [str(PHOTOS[0]), str(PHOTOS[1])]
    assert str(table["x"].dtype) == "float64" and str(empty["x"].dtype) == "float64"


def test_to_pandas_leaves_out_an_absent_models_columns():
    face = Face(box=(1.0, 2.0, 3.0, 4.0), keypoints={"nose_tip": (5.0, 6.0)}, emotion=None, probabilities=None)
    table = ImageResult(10, 10, [face]).to_pandas()
    assert list(table.columns) == ["image", "source", "face", "x", "y", "w", "h", "score", "nose_tip_x", "nose_tip_y"]


@needs_models
def test_annotate_draws_on_the_photo_it_was_given(analyzer):
    photo = PHOTOS[0]
    with Image.open(photo) as opened:
        size = opened.size
        pixels = np.asarray(opened.convert("RGB"))
    for image in (photo, photo.read_bytes(), pixels):
        drawn = analyzer(image).annotate()
        assert isinstance(drawn, Image.Image) and drawn.size == size and drawn.mode == "RGB"
        assert not np.array_equal(np.asarray(drawn), pixels)  # boxes, points and a label are on it
    result = analyzer(pixels)
    plain = ImageResult(result.width, result.height, result.faces)  # as the CLI or Serve makes it
    with pytest.raises(UserError, match="does not keep its image"):
        plain.annotate()
    assert np.array_equal(np.asarray(plain.annotate(photo)), np.asarray(result.annotate()))
    with pytest.raises(UserError, match=r"the image is 40x30, the result is for a \d+x\d+ image"):
        result.annotate(np.zeros((30, 40), np.uint8))


# ---- construction --------------------------------------------------------------------------------


class _StubPredictor:
    flip_tta = True

    def labels(self):
        return {"keypoints": ["nose_tip"], "emotion": [], "label_scheme": None}


def test_detector_options_go_through_to_the_predictor(monkeypatch):
    from emokp_ray.inference import predictor

    calls = []

    def from_paths(keypoints, emotion, device="auto", detect=True, backend="torch", detector="x", detector_threshold=1):
        calls.append(dict(keypoints=keypoints, emotion=emotion, device=device, detect=detect, backend=backend))
        calls[-1] |= {"detector": detector, "detector_threshold": detector_threshold}
        return _StubPredictor()

    monkeypatch.setattr(predictor.Predictor, "from_paths", from_paths)
    emokp_ray.FaceAnalyzer(emotion=None)
    analyzer = emokp_ray.FaceAnalyzer(detector="haar", detector_threshold=0.8, flip_tta=False)
    first, second = calls
    assert first["detector"] == "mtcnn" and first["detector_threshold"] is None  # the defaults
    assert first["emotion"] is None and first["keypoints"] == builtin.DEFAULT_KEYPOINTS
    assert (first["device"], first["backend"]) == ("cpu", "auto")
    assert second["detector"] == "haar" and second["detector_threshold"] == 0.8 and second["detect"] is True
    assert analyzer.predictor.flip_tta is False


def test_an_unknown_detector_or_threshold_is_one_clear_error():
    with pytest.raises(UserError, match=r"unknown detector 'nope' \(known: mtcnn, haar\)"):
        emokp_ray.FaceAnalyzer(detector="nope")
    with pytest.raises(UserError, match=r"detector threshold must be in \(0, 1\)"):
        emokp_ray.FaceAnalyzer(detector_threshold=1.5)


@needs_models
def test_the_module_docstring_example_runs(monkeypatch):
    pytest.importorskip("cv2")
    import emokp_ray.analyzer

    monkeypatch.chdir(REPO)
    failed, attempted = doctest.testmod(emokp_ray.analyzer, verbose=False, report=True)
    assert attempted >= 6 and failed == 0
