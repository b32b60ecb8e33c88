"""Your own faces as `emokp data prepare` inputs: class-named image folders and keypoint listings
(emokp_ray/inference/folders.py), with the predictor's detection for photos (a stand-in detector here)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emokp_ray.data.schema import images_from_column, iter_split, keypoints_from_column, read_info
from emokp_ray.data.synth.crops import synthesize
from emokp_ray.data.synth.photos import synthesize_photos
from emokp_ray.errors import UserError
from emokp_ray.inference import folders
from emokp_ray.inference.align import box_to_image
from emokp_ray.inference.detect import Detection
from emokp_ray.inference.folders import prepare_images
from emokp_ray.inference.predictor import crop_box_from_detection
from emokp_ray.labels import FER7, KEYPOINT_COLUMNS, SEED5, custom_scheme_name, emotion_scheme

# folder names as users write them: FER's words, synonyms, upper case
FOLDER_NAMES = {0: "Angry", 1: "disgusted", 2: "sadness", 3: "happy", 4: "SURPRISE"}


class BoxDetector:
    """One face per non-flat image: the box given for its size (or the centre square), like a
    detector without landmarks; none in a flat image."""

    def __init__(self, boxes: dict[tuple[int, int], tuple[float, float, float, float]] | None = None):
        self.boxes = boxes or {}
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.calls += 1
        if float(image.std()) < 1.0:
            return []
        height, width = image.shape[:2]
        side = min(height, width) / 2
        box = self.boxes.get((height, width), ((width - side) / 2, (height - side) / 2, side, side))
        return [Detection(box=box)]


def _faces(n: int, seed: int = 0):
    batch = synthesize(n, seed=seed)
    return batch.images, batch.labels


def _write_class_folders(root: Path, n: int = 40, seed: int = 0) -> dict[str, int]:
    """Synthetic faces as ROOT/<FER word>/NNN.png: grey and colour, 96 and 64 px. Returns images per class folder."""
    images, labels = _faces(n, seed)
    counts: dict[str, int] = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        name = FOLDER_NAMES[int(label)]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        if i % 3 == 0:
            picture = picture.convert("RGB")
        if i % 4 == 0:
            picture = picture.resize((64, 64))
        picture.save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
        counts[name] = counts.get(name, 0) + 1
    return counts


def _rows(data: Path, split: str) -> pa.Table:
    return pa.concat_tables(list(iter_split(data, split))) if (data / split).is_dir() else pa.table({})


def test_class_folders_with_synonyms_mixed_colour_and_sizes(tmp_path):
    root = tmp_path / "faces"
    counts = _write_class_folders(root)
    result = prepare_images([root], tmp_path / "out", seed=0, val_fraction=0.2, test_fraction=0.1)
    info = read_info(tmp_path / "out")
    assert info.tasks == ["emotion"] and info.scheme == "seed5"
    total = {name: sum(info.counts[s].get(name, 0) for s in info.counts) for name in SEED5.classes}
    # every image kept, each under the class its folder names
    assert total == {SEED5.classes[k]: counts[FOLDER_NAMES[k]] for k in range(5)}
    assert sorted(map(tuple, info.image_sizes)) == [(64, 64), (96, 96)]  # crops kept at their own size
    assert set(info.counts) == {"train", "val", "test"}
    assert "40 images read, 40 kept, 0 bad" in result.summary()
    # grey pixels as Pillow turns a colour image grey (the file's own values for a grey PNG)
    table = _rows(tmp_path / "out", "train")
    first = table.filter(pa.compute.equal(table["height"], 96)).slice(0, 1)
    assert images_from_column(first["image"], 96, 96).dtype == np.uint8


def test_split_folders_become_the_splits(tmp_path):
    root = tmp_path / "faces"
    for split, seed in (("train", 0), ("Val", 1), ("test", 2)):
        _write_class_folders(root / split, n=10, seed=seed)
    prepare_images([root], tmp_path / "out", seed=0)
    info = read_info(tmp_path / "out")
    assert {s: c["rows"] for s, c in info.counts.items()} == {"train": 10, "val": 10, "test": 10}


def test_a_folder_mixing_split_and_class_folders_is_one_error(tmp_path):
    root = tmp_path / "faces"
    _write_class_folders(root / "train", n=5)
    _write_class_folders(root, n=5)
    with pytest.raises(UserError, match="mixes split folders"):
        prepare_images([root], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unknown_class_folder_lists_the_known_classes_before_reading(tmp_path, monkeypatch):
    root = tmp_path / "faces"
    _write_class_folders(root, n=10)
    (root / "contempt").mkdir()
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(root / "contempt" / "a.png")
    read = []
    monkeypatch.setattr(folders._Faces, "crop", lambda self, path: read.append(path))
    with pytest.raises(UserError) as err:
        prepare_images([root], tmp_path / "out")
    assert "contempt" in str(err.value) and "anger, disgust, sad, happiness, surprise" in str(err.value)
    assert "--classes" in str(err.value) and "\n" not in str(err.value)
    assert read == []  # no image was decoded before the error


def test_fer7_needs_its_scheme_for_neutral(tmp_path):
    root = tmp_path / "faces"
    for name in ("neutral", "Happy", "3"):  # "3": FER's label number of happy
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((48, 48), 100, np.uint8)).save(root / name / "a.png")
    with pytest.raises(UserError, match="neutral"):
        prepare_images([root], tmp_path / "seed5")
    prepare_images([root], tmp_path / "fer7", scheme="fer7")
    counts = read_info(tmp_path / "fer7").counts
    assert sum(c.get("neutral", 0) for c in counts.values()) == 1
    assert sum(c.get("happiness", 0) for c in counts.values()) == 2


def test_declared_classes_make_a_custom_scheme(tmp_path):
    root = tmp_path / "faces"
    for name, n in (("Calm", 3), ("excited", 2), ("bored", 4)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((48, 48), 10 * i, np.uint8)).save(root / name / f"{i}.png")
    scheme = custom_scheme_name(["excited", "bored", "calm"])
    # "calm" is a synonym of neutral, but a declared class named calm takes the folder first
    prepare_images([root], tmp_path / "out", scheme=scheme, val_fraction=0.0, test_fraction=0.0)
    info = read_info(tmp_path / "out")
    assert info.scheme == "custom:excited,bored,calm"
    assert emotion_scheme(info.scheme).classes == ("excited", "bored", "calm")
    assert {k: info.counts["train"][k] for k in ("excited", "bored", "calm")} == {"excited": 2, "bored": 4, "calm": 3}
    labels = _rows(tmp_path / "out", "train")["label"].to_pylist()
    assert sorted(labels) == [0, 0, 1, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("classes", [["a"], ["x", "X"], ["bad name!", "b"]])
def test_bad_declared_classes_are_one_error(classes):
    with pytest.raises(UserError, match="--classes"):
        custom_scheme_name(classes)


def test_bad_files_empty_folders_and_non_images_are_reported_not_fatal(tmp_path):
    root = tmp_path / "faces"
    _write_class_folders(root, n=10)
    (root / "happy" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "happy" / "notes.txt").write_text("hello")
    (root / "surprise").mkdir(exist_ok=True)
    for f in (root / "SURPRISE").glob("*"):
        f.unlink()
    (root / "SURPRISE").rmdir()
    result = prepare_images([root], tmp_path / "out", seed=0)
    summary = result.summary()
    assert "1 bad" in summary and "happy/broken.jpg: not an image" in summary
    assert "class folders without images: surprise" in summary
    assert "1 file(s) without an image extension skipped" in summary
    assert read_info(tmp_path / "out").extra["reports"][0]["bad_rows"] == 1
    with pytest.raises(UserError, match="broken.jpg"):
        prepare_images([root], tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_a_folder_of_non_images_is_one_clear_error(tmp_path):
    root = tmp_path / "faces"
    (root / "happy").mkdir(parents=True)
    (root / "happy" / "a.txt").write_text("x")
    (root / "happy" / "b.csv").write_text("y")
    with pytest.raises(UserError, match=r"holds no image files .*2 other files skipped"):
        prepare_images([root], tmp_path / "out")
    (root / "happy" / "c.png").write_bytes(b"")  # an image name, no image: a bad file, and nothing kept
    with pytest.raises(UserError, match="no usable rows"):
        prepare_images([root], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_symlink_loops_are_walked_once(tmp_path):
    root = tmp_path / "faces"
    counts = _write_class_folders(root, n=15)
    os.symlink("..", root / "sadness" / "up")  # a loop back to ROOT
    os.symlink(str(root / "happy"), root / "Angry" / "also-happy")  # another class folder
    (root / "happy" / "deeper").mkdir()
    os.symlink("..", root / "happy" / "deeper" / "loop")  # a loop inside one class folder
    result = prepare_images([root], tmp_path / "out", seed=0, val_fraction=0.0, test_fraction=0.0)
    assert read_info(tmp_path / "out").counts["train"]["rows"] == sum(counts.values())
    assert "folder link(s) not followed" in result.summary()


def test_photos_go_through_detection_and_faceless_photos_are_reported(tmp_path):
    root = tmp_path / "faces"
    (root / "happy").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), np.uint8)).save(root / "happy" / "photo.png")
    Image.fromarray(np.full((200, 300), 128, np.uint8)).save(root / "happy" / "wall.png")  # flat: no face
    Image.fromarray(rng.integers(0, 255, (48, 48), np.uint8)).save(root / "happy" / "crop.png")
    detector = BoxDetector()
    result = prepare_images([root], tmp_path / "out", detector=detector, val_fraction=0.0, test_fraction=0.0)
    assert detector.calls == 2  # the two photos; the 48 px crop is used as it is
    info = read_info(tmp_path / "out")
    assert info.counts["train"]["happiness"] == 2
    assert sorted(map(tuple, info.image_sizes)) == [(48, 48), (folders.CROP_SIZE, folders.CROP_SIZE)]
    assert "wall.png: no face found in the 300x200 image" in result.summary()
    # --detect crop: every image is a crop, no detector called
    detector = BoxDetector()
    prepare_images([root], tmp_path / "crops", detector=detector, detect_mode="crop", val_fraction=0, test_fraction=0)
    assert detector.calls == 0 and read_info(tmp_path / "crops").counts["train"]["rows"] == 3


def test_folders_are_streamed_in_chunks(tmp_path, monkeypatch):
    root = tmp_path / "faces"
    _write_class_folders(root, n=30)
    monkeypatch.setattr(folders, "CHUNK_ROWS", 4)
    reader = folders.ImageFolderReader(root, SEED5)

    class AllTrain:
        def assign(self, source, strata):
            return np.array(["train"] * len(strata), dtype=object)

    sizes = [len(chunk) for chunk, _ in reader.pairs(AllTrain())]
    assert sum(sizes) == 30 and max(sizes) <= 4 and len(sizes) >= 8


# ----------------------------------------------------------------------------- keypoint listings


def _listing(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", *KEYPOINT_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(name: str, points: np.ndarray) -> dict:
    return {"path": name, **{c: ("" if np.isnan(v) else f"{v:.3f}") for c, v in zip(KEYPOINT_COLUMNS, points)}}


def test_keypoint_listing_of_crops_keeps_the_points(tmp_path):
    batch = synthesize(12, seed=3)
    rows = []
    for i, (image, points) in enumerate(zip(batch.images, batch.keypoints)):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        points = points.copy()
        if i == 0:
            points[4:20] = np.nan  # a row with some points missing is kept
        rows.append(_row(f"{i}.png", points))
    rows.append(_row("missing.png", batch.keypoints[0]))
    listing = _listing(tmp_path / "points.csv", rows)
    result = prepare_images([listing], tmp_path / "out", val_fraction=0.0, test_fraction=0.0)
    assert "missing.png" in result.summary() and "12 kept, 1 bad" in result.summary()
    table = _rows(tmp_path / "out", "train")
    kept = keypoints_from_column(table["keypoints"])
    order = np.argsort(table["row_id"].to_numpy())
    expected = np.round(batch.keypoints.astype(np.float64), 3)
    expected[0, 4:20] = np.nan
    np.testing.assert_allclose(kept[order], expected, atol=1e-3)


def test_keypoint_listing_of_photos_moves_points_into_the_crop(tmp_path):
    photos = synthesize_photos(2, seed=5)
    rows, boxes = [], {}
    for i, photo in enumerate(photos):
        Image.fromarray(photo.image).save(tmp_path / f"photo{i}.png")
        largest = int(np.argmax(photo.boxes[:, 2] * photo.boxes[:, 3]))
        boxes[photo.image.shape[:2]] = tuple(float(v) for v in photo.boxes[largest])
        rows.append(_row(f"photo{i}.png", photo.keypoints[largest].astype(np.float64)))
    listing = pq.write_table(
        pa.table({"path": [r["path"] for r in rows], **{c: [float(r[c]) for r in rows] for c in KEYPOINT_COLUMNS}}),
        tmp_path / "points.parquet",
    )
    assert listing is None
    prepare_images(
        [tmp_path / "points.parquet"], tmp_path / "out", detector=BoxDetector(boxes), val_fraction=0, test_fraction=0
    )
    table = _rows(tmp_path / "out", "train")
    assert table.num_rows == 2 and set(table["height"].to_pylist()) == {folders.CROP_SIZE}
    for row_id, on_crop in zip(table["row_id"].to_pylist(), keypoints_from_column(table["keypoints"])):
        photo = photos[row_id - 1]
        largest = int(np.argmax(photo.boxes[:, 2] * photo.boxes[:, 3]))
        crop_to_image = box_to_image(crop_box_from_detection(photo.boxes[largest]), folders.CROP_SIZE)
        back = on_crop.reshape(-1, 2) @ crop_to_image[:, :2].T + crop_to_image[:, 2]
        np.testing.assert_allclose(back.reshape(-1), photo.keypoints[largest], atol=1e-3)
        assert (on_crop > 0).all() and (on_crop < folders.CROP_SIZE).all()


def test_keypoint_listing_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,left_eye_center_x\na.png,1\n")
    with pytest.raises(UserError, match="needs a `path` column and Kaggle's 30 keypoint columns"):
        prepare_images([bad], tmp_path / "out")
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(tmp_path / "a.png")
    points = np.full(30, 50.0)
    outside = points.copy()
    outside[0] = 120.0
    text = points.astype(object)
    text[3] = "abc"
    listing = _listing(
        tmp_path / "points.csv",
        [_row("a.png", points), _row("a.png", outside), {**_row("a.png", points), KEYPOINT_COLUMNS[3]: "abc"}],
    )
    result = prepare_images([listing], tmp_path / "out", val_fraction=0, test_fraction=0)
    summary = result.summary()
    assert "line 3 (a.png): a keypoint lies outside the face crop" in summary
    assert "line 4 (a.png): right_eye_center_y is not a number" in summary


@pytest.mark.slow
def test_prepare_cli_reads_a_folder_and_refuses_unknown_classes(tmp_path):
    root = tmp_path / "faces"
    _write_class_folders(root, n=10)
    run = [sys.executable, "-m", "emokp_ray.cli", "data", "prepare", str(root), "--out", str(tmp_path / "out")]
    done = subprocess.run(run, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "image folders" in done.stdout
    (root / "bored").mkdir()
    done = subprocess.run(run, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "bored" in done.stderr
    done = subprocess.run(
        [*run, "--classes", "anger,disgust,sad,happiness,surprise,bored"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert read_info(tmp_path / "out").scheme == "custom:anger,disgust,sad,happiness,surprise,bored"
    assert FER7.classes[0] == "anger"
