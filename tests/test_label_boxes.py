"""Faces the user already has: a listing input (a CSV or Parquet file of image paths)
may carry `boxes` per image; given boxes are the faces (detection skipped), `[]` means no face, null
means detect, and an invalid cell is an error row of that image, never a failed run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emokp_ray.errors import UserError
from emokp_ray.inference.label import BatchLabeler, run_label
from emokp_ray.inference.label_inputs import parse_boxes, resolve_input, work_table
from emokp_ray.inference.label_output import PARQUET_DIR, SUMMARY_FILE, read_labels
from tests.fake_detector import HalvesDetector
from tests.helpers import write_tiny_checkpoints

# source -> (boxes cell in the CSV, expected status, expected boxes or face count)
CASES = {
    "given.png": ('"[[10, 20, 60, 60], [100, 30, 50.5, 50.5]]"', "ok", [[10, 20, 60, 60], [100, 30, 50.5, 50.5]]),
    "none_here.png": ('"[]"', "no_face", []),
    "detect.png": ("", "ok", 2),  # empty cell (null): detected, HalvesDetector's two halves
    "not_json.png": ('"[[1, 2, 3"', "error", "not JSON"),
    "three_numbers.png": ('"[[1, 2, 3]]"', "error", "box 0"),
    "zero_width.png": ('"[[1, 2, 0, 5]]"', "error", "width and height must be positive"),
    "outside.png": ('"[[500, 500, 20, 20]]"', "error", "outside"),
    "missing.png": ('"[[1, 2, 3, 4]]"', "error", "missing.png"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[str, str]:
    kp, em = write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))
    return str(kp), str(em)


@pytest.fixture(scope="module")
def listed(tmp_path_factory) -> Path:
    """A folder of 200x150 noise photos (all CASES but missing.png) and listing.csv naming them by
    relative path, with their boxes cells."""
    folder = tmp_path_factory.mktemp("listed")
    (folder / "img").mkdir()
    rng = np.random.default_rng(0)
    for name in CASES:
        if name != "missing.png":
            Image.fromarray(rng.integers(0, 256, (150, 200), dtype=np.uint8)).save(folder / "img" / name)
    lines = ["path,boxes"] + [f"img/{name},{cell}" for name, (cell, _, _) in CASES.items()]
    (folder / "listing.csv").write_text("\n".join(lines) + "\n")
    return folder


def _check(rows: list[dict]) -> None:
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    assert set(by_source) == {f"img/{name}" for name in CASES}  # every listed image, exactly once
    for name, (_, status, expected) in CASES.items():
        got = sorted(by_source[f"img/{name}"], key=lambda r: r["face_index"])
        assert {r["status"] for r in got} == {status}, (name, got)
        if status == "error":
            (row,) = got
            assert expected in row["error"] and f"img/{name}" in row["error"], row["error"]
        elif isinstance(expected, list) and expected:
            assert [r["box"] for r in got] == expected  # the given boxes, as given, in order
            assert all(r["keypoints"] is not None and r["emotion"] is not None for r in got)
        elif isinstance(expected, int):
            assert len(got) == expected  # detected (the halves, re-framed like training crops)


def test_parse_boxes_reads_json_text_and_nested_lists():
    assert parse_boxes(None) is None and parse_boxes("") is None and parse_boxes("null") is None
    assert parse_boxes("[]") == [] and parse_boxes([]) == []
    assert parse_boxes("[[1, 2, 3.5, 4]]") == [[1.0, 2.0, 3.5, 4.0]]
    assert parse_boxes([[1.0, 2.0, 3.0, 4.0], (0, 0, 1, 1)]) == [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="more than"):
        parse_boxes([[0, 0, 1, 1]] * 257)
    for bad in ("{}", "[1, 2, 3, 4]", "[[1, 2, 3, NaN]]", "[[1, 2, -3, 4]]", '[["a", 2, 3, 4]]', "[[true, 2, 3, 4]]"):
        with pytest.raises(ValueError):
            parse_boxes(bad)


def test_a_listing_is_resolved_and_its_bad_cells_become_error_rows(listed):
    spec = resolve_input(str(listed / "listing.csv"))
    assert spec.kind == "listing" and not spec.crop_mode
    table = work_table(spec)
    assert table.schema == spec.work_schema
    rows = {r["source"]: r for r in table.to_pylist()}
    assert list(rows) == [f"img/{name}" for name in CASES]  # listing order
    assert rows["img/given.png"]["path"] == f"{listed}/img/given.png"
    assert json.loads(rows["img/given.png"]["boxes"]) == CASES["given.png"][2]
    assert rows["img/detect.png"]["boxes"] is None and rows["img/none_here.png"]["boxes"] == "[]"
    assert rows["img/not_json.png"]["error"] and rows["img/not_json.png"]["boxes"] is None
    # A path with a URI scheme is an error row (paths are on the listing's filesystem).
    (listed / "uri.csv").write_text("path\ns3://bucket/a.png\nimg/given.png\n")
    uri, plain = work_table(resolve_input(str(listed / "uri.csv"))).to_pylist()
    assert "own filesystem" in uri["error"] and plain["error"] is None and plain["boxes"] is None
    # A Parquet file without `path` is refused.
    pq.write_table(pa.table({"file": ["a.png"]}), listed / "nopath.parquet")
    with pytest.raises(UserError, match="`path` column"):
        resolve_input(str(listed / "nopath.parquet"))


def test_given_boxes_skip_detection_in_process(listed, checkpoints):
    spec = resolve_input(str(listed / "listing.csv"))
    labeler = BatchLabeler(*checkpoints, mode="auto", filesystem=spec.filesystem, detector=HalvesDetector())
    _check(labeler(work_table(spec)).to_pylist())


@pytest.mark.slow
@pytest.mark.ray
def test_label_a_parquet_listing_with_nested_boxes(ray_cluster, listed, checkpoints, tmp_path):
    """Parquet: list<list<double>> boxes (null = detect), absolute paths; through the Ray Data stages,
    then a resume of the finished output changes nothing."""
    names = list(CASES)
    nested = [None if CASES[n][0] == "" else parse_or_none(CASES[n][0]) for n in names]
    listing = tmp_path / "listing.parquet"
    pq.write_table(
        pa.table(
            {
                "path": [str(listed / "img" / n) for n in names],
                "boxes": pa.array(nested, pa.list_(pa.list_(pa.float64()))),
            }
        ),
        listing,
    )
    summary = run_label(
        str(listing), *checkpoints, out=str(tmp_path / "out"), detector=HalvesDetector(), batch_size=3, progress=False
    )
    assert summary.input_kind == "listing" and summary.images == len(CASES)
    rows = read_labels(str(tmp_path / "out")).to_pylist()
    for row in rows:
        row["source"] = "img/" + Path(row["source"]).name
    # The cells that are not valid JSON cannot be written as nested lists: they are null (detect) here.
    expected_errors = {n for n in names if CASES[n][1] == "error" and nested[names.index(n)] is not None}
    errors = {Path(r["source"]).name for r in rows if r["status"] == "error"}
    assert errors == expected_errors | {"missing.png"}
    given = sorted((r for r in rows if r["source"] == "img/given.png"), key=lambda r: r["face_index"])
    assert [r["box"] for r in given] == CASES["given.png"][2]
    before = _outcomes(read_labels(str(tmp_path / "out")).to_pylist())
    # An interrupted run (no summary, one part missing) resumes: the part written stays as it is, the
    # missing one is labelled again, the listing (boxes included) is read from OUT/_work.
    out = tmp_path / "out"
    parts = sorted((out / PARQUET_DIR).glob("part-*.parquet"))
    assert len(parts) >= 2
    kept = {p: p.read_bytes() for p in parts[1:]}
    parts[0].unlink()
    (out / SUMMARY_FILE).unlink()
    again = run_label(str(listing), *checkpoints, out=str(out), detector=HalvesDetector(), resume=True, progress=False)
    assert (again.images, again.faces, again.errors) == (summary.images, summary.faces, summary.errors)
    assert 0 < again.resumed < summary.images
    assert all(p.read_bytes() == data for p, data in kept.items())
    assert _outcomes(read_labels(str(out)).to_pylist()) == before


def _outcomes(rows: list[dict]) -> list[tuple]:
    return sorted((r["source"], r["face_index"], r["status"], str(r["box"]), r["error"] or "") for r in rows)


def parse_or_none(cell: str):
    """A CASES cell as nested lists where it is JSON (malformed ones kept as they are, or None)."""
    try:
        return json.loads(json.loads(cell))
    except ValueError:
        return None
