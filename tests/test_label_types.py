"""The labeling run's typed records: the listing, the run's metadata, the output's counts, and the
output rows built by column name."""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from emokp_ray.inference.label import Listing, RunMetadata
from emokp_ray.inference.label_output import OUTPUT_SCHEMA, OutputCounts, output_table
from emokp_ray.inference.results import Face, ImageResult


def test_listing_reads_back_what_it_writes_and_what_older_runs_wrote():
    listing = Listing(total=3, skipped_files=1, skipped_links=2, videos=1, files=["a"], video_files=["v"])
    assert Listing.from_dict(listing.to_dict()) == listing
    # listing.json of a run from before videos and links were counted: the later fields take defaults
    assert Listing.from_dict({"files": ["a"], "total": 3, "skipped_files": 1}) == Listing(
        total=3, skipped_files=1, files=["a"]
    )


def test_run_metadata_is_json_ready_and_names_its_input_sizes():
    meta = RunMetadata(
        keypoint_names=["left_eye_center"],
        keypoint_columns=["left_eye_center_x", "left_eye_center_y"],
        emotion_classes=["anger", "happiness"],
        label_scheme="seed5",
        model={"keypoints": {"input_size": 96}, "emotion": None},
        input="photos/",
        input_kind="files",
        mode="auto",
        jsonl=False,
        annotate_dir=None,
        fps="all",
        frames_per_range=32,
    )
    assert meta.to_dict()["format_version"] == 2 and meta.to_dict()["fps"] == "all"
    assert meta.input_sizes() == {"keypoints": 96}


def test_output_counts_fields():
    names = {f.name for f in dataclasses.fields(OutputCounts)}
    assert names == {"rows", "images", "frames", "faces", "no_face", "errors", "emotions"}


def test_output_rows_are_built_by_column_name():
    face = Face(
        box=(1.0, 2.0, 30.0, 30.0), keypoints=None, emotion="anger", probabilities={"anger": 0.9, "happiness": 0.1}
    )
    table = output_table(
        ["a.jpg", "b.jpg", "c.jpg"],
        [(40, 50), (40, 50), None],
        [ImageResult(40, 50, [face]), ImageResult(40, 50, []), None],
        [None, None, "c.jpg: not an image"],
        ["anger", "happiness"],
        frames=[None, (7, 0.25, 0), None],  # b.jpg stands in for a video frame here
    )
    assert table.schema == OUTPUT_SCHEMA
    rows = table.to_pylist()
    assert rows[0]["box"] == [1.0, 2.0, 30.0, 30.0] and rows[0]["emotion"] == "anger"
    assert rows[0]["probabilities"] == [pa.scalar(0.9, pa.float32()).as_py(), pa.scalar(0.1, pa.float32()).as_py()]
    assert rows[0]["keypoints"] is None and rows[0]["frame_index"] is None
    assert rows[1]["status"] == "no_face" and (rows[1]["frame_index"], rows[1]["range_start"]) == (7, 0)
    assert rows[2]["status"] == "error" and rows[2]["width"] is None and rows[2]["error"] == "c.jpg: not an image"
