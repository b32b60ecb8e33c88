"""The predictor: crop / detect / caller-box modes, keypoints mapped back to the photo, batching,
model info, detection on synthetic photos, rendering, and the missing-OpenCV message."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from emokp_ray.artifacts.checkpoint import CheckpointMeta, LoadedCheckpoint
from emokp_ray.data.synth.photos import synthesize_photos
from emokp_ray.errors import UserError
from emokp_ray.inference import detect as detect_module
from emokp_ray.inference.predictor import (
    FRAMING_MARGIN,
    Face,
    ImageResult,
    Predictor,
    crop_box_from_detection,
    keypoints_to_image,
)
from emokp_ray.inference.render import annotate
from emokp_ray.labels import KEYPOINT_NAMES, SEED5
from emokp_ray.models.resnet import build_model, model_config
from tests.helpers import write_tiny_checkpoints

# --------------------------------------------------------------------------------------------------
# Fixtures and stand-in models
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def predictor(tiny) -> Predictor:
    return Predictor.from_paths(str(tiny[0]), str(tiny[1]), device="cpu", detect=False)


def stand_in(model: nn.Module, task: str, input_size: int) -> LoadedCheckpoint:
    """A test module behind a real meta (the predictor only reads meta and calls the model)."""
    meta = CheckpointMeta(model_config=model_config(task, input_size=input_size), run_id=f"stand-in-{task}")
    return LoadedCheckpoint(model=model, meta=meta, path=Path(f"stand-in-{task}"))


class CentroidOracle(nn.Module):
    """'Keypoints' = the brightness centroid of each crop (pixel-centre coordinates), for all 15
    points: the crop it is fed must contain the blob where the photo has it, at the right scale."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        w = x.float()[:, 0]
        w = torch.where(w > 20, w, torch.zeros_like(w))  # ignore the dark background
        size = w.shape[-1]
        coords = torch.arange(size, dtype=torch.float32)
        total = w.sum(dim=(1, 2))
        cx = (w.sum(dim=1) * coords).sum(dim=1) / total
        cy = (w.sum(dim=2) * coords).sum(dim=1) / total
        return torch.stack([cx, cy], dim=1).repeat(1, len(KEYPOINT_NAMES))


class FixedLogits(nn.Module):
    def __init__(self, logits: list[float]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.logits.expand(x.shape[0], -1)


def blob_photo(
    centres: list[tuple[float, float]], height: int = 300, width: int = 400, sigma: float = 4.0
) -> np.ndarray:
    """A black photo with a Gaussian blob (peak 250) at each sub-pixel centre (pixel-centre coordinates)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width))
    for cx, cy in centres:
        image += 250 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def test_keypoints_to_image_follows_the_pixel_centre_convention():
    # Crop pixel centre 0 of a box starting at x = 10, 2 photo px per crop px: photo x = 10 + 0.5*2 - 0.5.
    kp = np.array([[0.0, 0.0, 95.0, 47.5]])
    out = keypoints_to_image(kp, np.array([[10.0, 20.0, 192.0, 96.0]]), 96)
    assert np.allclose(out, [[10.5, 20.0, 200.5, 67.5]])


def test_crop_box_from_detection_uses_the_measured_framing():
    x, y, w, h = crop_box_from_detection((100, 50, 80, 80))
    assert w == h == pytest.approx(80 * FRAMING_MARGIN)
    assert x + w / 2 == pytest.approx(140)  # horizontally centred
    assert y + h / 2 > 90  # a little below the Haar centre


def test_caller_boxes_map_keypoints_back_to_photo_pixels():
    """Blobs at known sub-pixel photo positions; boxes of several scales (down- and up-sampling),
    one reaching past the photo's right edge (padded, not shifted). The oracle's centroids, mapped
    back, must land on the blobs."""
    centres = [(90.3, 100.7), (281.6, 231.2), (372.4, 60.5)]
    photo = blob_photo(centres)
    boxes = [(20.0, 35.0, 150.0, 150.0), (250.5, 200.25, 60.0, 60.0), (322.0, 10.0, 110.0, 110.0)]
    oracle = CentroidOracle()
    predictor = Predictor(stand_in(oracle, "keypoints", 96), None)
    [result] = predictor.predict([photo], boxes=[boxes])
    assert (result.width, result.height) == (400, 300)
    assert [f.box for f in result.faces] == boxes  # used as given, in order
    for face, (cx, cy) in zip(result.faces, centres):
        assert set(face.keypoints) == set(KEYPOINT_NAMES)
        x, y = face.keypoints["nose_tip"]
        assert abs(x - cx) < 0.5 and abs(y - cy) < 0.5, (face.box, (x, y), (cx, cy))
        assert face.emotion is None and face.probabilities is None


def test_all_faces_of_all_images_go_through_one_forward_pass():
    oracle, logits = CentroidOracle(), FixedLogits([0.0, 1.0, 3.0, 0.5, -1.0])
    predictor = Predictor(stand_in(oracle, "keypoints", 96), stand_in(logits, "emotion", 48))
    photos = [blob_photo([(50, 50), (200, 150)]), blob_photo([(300, 100)], height=200, width=350)]
    boxes = [[(10, 10, 80, 80), (160, 110, 80, 80)], [(260, 60, 80, 80)]]
    results = predictor.predict(photos, boxes=boxes)
    assert [len(r.faces) for r in results] == [2, 1]
    # one pass per network over every face and its mirror image (flip test-time augmentation)
    assert oracle.calls == [(6, 1, 96, 96)] and logits.calls == [(6, 1, 48, 48)]
    expected = torch.softmax(torch.tensor([0.0, 1.0, 3.0, 0.5, -1.0], dtype=torch.float64), 0).numpy()
    for face in results[0].faces + results[1].faces:
        assert list(face.probabilities) == list(SEED5.classes)
        assert np.allclose(list(face.probabilities.values()), expected)
        assert face.emotion == "sad"


def test_the_forward_loop_splits_large_batches_and_gives_the_same_outputs():
    """backends.run_model, the loop the predictor and `emokp evaluate` share: max_batch crops per
    call on a model prepared like the predictor's (eval mode, channels-last weights)."""
    from emokp_ray.inference.backends import make_runner, run_model

    torch.manual_seed(0)
    cfg = model_config("emotion", input_size=48)
    model = build_model(cfg).train()
    loaded = LoadedCheckpoint(model=model, meta=CheckpointMeta(model_config=cfg, run_id="loop"), path=Path("loop"))
    runner = make_runner(loaded, "torch", torch.device("cpu"))
    assert not model.training  # prepared in place: the checkpoint's module is the one that runs
    conv = [p for p in model.parameters() if p.dim() == 4 and min(p.shape[1:]) > 1][-1]  # C_in, k > 1
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    crops = np.random.default_rng(0).integers(0, 256, (7, 48, 48), dtype=np.uint8)
    calls = []

    def counted(c):
        calls.append(len(c))
        return runner(c)

    whole = run_model(counted, crops)
    parts = run_model(counted, crops, max_batch=3)
    assert calls == [7, 3, 3, 1] and whole.dtype == np.float32 and whole.shape == (7, 5)
    assert np.allclose(parts, whole, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Real (tiny) checkpoints: crop mode, outputs, info
# --------------------------------------------------------------------------------------------------


def test_predict_crops_returns_one_face_per_crop(predictor):
    crops = np.random.default_rng(0).integers(0, 256, (4, 96, 96), dtype=np.uint8)
    faces = predictor.predict_crops(crops)
    assert len(faces) == 4
    for face in faces:
        assert face.box == (0.0, 0.0, 96.0, 96.0)
        assert list(face.keypoints) == list(KEYPOINT_NAMES)
        assert list(face.probabilities) == list(SEED5.classes)
        assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-9)
        assert face.emotion == max(face.probabilities, key=face.probabilities.get)
    # The same crops through predict(mode="crop") and "auto" (square, <= 128 px) agree.
    for mode in ("crop", "auto"):
        results = predictor.predict(list(crops), mode=mode)
        for face, result in zip(faces, results):
            assert len(result.faces) == 1
            assert result.faces[0].to_dict() == face.to_dict()
    assert predictor.predict_crops(np.zeros((0, 96, 96), np.uint8)) == []


def test_crops_of_another_size_are_resized(predictor):
    crops = np.random.default_rng(1).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    faces = predictor.predict_crops(crops)
    assert [f.box for f in faces] == [(0.0, 0.0, 48.0, 48.0)] * 2
    for face in faces:  # keypoints mapped onto the 48 px crop: the tiny model predicts the centre
        x, y = face.keypoints["nose_tip"]
        assert 0 <= x < 48 and 0 <= y < 48


def test_face_and_result_to_dict(predictor):
    [result] = predictor.predict([np.full((96, 96), 128, np.uint8)])
    d = result.to_dict()
    assert (d["width"], d["height"]) == (96, 96) and len(d["faces"]) == 1
    face = d["faces"][0]
    assert face["box"] == [0.0, 0.0, 96.0, 96.0]
    assert set(face["keypoints"]) == set(KEYPOINT_NAMES) and len(face["keypoints"]["nose_tip"]) == 2
    assert face["emotion"] in SEED5.classes and set(face["probabilities"]) == set(SEED5.classes)


def test_model_info_and_labels(predictor, tiny):
    info = predictor.model_info()
    assert info["keypoints"] == {
        "run_id": "tiny-keypoints",
        "epoch": 1,
        "input_size": 96,
        "version": info["keypoints"]["version"],
    }
    assert info["emotion"] == {
        "run_id": "tiny-emotion",
        "epoch": 1,
        "input_size": 48,
        "version": info["emotion"]["version"],
        "label_scheme": "seed5",
        "class_names": list(SEED5.classes),
    }
    assert predictor.labels() == {
        "keypoints": list(KEYPOINT_NAMES),
        "emotion": list(SEED5.classes),
        "label_scheme": "seed5",
    }
    # The version is a hash of the weights: 12 hex digits, one per model, and no path anywhere.
    versions = [info["keypoints"]["version"], info["emotion"]["version"]]
    assert all(len(v) == 12 and int(v, 16) >= 0 for v in versions) and versions[0] != versions[1]
    assert str(tiny[0].parent) not in str(info)


def test_one_model_only(tiny):
    emotion_only = Predictor.from_paths(None, str(tiny[1]), device="cpu", detect=False)
    [face] = emotion_only.predict_crops(np.zeros((1, 96, 96), np.uint8))
    assert face.keypoints is None and face.emotion in SEED5.classes
    assert emotion_only.model_info()["keypoints"] is None
    assert emotion_only.labels()["keypoints"] == []
    assert Face.to_dict(face)["keypoints"] is None


def test_constructor_errors(tiny):
    with pytest.raises(UserError, match="at least one checkpoint"):
        Predictor.from_paths(None, None, detect=False)
    with pytest.raises(UserError, match="emotion checkpoint, given as the keypoints model"):
        Predictor.from_paths(str(tiny[1]), None, detect=False)
    with pytest.raises(UserError, match="does not exist"):
        Predictor.from_paths(str(tiny[0] / "nope"), None, detect=False)


def test_bad_requests_are_user_errors(predictor):
    photo = np.zeros((100, 200), np.uint8)
    with pytest.raises(UserError, match="unknown mode"):
        predictor.predict([photo], mode="faces")
    with pytest.raises(UserError, match="2 lists for 1 images"):
        predictor.predict([photo], boxes=[[], []])
    with pytest.raises(UserError, match="lies outside the 200x100 image"):
        predictor.predict([photo], boxes=[[(500, 10, 50, 50)]])
    with pytest.raises(UserError, match="must be positive"):
        predictor.predict([photo], boxes=[[(10, 10, 0, 50)]])
    with pytest.raises(UserError, match="box w must be a finite number"):
        predictor.predict([photo], boxes=[[(10, 10, float("nan"), 50)]])
    with pytest.raises(UserError, match="4 numbers"):
        predictor.predict([photo], boxes=[["1234"]])
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict([photo.astype(np.float32)])
    assert predictor.predict([photo], boxes=[[]])[0].faces == []  # no box, no face, no detector
    # Per-image boxes may be None: that image follows `mode` (here auto -> a 96 px crop).
    crop, with_box = predictor.predict([np.zeros((96, 96), np.uint8), photo], boxes=[None, [(5, 5, 50, 50)]])
    assert [f.box for f in crop.faces] == [(0.0, 0.0, 96.0, 96.0)] and [f.box for f in with_box.faces] == [
        (5.0, 5.0, 50.0, 50.0)
    ]


# --------------------------------------------------------------------------------------------------
# Detection (OpenCV Haar cascade)
# --------------------------------------------------------------------------------------------------


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0.0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


@pytest.fixture(scope="module")
def haar_predictor(tiny) -> Predictor:
    pytest.importorskip("cv2")
    return Predictor.from_paths(str(tiny[0]), str(tiny[1]), device="cpu", detector="haar")


def test_haar_finds_synthetic_faces_framed_like_their_true_boxes(haar_predictor):
    photos = synthesize_photos(6, seed=3)
    results = haar_predictor.predict([p.image for p in photos], mode="detect")
    true_faces = found = 0
    for photo, result in zip(photos, results):
        assert (result.height, result.width) == photo.image.shape[:2]
        assert all(f.keypoints is not None and f.emotion is not None for f in result.faces)
        true_faces += len(photo.boxes)
        for true_box in photo.boxes.tolist():
            best = max(result.faces, key=lambda f: iou(f.box, true_box), default=None)
            if best is None or iou(best.box, true_box) < 0.5:
                continue
            found += 1
            x, y, w, h = best.box
            tx, ty, ts, _ = true_box
            # The re-framed crop box approximates the true (training-framed) crop box: side within
            # 20%, centre within 12% of the side (the cascade searches sizes in 10% steps).
            assert best.score is None and best.landmarks is None  # Haar: no score, no landmarks
            assert w == h and 0.8 < w / ts < 1.2
            assert abs(x + w / 2 - (tx + ts / 2)) < 0.12 * ts and abs(y + h / 2 - (ty + ts / 2)) < 0.12 * ts
    assert found >= true_faces // 2, f"found {found} of {true_faces} faces"
    assert sum(len(r.faces) for r in results) <= true_faces + 2  # few false positives


@pytest.mark.realdata
def test_framing_puts_real_kaggle_faces_where_training_crops_have_them(real_data):
    """Real Kaggle crops (3x onto an edge-padded canvas): the predictor's crop box from the Haar box
    must put the eyes and the bottom lip where the training crops have them (37.7 and 79.0 of 96)."""
    pytest.importorskip("cv2")
    import pandas as pd
    from PIL import Image

    table = pd.read_csv(real_data / "facial-keypoints" / "training.csv.gz", nrows=80).dropna().head(40)
    detector = detect_module.HaarDetector()
    eye_y, lip_y = [], []
    for row in table.itertuples(index=False):
        kp = np.asarray(row[:30], np.float64)
        crop = np.array(row[30].split(), np.uint8).reshape(96, 96)
        canvas = np.pad(np.asarray(Image.fromarray(crop).resize((288, 288), Image.BILINEAR)), 96, mode="edge")
        boxes = [d.box for d in detector.detect(canvas)]
        found = [d for d in boxes if 96 <= d[0] + d[2] / 2 <= 384 and 96 <= d[1] + d[3] / 2 <= 384]
        if not found:
            continue
        x, y, side, _ = crop_box_from_detection(found[0])
        photo_y = 96 + (kp[1::2] + 0.5) * 3 - 0.5  # true keypoints on the canvas
        crop_y = (photo_y + 0.5 - y) * 96 / side - 0.5  # ... in the predictor's 96 px crop
        eye_y.append((crop_y[0] + crop_y[1]) / 2)
        lip_y.append(crop_y[14])
    assert len(eye_y) >= 0.8 * len(table)
    assert abs(np.mean(eye_y) - 37.7) < 2.0 and abs(np.mean(lip_y) - 79.0) < 2.5, (np.mean(eye_y), np.mean(lip_y))


def test_a_photo_without_faces_gives_no_faces(predictor):
    pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    flat = np.full((240, 320, 3), 128, np.uint8)
    noise = rng.integers(0, 256, (240, 320), dtype=np.uint8)
    for result in predictor.predict([flat, noise]):  # auto -> detect (not a small square)
        assert result.faces == []


def test_haar_searches_large_photos_at_bounded_resolution():
    pytest.importorskip("cv2")
    photo = synthesize_photos(1, seed=3)[0]
    detector = detect_module.HaarDetector(max_side=320)
    big = np.kron(photo.image[..., 0], np.ones((3, 3), np.uint8))  # 3x the photo
    small_boxes = [d.box for d in detector.detect(photo.image[..., 0])]
    big_boxes = [d.box for d in detector.detect(big)]
    assert len(big_boxes) >= 1 and len(big_boxes) == len(small_boxes)
    for (x, y, w, h), (bx, by, bw, bh) in zip(small_boxes, big_boxes):
        assert abs(bw - 3 * w) <= 0.25 * bw and abs(bx - 3 * x) <= 0.15 * bw


def test_missing_opencv_is_a_one_line_install_hint(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    with pytest.raises(UserError) as err:
        detect_module.make_detector("mtcnn")
    message = str(err.value)
    assert "pip install 'emokp-ray[detect]'" in message and "\n" not in message
    with pytest.raises(UserError, match="emokp-ray\\[detect\\]"):
        Predictor.from_paths(str(tiny[0]), None, detect=True)
    # Without a detector, crops and caller boxes still work; only detection needs OpenCV.
    lazy = Predictor.from_paths(str(tiny[0]), None, detect=False)
    assert len(lazy.predict([np.zeros((96, 96), np.uint8)])[0].faces) == 1
    assert len(lazy.predict([np.zeros((200, 300), np.uint8)], boxes=[[(0, 0, 96, 96)]])[0].faces) == 1
    with pytest.raises(UserError, match="emokp-ray\\[detect\\]"):
        lazy.predict([np.zeros((200, 300), np.uint8)], mode="detect")


def test_opencv_without_cascades_is_explained(monkeypatch):
    class FakeCv2:
        __version__ = "5.0.0"
        data = None

    monkeypatch.setitem(sys.modules, "cv2", FakeCv2())
    with pytest.raises(UserError, match="5.0.0 ships no Haar cascade"):
        detect_module.make_detector("haar")


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def test_annotate_draws_on_an_rgb_copy(predictor):
    photo = np.full((200, 300, 3), 90, np.uint8)
    box = (40.0, 60.0, 100.0, 100.0)
    [result] = predictor.predict([photo], boxes=[[box]])
    before = photo.copy()
    image = annotate(photo, result)
    assert image.mode == "RGB" and image.size == (300, 200)
    assert (photo == before).all()  # the input is untouched
    drawn = np.asarray(image)
    changed = (drawn != photo).any(axis=2)
    assert changed[60, 40:140].all() and changed[60:160, 40].all()  # the box's top and left edges
    kx, ky = result.faces[0].keypoints["nose_tip"]
    assert changed[round(ky), round(kx)]  # a keypoint cross
    assert changed[:60, 40:140].any()  # the label above the box
    assert not changed[180:, 200:].any()  # far from the face: untouched
    grey = annotate(photo[..., 0].copy(), ImageResult(200, 300, []))
    assert grey.mode == "RGB" and (np.asarray(grey) == 90).all()
