"""Batch labeling (emokp_ray.inference.label): every input comes out exactly once with the right
status, crop-mode inputs (prepared Parquet, Kaggle test.csv) match the predictor run in-process,
JSONL equals Parquet, annotated images are written, the summary is written last from what was
written, and an unfinished OUT is refused by readers and finished by a resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from emokp_ray.data.synth.crops import synthesize, write_synth_dataset
from emokp_ray.data.synth.photos import write_synth_photos
from emokp_ray.errors import UserError
from emokp_ray.inference.label import BatchLabeler, load_batch, run_label
from emokp_ray.inference.label_inputs import ListingCounts, iter_work_tables, resolve_input, work_table
from emokp_ray.inference.label_output import (
    ANNOTATIONS_FILE,
    JSONL_DIR,
    METADATA_KEY,
    PARQUET_DIR,
    RUN_FILE,
    SUMMARY_FILE,
    annotation_name,
    read_labels,
)
from emokp_ray.inference.predictor import Predictor
from emokp_ray.labels import KEYPOINT_NAMES, SEED5
from tests.fake_detector import HalvesDetector
from tests.helpers import write_tiny_checkpoints

FOLDER_STATUS = {
    # source -> (status, faces) with HalvesDetector: photos have 2 faces, a 96x96 crop is 1 face
    "photo_000.png": ("ok", 2),
    "photo_001.jpg": ("ok", 2),
    "photo_002.png": ("ok", 2),
    "sub/crop.png": ("ok", 1),
    "grey.png": ("no_face", 0),
    "corrupt_000.jpg": ("error", 0),  # truncated JPEG
    "corrupt_001.jpg": ("error", 0),  # text named .jpg
    "empty.jpg": ("error", 0),
    "notes.png": ("error", 0),  # text named .png
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[str, str]:
    kp, em = write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))
    return str(kp), str(em)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """3 synthetic photos, a truncated JPEG, a text .jpg, an empty file, a text .png, a flat grey
    photo, a 96x96 crop in a subfolder, plus truth.json and a hidden image (neither is an input)."""
    folder = tmp_path_factory.mktemp("in") / "photos"
    write_synth_photos(folder, n=3, seed=0, n_corrupt=2)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not a picture\n")
    Image.fromarray(np.full((150, 200), 128, np.uint8)).save(folder / "grey.png")
    (folder / "sub").mkdir()
    Image.fromarray(synthesize(1, seed=3).images[0]).save(folder / "sub" / "crop.png")
    Image.fromarray(synthesize(1, seed=4).images[0]).save(folder / ".hidden.png")
    return folder


def _rows_by_source(table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault(row["source"], []).append(row)
    return out


# ----------------------------------------------------------------------------- without Ray


def test_resolve_input_lists_images_dataset_and_csv(image_folder, tmp_path):
    spec = resolve_input(str(image_folder))
    assert spec.kind == "images" and not spec.crop_mode
    counts = ListingCounts()
    chunks = list(iter_work_tables(spec, counts, chunk_rows=4))  # streamed in chunks of at most 4 rows
    assert [t.num_rows for t in chunks] == [4, 4, 1]
    sources = [s for t in chunks for s in t["source"].to_pylist()]
    assert sources == sorted(FOLDER_STATUS)  # hidden file and truth.json left out
    assert (counts.skipped_files, counts.inputs) == (1, len(FOLDER_STATUS))

    def listed(location):
        return work_table(resolve_input(str(location)))["source"].to_pylist()

    assert listed(image_folder / "*.jpg") == ["corrupt_000.jpg", "corrupt_001.jpg", "empty.jpg", "photo_001.jpg"]
    assert listed(image_folder / "**" / "crop.png") == ["sub/crop.png"]
    assert listed(image_folder / "sub" / "*.png") == ["crop.png"]  # relative to the glob base
    assert listed(image_folder / "grey.png") == ["grey.png"]

    data = tmp_path / "synth"
    write_synth_dataset(data, n=20, val_fraction=0.25)
    spec = resolve_input(str(data))
    assert (spec.kind, spec.total, spec.crop_mode) == ("dataset", 20, True)

    (tmp_path / "empty_dir").mkdir()
    for bad, words in (
        (tmp_path / "missing", "no such file"),
        (tmp_path / "empty_dir", "no image files"),
        (image_folder / "*.gif", "no files match"),
    ):
        with pytest.raises(UserError, match=words):
            resolve_input(str(bad))


def test_symbolic_link_loops_are_walked_once_and_dangling_links_are_error_rows(tmp_path):
    """A folder with `a -> .` and `b -> .` once listed 100,000 paths from one file in 10 s and went on
    (a labeling run that never started); a dangling link was in no row and no count."""
    import itertools

    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(folder / "photo.png")
    Image.fromarray(np.full((40, 40), 64, np.uint8)).save(folder / "sub" / "inner.png")
    (folder / "a").symlink_to(".")
    (folder / "b").symlink_to(".")
    (folder / "sub" / "up").symlink_to("..")
    (folder / "again").symlink_to("sub")  # a second way into sub: its file is listed once
    (folder / "gone.jpg").symlink_to("nowhere.jpg")
    counts = ListingCounts()
    rows = list(
        itertools.islice((r for t in iter_work_tables(resolve_input(str(folder)), counts) for r in t.to_pylist()), 100)
    )
    # in name order, "again" comes before "sub": sub's file is listed once, under the first way in
    assert sorted(r["source"] for r in rows) == ["again/inner.png", "gone.jpg", "photo.png"]
    assert counts.inputs == 3 and counts.skipped_links == 4  # a, b, sub/up, and the second of again / sub
    # the dangling link becomes an error row naming it, like an unreadable file
    import pyarrow as pa
    import pyarrow.fs as pafs

    sources, images, errors = load_batch(pa.Table.from_pylist(rows), pafs.LocalFileSystem())
    by_source = dict(zip(sources, errors))
    assert by_source["gone.jpg"] == "gone.jpg: a symbolic link whose target does not exist"
    assert by_source["photo.png"] is None and by_source["again/inner.png"] is None


def test_annotation_names_stay_inside_the_folder():
    assert annotation_name("a/b.jpg") == "a/b.jpg.png"
    assert annotation_name("train/synth:row_id=3") == "train/synth_row_id=3.png"
    assert annotation_name("test.csv:ImageId=7") == "test.csv_ImageId=7.png"
    for hostile in ("../../etc/passwd", "/abs/x.png", "a/../../b"):
        name = annotation_name(hostile)
        assert not Path(name).is_absolute() and ".." not in Path(name).parts


def test_batch_labeler_isolates_bad_images_in_process(image_folder, checkpoints):
    """No Ray: the UDF itself. Without OpenCV a photo that needs detection becomes an error row while the
    crop in the same batch is labelled; with OpenCV the flat grey photo has no face."""
    spec = resolve_input(str(image_folder))
    labeler = BatchLabeler(*checkpoints, mode="auto", filesystem=spec.filesystem)
    table = labeler(work_table(spec))
    rows = _rows_by_source(table)
    assert set(rows) == set(FOLDER_STATUS)
    assert [r["status"] for r in rows["sub/crop.png"]] == ["ok"]
    for name in ("corrupt_000.jpg", "corrupt_001.jpg", "empty.jpg", "notes.png"):
        (row,) = rows[name]
        assert row["status"] == "error" and name in row["error"] and row["box"] is None
    try:
        import cv2  # noqa: F401
    except ImportError:
        (row,) = rows["grey.png"]
        assert row["status"] == "error" and "OpenCV" in row["error"]
    else:
        assert [r["status"] for r in rows["grey.png"]] == ["no_face"]
        assert all(r["status"] in ("ok", "no_face") for name in rows if name.startswith("photo_") for r in rows[name])


def test_batch_labeler_labels_a_call_in_model_batches(image_folder, checkpoints):
    """A Ray block holds several model batches: chunked (2 images per predictor call) or all at once,
    the rows are the same, in input order, and a bad file in one chunk leaves the others labelled."""
    spec = resolve_input(str(image_folder))
    whole = BatchLabeler(*checkpoints, mode="crop", filesystem=spec.filesystem, batch_size=64)(work_table(spec))
    chunked = BatchLabeler(*checkpoints, mode="crop", filesystem=spec.filesystem, batch_size=2)(work_table(spec))
    assert chunked.column("source").to_pylist() == whole.column("source").to_pylist()
    assert chunked.column("status").to_pylist() == whole.column("status").to_pylist()
    for name in ("keypoints", "probabilities"):
        a, b = whole.column(name).to_pylist(), chunked.column(name).to_pylist()
        assert all((x is None and y is None) or np.allclose(x, y, atol=1e-4) for x, y in zip(a, b))
    assert chunked.column("status").to_pylist().count("ok") >= 1 and "error" in chunked.column("status").to_pylist()


def test_out_must_be_empty_or_an_earlier_output(tmp_path, checkpoints, image_folder):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(UserError, match="not an earlier `emokp label` output"):
        run_label(str(image_folder), *checkpoints, out=str(precious), progress=False)
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_bad_options_fail_before_any_work(tmp_path, checkpoints, image_folder):
    out = tmp_path / "out"
    for kwargs, words in (
        ({"concurrency": 0}, "concurrency must be"),
        ({"concurrency": (3, 2)}, "concurrency must be"),
        ({"batch_size": 0}, "batch size"),
        ({"detect": "maybe"}, "detect must be"),
        ({"keypoints": None, "emotion": None}, "--keypoints, --emotion or both"),
    ):
        args = {"keypoints": checkpoints[0], "emotion": checkpoints[1], **kwargs}
        with pytest.raises(UserError, match=words):
            run_label(str(image_folder), out=str(out), progress=False, **args)
    assert not out.exists()


def test_an_unwritable_destination_fails_before_any_model_is_loaded(tmp_path, image_folder):
    """A file where OUT's parent folder should be: the error names OUT, though the checkpoints do not
    even exist (they would be loaded later)."""
    (tmp_path / "a_file").write_text("x")
    for flag, kwargs in (
        ("--out", {"out": str(tmp_path / "a_file" / "out")}),
        ("--annotate", {"out": str(tmp_path / "out"), "annotate_dir": str(tmp_path / "a_file" / "png")}),
    ):
        with pytest.raises(UserError, match=f"{flag} .*cannot write there"):
            run_label(str(image_folder), str(tmp_path / "no-such-ckpt"), None, progress=False, **kwargs)


def test_an_unfinished_output_is_refused_by_readers_and_by_a_run_without_resume(tmp_path, checkpoints, image_folder):
    out = tmp_path / "out"
    (out / PARQUET_DIR).mkdir(parents=True)
    (out / RUN_FILE).write_text("{}")  # a run of ours started here, never finished
    with pytest.raises(UserError, match="not a complete `emokp label` output.*--resume"):
        read_labels(str(out))
    with pytest.raises(UserError, match="unfinished run .*add --resume"):
        run_label(str(image_folder), *checkpoints, out=str(out), progress=False)
    assert sorted(p.name for p in out.iterdir()) == [RUN_FILE, PARQUET_DIR]  # nothing touched


# ----------------------------------------------------------------------------- through Ray Data


@pytest.mark.ray
@pytest.mark.slow
def test_default_pool_has_one_single_cpu_actor_per_core(ray_cluster, image_folder, checkpoints, tmp_path):
    summary = run_label(
        str(image_folder),
        *checkpoints,
        out=str(tmp_path / "out"),
        concurrency=None,
        use_gpu=False,
        detector=HalvesDetector(),
        progress=False,
    )
    cores = int(min(os.cpu_count() or 1, ray.cluster_resources()["CPU"]))
    assert summary.actors.startswith(f"{cores} actor{'s' if cores > 1 else ''} x 1 CPU")
    assert (
        summary.images == 9
        and json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())["options"]["concurrency"] == cores
    )


@pytest.mark.slow
@pytest.mark.ray
def test_label_folder_accounts_for_every_file(ray_cluster, image_folder, checkpoints, tmp_path):
    out, annotated = tmp_path / "out", tmp_path / "annotated"
    summary = run_label(
        str(image_folder),
        *checkpoints,
        out=str(out),
        jsonl=True,
        annotate_dir=str(annotated),
        batch_size=3,
        concurrency=2,
        num_cpus=0.5,
        detector=HalvesDetector(),
        progress=False,
    )

    table = read_labels(str(out))
    rows = _rows_by_source(table)
    assert set(rows) == set(FOLDER_STATUS)  # every input, nothing else
    for source, (status, faces) in FOLDER_STATUS.items():
        got = sorted(rows[source], key=lambda r: r["face_index"])
        assert [r["status"] for r in got] == [status] * max(faces, 1), source
        assert [r["face_index"] for r in got] == (list(range(faces)) if faces else [-1]), source
        for row in got:
            if status == "error":
                assert source in row["error"] and row["width"] is None and row["box"] is None
                continue
            assert row["error"] is None
            with Image.open(image_folder / source) as img:
                assert (row["width"], row["height"]) == img.size
            if status == "ok":
                assert len(row["keypoints"]) == 2 * len(KEYPOINT_NAMES) and np.isfinite(row["keypoints"]).all()
                assert row["emotion"] in SEED5.classes and len(row["probabilities"]) == SEED5.num_classes
                assert abs(sum(row["probabilities"]) - 1) < 1e-4
                assert row["emotion"] == SEED5.classes[int(np.argmax(row["probabilities"]))]
            else:
                assert row["box"] is None and row["emotion"] is None
    crop = rows["sub/crop.png"][0]
    assert crop["box"] == [0.0, 0.0, 96.0, 96.0]

    assert (summary.images, summary.faces, summary.no_face, summary.errors, summary.skipped_files) == (9, 7, 1, 4, 1)
    assert "9 images" in str(summary) and "4 errors" in str(summary)
    parts = sorted((out / PARQUET_DIR).glob("part-*.parquet"))
    assert len(parts) >= 2  # written by the workers, one per block
    meta = json.loads(pq.read_schema(parts[0]).metadata[METADATA_KEY])
    assert meta["emotion_classes"] == list(SEED5.classes) and meta["keypoint_names"] == list(KEYPOINT_NAMES)
    assert (
        meta["model"]["keypoints"]["run_id"] == "tiny-keypoints"
        and meta["model"]["emotion"]["run_id"] == "tiny-emotion"
    )
    saved = json.loads((out / SUMMARY_FILE).read_text())
    assert (saved["errors"], saved["rows"], sum(saved["emotions"].values())) == (4, table.num_rows, 7)
    assert saved["emotions"] == {c: table["emotion"].to_pylist().count(c) for c in SEED5.classes}

    # each JSONL part holds the same rows as its Parquet part, floats exactly as float32
    assert sorted(p.stem for p in (out / JSONL_DIR).iterdir()) == [p.stem for p in parts]
    for part in parts:
        lines = [json.loads(line) for line in (out / JSONL_DIR / f"{part.stem}.jsonl").read_text().splitlines()]
        part_rows = pq.read_table(part).to_pylist()
        assert len(lines) == len(part_rows)
        for parquet_row, json_row in zip(part_rows, lines):
            assert parquet_row.keys() == json_row.keys()
            for key, value in parquet_row.items():
                if isinstance(value, list):
                    np.testing.assert_array_equal(np.float32(json_row[key]), np.float32(value))
                else:
                    assert json_row[key] == value, key

    # one annotated PNG per decoded image, the image's size; none for errors
    assert (annotated / ANNOTATIONS_FILE).is_file()
    for source, (status, _) in FOLDER_STATUS.items():
        png = annotated / annotation_name(source)
        assert png.is_file() == (status != "error"), source
        if png.is_file():
            with Image.open(png) as img, Image.open(image_folder / source) as orig:
                assert img.size == orig.size and img.mode == "RGB"
    assert not list(tmp_path.rglob(".*tmp-*"))  # every temporary renamed into place


@pytest.mark.ray
def test_a_pool_larger_than_the_cluster_is_refused(ray_cluster, checkpoints, image_folder, tmp_path):
    with pytest.raises(UserError, match="lower the concurrency"):
        run_label(str(image_folder), *checkpoints, out=str(tmp_path / "out"), concurrency=64, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.ray
def test_label_prepared_dataset_in_crop_mode(ray_cluster, checkpoints, tmp_path):
    """An emotion model alone over a prepared data set: one face per row, the whole crop as box, and
    the same probabilities as the predictor run in-process on the same crops."""
    data = tmp_path / "synth"
    write_synth_dataset(data, n=64, val_fraction=0.25)
    summary = run_label(str(data), None, checkpoints[1], out=str(tmp_path / "out"), batch_size=16, progress=False)
    assert (summary.images, summary.faces, summary.errors, summary.input_kind) == (64, 64, 0, "dataset")

    table = pq.read_table(summary.parquet)
    expected = {}
    for split in ("train", "val"):
        part = pq.read_table(data / split)
        for row_id, image in zip(part["row_id"].to_pylist(), part["image"].to_pylist()):
            expected[f"{split}/synth:row_id={row_id}"] = np.frombuffer(image, np.uint8).reshape(96, 96)
    rows = _rows_by_source(table)
    assert set(rows) == set(expected) and all(len(r) == 1 for r in rows.values())
    assert set(table["face_index"].to_pylist()) == {0} and set(table["status"].to_pylist()) == {"ok"}
    assert table["keypoints"].null_count == table.num_rows  # no keypoint model given

    sources = sorted(expected)
    faces = Predictor.from_paths(None, checkpoints[1], device="cpu", detect=False).predict_crops(
        np.stack([expected[s] for s in sources])
    )
    for source, face in zip(sources, faces):
        (row,) = rows[source]
        assert row["box"] == [0.0, 0.0, 96.0, 96.0] and row["emotion"] == face.emotion
        np.testing.assert_allclose(row["probabilities"], [face.probabilities[c] for c in SEED5.classes], atol=1e-5)


@pytest.mark.ray
def test_label_kaggle_test_csv(ray_cluster, checkpoints, tmp_path):
    """Kaggle's keypoints test.csv (ImageId,Image): good rows keyed by ImageId, a bad row as an error row
    with its line, keypoints equal to the in-process predictor's."""
    crops = synthesize(5, seed=7).images
    lines = ["ImageId,Image"] + [f"{i + 1},{' '.join(map(str, c.reshape(-1)))}" for i, c in enumerate(crops)]
    lines.append("6,1 2 3")  # line 7: too few pixels
    csv = tmp_path / "test.csv"
    csv.write_text("\n".join(lines) + "\n")
    summary = run_label(
        str(csv), checkpoints[0], checkpoints[1], out=str(tmp_path / "out"), batch_size=2, progress=False
    )
    assert (summary.images, summary.faces, summary.errors, summary.input_kind) == (6, 5, 1, "csv")

    rows = _rows_by_source(pq.read_table(summary.parquet))
    assert set(rows) == {f"test.csv:ImageId={i}" for i in range(1, 6)} | {"test.csv:line=7"}
    (bad,) = rows["test.csv:line=7"]
    assert bad["status"] == "error" and "9216 pixel values" in bad["error"]
    faces = Predictor.from_paths(*checkpoints, device="cpu", detect=False).predict_crops(crops)
    for i, face in enumerate(faces):
        (row,) = rows[f"test.csv:ImageId={i + 1}"]
        expected = [v for name in KEYPOINT_NAMES for v in face.keypoints[name]]
        np.testing.assert_allclose(row["keypoints"], expected, atol=1e-3)


def test_load_batch_rejects_crop_rows_of_the_wrong_length():
    import pyarrow as pa

    from emokp_ray.inference.label_inputs import CROP_WORK_SCHEMA

    batch = pa.Table.from_pylist(
        [
            {"source": "a", "image": bytes(96 * 96), "height": 96, "width": 96},
            {"source": "b", "image": bytes(10), "height": 96, "width": 96},
        ],
        schema=CROP_WORK_SCHEMA,
    )
    sources, images, errors = load_batch(batch, None)
    assert sources == ["a", "b"] and images[0].shape == (96, 96) and images[1] is None
    assert errors[0] is None and "b: 10 pixel bytes" in errors[1]
