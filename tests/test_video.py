"""Video: decoding and sampling (inference/video.py), `emokp predict` on videos, FaceAnalyzer.video and
`emokp label` on a folder with videos (frame ranges in parallel, resume, annotated video).

The test clips are made here: a bundled photo moved across the frame and turned a little, frame by
frame (video.write_moving_photo_clip), with some frames left blank (no face)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from emokp_ray.cli import main
from emokp_ray.errors import UserError
from emokp_ray.inference import video as V

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "emokp_ray" / "photos" / "grace_hopper_us_navy.jpg"
RATE = 10.0
FRAMES = 20
BLANK = (5, 6)  # frames without a face


def _clip(folder: Path, name: str = "clip.mp4", frames: int = FRAMES, blank=BLANK) -> Path:
    path = folder / name
    V.write_moving_photo_clip(path, PHOTO, frames=frames, rate=RATE, blank=blank)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return _clip(tmp_path_factory.mktemp("video"))


# ----------------------------------------------------------------------------- decoding and sampling


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mov", ".avi", ".mkv"])
def test_every_container_decodes_every_frame_with_its_index_and_time(tmp_path, suffix):
    path = _clip(tmp_path, "c" + suffix, frames=8, blank=())
    info = V.probe_video(path)
    assert (info.width, info.height, info.rate) == (320, 240, RATE)
    frames = list(V.iter_frames(path, fps=None))
    assert [f.index for f in frames] == list(range(8))
    assert np.allclose([f.timestamp for f in frames], np.arange(8) / RATE)
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in frames)


def test_sampling_keeps_the_first_frame_of_each_slot(clip):
    assert [f.index for f in V.iter_frames(clip, fps=3)] == [0, 4, 7, 10, 14, 17]
    assert [f.index for f in V.iter_frames(clip, fps=RATE)] == list(range(FRAMES))
    assert [f.index for f in V.iter_frames(clip, fps=1000)] == list(range(FRAMES))


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
@pytest.mark.parametrize("fps", [None, 3.0])
def test_frame_ranges_decoded_apart_give_the_whole_pass(tmp_path, suffix, fps):
    """The ranges a labeling run splits a video into (seeking to each) sample exactly the frames of
    one pass, each once (AVI: counted from the start, never sought)."""
    path = _clip(tmp_path, "r" + suffix, blank=())
    whole = [(f.index, round(f.timestamp, 6)) for f in V.iter_frames(path, fps)]
    ranges = V.frame_ranges(V.probe_video(path), fps, sampled_per_range=2)
    assert len(ranges) >= 3 and ranges[-1][1] is None
    pieces = [(f.index, round(f.timestamp, 6)) for lo, hi in ranges for f in V.iter_frames(path, fps, lo, hi)]
    assert pieces == whole


def test_bad_videos_are_one_line_errors_naming_the_file(tmp_path, clip):
    (tmp_path / "text.mp4").write_text("not a video\n" * 20)
    (tmp_path / "empty.webm").write_bytes(b"")
    data = clip.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is lost
    (tmp_path / "folder.mp4").mkdir()
    for name in ("text.mp4", "empty.webm", "cut.mp4", "folder.mp4", "missing.avi"):
        with pytest.raises(V.VideoError) as err:
            list(V.iter_frames(tmp_path / name))
        message = str(err.value)
        assert name in message and "\n" not in message and "Errno" not in message


@pytest.mark.parametrize("fps", [0, -1, float("nan"), float("inf"), "3", True])
def test_bad_fps_is_refused(fps):
    with pytest.raises(UserError, match="fps"):
        V.check_fps(fps)


def test_missing_pyav_says_what_to_install(monkeypatch, clip):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(UserError, match=r"emokp-ray\[video\]"):
        V.probe_video(clip)
    assert main(["predict", str(clip)]) == 2


# ----------------------------------------------------------------------------- predict and the Python API


def test_predict_prints_a_record_per_sampled_frame_and_writes_the_annotated_video(tmp_path, clip, capsys):
    bad = tmp_path / "bad.mov"
    bad.write_bytes(b"\0" * 4096)
    rc = main(["predict", str(clip), str(bad), str(PHOTO), "--json", "--fps", "all", "--annotate", str(tmp_path / "a")])
    captured = capsys.readouterr()
    assert rc == 2  # the bad video: one error line, the other files still answered
    errors = [line for line in captured.err.splitlines() if line.startswith("emokp: error:")]
    assert len(errors) == 2 and "bad.mov" in errors[0] and "1 of 3 files" in errors[1]
    records = [json.loads(line) for line in captured.out.splitlines()]
    frames = [r for r in records if r["image"] == str(clip)]
    assert [r["frame_index"] for r in frames] == list(range(FRAMES))
    assert [r["timestamp"] for r in frames] == pytest.approx([i / RATE for i in range(FRAMES)])
    faces = [len(r["faces"]) for r in frames]
    assert all(faces[i] == 0 for i in BLANK)  # no face: no face rows, not an error
    assert sum(n >= 1 for i, n in enumerate(faces) if i not in BLANK) >= FRAMES - len(BLANK) - 1
    photo = [r for r in records if r["image"] == str(PHOTO)]
    assert len(photo) == 1 and "frame_index" not in photo[0]
    annotated = tmp_path / "a" / "clip.annotated.mp4"
    info = V.probe_video(annotated)
    assert (info.frames, info.rate, info.width) == (FRAMES, RATE, 320)


def test_predict_fps_flag_is_checked(clip, capsys):
    assert main(["predict", str(clip), "--fps", "0"]) == 2
    assert "--fps" in capsys.readouterr().err


def test_analyzer_video_is_the_predictor_on_each_frame(tmp_path, clip):
    import emokp_ray

    analyzer = emokp_ray.FaceAnalyzer()
    results = analyzer.video(clip, fps=3, annotate=tmp_path / "out.mp4")
    assert [r.frame_index for r in results] == [0, 4, 7, 10, 14, 17]
    assert [r.timestamp for r in results] == pytest.approx([0.0, 0.4, 0.7, 1.0, 1.4, 1.7])
    frames = {f.index: f.image for f in V.iter_frames(clip, fps=3)}
    for result in results[:3]:  # one code path: the same answer as the frame given as a photo
        alone = analyzer(frames[result.frame_index])
        assert [f.to_dict() for f in alone.faces] == [f.to_dict() for f in result.faces]
    table = emokp_ray.to_pandas(results)
    assert {"frame_index", "timestamp", "emotion"} <= set(table.columns)
    assert sorted(set(table["frame_index"])) == [r.frame_index for r in results if r.faces]
    assert results[0].to_dict()["frame_index"] == 0
    assert V.probe_video(tmp_path / "out.mp4").frames == len(results)
    with pytest.raises(UserError, match="nothing.mp4"):
        analyzer.video(tmp_path / "nothing.mp4")


# ----------------------------------------------------------------------------- emokp label


def test_the_listing_splits_videos_into_ranges_and_keeps_unreadable_ones_as_errors(tmp_path, clip, monkeypatch):
    from emokp_ray.inference.label_inputs import resolve_input, work_table

    (tmp_path / "clip.mp4").write_bytes(clip.read_bytes())
    (tmp_path / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3" + b"\0" * 64)
    (tmp_path / "photo.jpg").write_bytes(PHOTO.read_bytes())
    rows = work_table(resolve_input(str(tmp_path), fps=None, frames_per_range=6)).to_pylist()
    by_source = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    assert [(r["range_start"], r["range_stop"]) for r in by_source["clip.mp4"]] == [
        (0, 6),
        (6, 12),
        (12, 18),
        (18, None),
    ]
    assert [r["error"] for r in by_source["clip.mp4"]] == [None] * 4
    (broken,) = by_source["broken.webm"]
    assert (broken["range_start"], broken["range_stop"]) == (0, None) and "broken.webm" in broken["error"]
    (photo,) = by_source["photo.jpg"]
    assert (photo["range_start"], photo["error"]) == (None, None)

    monkeypatch.setitem(sys.modules, "av", None)  # without PyAV each video is an error row saying what to install
    rows = work_table(resolve_input(str(tmp_path))).to_pylist()
    errors = {r["source"]: r["error"] for r in rows}
    assert "emokp-ray[video]" in errors["clip.mp4"] and errors["photo.jpg"] is None


@pytest.mark.ray
@pytest.mark.slow
def test_label_splits_videos_into_ranges_resumes_them_and_annotates(tmp_path, clip, ray_cluster):
    import pyarrow.parquet as pq

    from emokp_ray.builtin import DEFAULT_EMOTION, DEFAULT_KEYPOINTS
    from emokp_ray.inference.label import run_label
    from emokp_ray.inference.label_output import PARQUET_DIR, SUMMARY_FILE, read_labels

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    _clip(folder, "empty_room.webm", frames=6, blank=tuple(range(6)))  # no face in any frame
    (folder / "broken.avi").write_bytes(b"RIFF" + b"\0" * 200)
    (folder / "photo.jpg").write_bytes(PHOTO.read_bytes())
    out, annotated = tmp_path / "out", tmp_path / "annotated"
    options = dict(fps=None, frames_per_range=6, concurrency=1, annotate_dir=str(annotated), progress=False)

    summary = run_label(str(folder), DEFAULT_KEYPOINTS, DEFAULT_EMOTION, str(out), **options)
    # clip: 20 frames in ranges of 6 -> 4 ranges; empty_room: 1; broken: 1 error row; photo: 1
    assert (summary.images, summary.videos, summary.frames, summary.errors) == (4 + 1 + 1 + 1, 3, FRAMES + 6, 1)
    rows = read_labels(str(out)).to_pandas()
    video = rows[rows["source"] == "clip.mp4"]
    first_rows = video[video["face_index"] <= 0].sort_values("frame_index")
    assert first_rows["frame_index"].tolist() == list(range(FRAMES))  # every frame once, across the ranges
    assert first_rows["timestamp"].tolist() == pytest.approx([i / RATE for i in range(FRAMES)])
    assert sorted(set(video["range_start"])) == [0, 6, 12, 18]
    assert set(first_rows[first_rows["frame_index"].isin(BLANK)]["status"]) == {"no_face"}
    empty = rows[rows["source"] == "empty_room.webm"]
    assert len(empty) == 6 and set(empty["status"]) == {"no_face"}  # no faces: no face rows, no error
    broken = rows[rows["source"] == "broken.avi"]
    assert broken["status"].tolist() == ["error"] and "broken.avi" in broken["error"].iloc[0]
    photo = rows[rows["source"] == "photo.jpg"]
    assert photo["status"].tolist() == ["ok"] and photo["frame_index"].isna().all()
    assert V.probe_video(annotated / "clip.mp4.annotated.mp4").frames == FRAMES
    assert not list(annotated.glob("*.frames-*.mp4"))  # the segments were joined

    # An interrupted run: the summary and the part holding one range are gone; --resume relabels it.
    parts = sorted((out / PARQUET_DIR).glob("part-*.parquet"))
    lost = next(p for p in parts if 6 in pq.read_table(p, columns=["range_start"])["range_start"].to_pylist())
    lost_table = pq.read_table(lost)
    lost_inputs = len(set(zip(lost_table["source"].to_pylist(), lost_table["range_start"].to_pylist())))
    lost.unlink()
    (out / SUMMARY_FILE).unlink()
    resumed = run_label(str(folder), DEFAULT_KEYPOINTS, DEFAULT_EMOTION, str(out), resume=True, **options)
    assert resumed.images == summary.images and resumed.frames == summary.frames
    assert resumed.resumed == summary.images - lost_inputs  # only the lost part's inputs were labelled again
    again = read_labels(str(out)).to_pandas()
    assert len(again) == len(rows)
    redone = again[(again["source"] == "clip.mp4") & (again["range_start"] == 6)]
    assert sorted(set(redone["frame_index"])) == list(range(6, 12))

    with pytest.raises(UserError, match="--fps"):  # a resume must sample as the run did
        run_label(str(folder), DEFAULT_KEYPOINTS, DEFAULT_EMOTION, str(out), resume=True, **{**options, "fps": 2.0})
