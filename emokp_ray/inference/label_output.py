"""What `emokp label` writes: the output schema, its rows, part files written by the workers, and
the summary that marks an output complete.

OUT (a folder on any pyarrow filesystem: a local path, file://, s3://, gs://, a shared mount):

    _run.json               written first: INPUT, models and output options of the run (what --resume checks)
    _work/inputs-*.parquet  the input listing, streamed by the driver in chunks (label_inputs.py);
    _work/listing.json      written once the listing is complete (a resume re-lists without it)
    labels.parquet/part-<hash>.parquet
                            OUTPUT_SCHEMA, one row per face, written by the Ray Data workers, one
                            file per block of inputs; an image without a face, or one that could not
                            be read or decoded, gets ONE row with face_index -1 and status "no_face" /
                            "error". A video's rows (label_inputs.py: its frame ranges) carry
                            frame_index and timestamp: one row per face per sampled frame, ONE
                            no_face row per sampled frame without a face, one error row per
                            range (or per video) that failed, after the frames decoded before
                            the failure. range_start names the frame range a row came from (an
                            input of its own: `input_keys`); the three are null on image rows.
                            The schema's metadata key b"emokp" holds the keypoint columns,
                            class names and model info (JSON). `pq.read_table(OUT/labels.parquet)`
                            reads them all.
    labels.jsonl/part-<hash>.jsonl
                            the same rows as JSON lines (--jsonl), floats as their shortest float32
                            text, so they read back to the Parquet values exactly
    summary.json            written LAST, from what was written (`summarize`): the completion marker.
                            A folder without it is an unfinished run: `read_labels` refuses it and
                            `emokp label --resume` finishes it.

A part is named by a hash of its block's sources, so a retried block writes the same name again. Parts
are written with storage.write_file: on a local or mounted filesystem under a hidden temporary
name, then renamed into place; on an object store an object appears only once its upload is complete.
Either way a part is whole or absent, and the Parquet part is written after its JSONL part and
annotated images: a block counts as done when its Parquet part exists (`done_hashes`), and a resume
removes JSONL parts without one.

Annotated images: one PNG per decoded image, named by `annotation_name(source)`, in a folder marked
complete by annotations.json (written last too). A video's sampled frames: one MP4 segment per frame
range while the run goes (label_stages.video_segment_name), joined at the end into
`<source>.annotated.mp4` (label_stages.join_video_segments).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emokp_ray.errors import UserError
from emokp_ray.inference.detect import LANDMARK_NAMES
from emokp_ray.labels import KEYPOINT_COLUMNS, KEYPOINT_NAMES
from emokp_ray.storage import open_location, write_file

PARQUET_DIR = "labels.parquet"
JSONL_DIR = "labels.jsonl"
SUMMARY_FILE = "summary.json"  # the completion marker
RUN_FILE = "_run.json"  # a run of ours started here (complete or not)
WORK_DIR = "_work"
LISTING_FILE = f"{WORK_DIR}/listing.json"
ANNOTATIONS_FILE = "annotations.json"  # the completion marker of an annotation folder
METADATA_KEY = b"emokp"
_OURS = (PARQUET_DIR, JSONL_DIR, SUMMARY_FILE, RUN_FILE, WORK_DIR)

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field(
            "source", pa.string(), nullable=False
        ),  # file path relative to INPUT, `split/source:row_id=N`, `test.csv:ImageId=N`
        pa.field("face_index", pa.int32(), nullable=False),  # 0.. per image, largest face first; -1: no face / error
        pa.field("status", pa.string(), nullable=False),  # "ok" | "no_face" | "error"
        pa.field("error", pa.string()),  # one line naming the source; null unless status is error
        pa.field("width", pa.int32()),  # the decoded image's size, pixels; null on error
        pa.field("height", pa.int32()),
        pa.field("box", pa.list_(pa.float32(), 4)),  # x, y, w, h in the image's pixels (the detector's box)
        # The learned detector's (MTCNN's) confidence and 5 landmarks (x, y per detect.LANDMARK_NAMES name,
        # image pixels); null for Haar boxes and crops.
        pa.field("score", pa.float32()),
        pa.field("landmarks", pa.list_(pa.float32(), 2 * len(LANDMARK_NAMES))),
        pa.field("keypoints", pa.list_(pa.float32(), len(KEYPOINT_COLUMNS))),  # KEYPOINT_COLUMNS order, image pixels
        pa.field("emotion", pa.string()),  # argmax class name
        pa.field("probabilities", pa.list_(pa.float32())),  # one per class, in the metadata's class order
        # Video rows: the frame's index in its stream and its time (seconds from the stream's start;
        # null on the error row of a range), and the first frame of the range it was labelled in.
        pa.field("frame_index", pa.int64()),
        pa.field("timestamp", pa.float64()),
        pa.field("range_start", pa.int64()),
    ]
)
VIDEO_COLUMNS = ("frame_index", "timestamp", "range_start")


# ----------------------------------------------------------------------------- rows


def output_table(
    sources: list[str],
    sizes: list[tuple[int, int] | None],
    results: list[Any],
    errors: list[str | None],
    class_names: list[str],
    frames: list[tuple[int | None, float | None, int | None]] | None = None,
) -> pa.Table:
    """One OUTPUT_SCHEMA row per face, or one no_face / error row per image or video frame; sizes:
    (width, height); frames: (frame_index, timestamp, range_start) per input, None for images."""
    cols: dict[str, list] = {f.name: [] for f in OUTPUT_SCHEMA}
    video: tuple[int | None, float | None, int | None] = (None, None, None)

    def add(source: str, index: int, status: str, size: tuple[int, int] | None = None, **face: Any) -> None:
        """One row: the columns named here, every other column of OUTPUT_SCHEMA null."""
        frame_index, timestamp, range_start = video
        row = dict(
            source=source,
            face_index=index,
            status=status,
            width=None if size is None else size[0],
            height=None if size is None else size[1],
            frame_index=frame_index,
            timestamp=timestamp,
            range_start=range_start,
            **face,
        )
        unknown = set(row) - set(cols)
        if unknown:  # a column the schema does not have: a bug here, not bad input
            raise KeyError(f"output_table: no column {sorted(unknown)} in OUTPUT_SCHEMA")
        for name, column in cols.items():
            column.append(row.get(name))

    for i, (source, size, result, error) in enumerate(zip(sources, sizes, results, errors)):
        video = frames[i] if frames is not None and frames[i] is not None else (None, None, None)
        if error is not None or result is None:
            add(source, -1, "error", error=error or f"{source}: not labelled")
            continue
        if not result.faces:
            add(source, -1, "no_face", size=size)
        for k, face in enumerate(result.faces):
            kp = None if face.keypoints is None else [float(v) for name in KEYPOINT_NAMES for v in face.keypoints[name]]
            probs = None if face.probabilities is None else [float(face.probabilities[c]) for c in class_names]
            marks = None if face.landmarks is None else [float(v) for n in LANDMARK_NAMES for v in face.landmarks[n]]
            add(
                source,
                k,
                "ok",
                size=size,
                box=[float(v) for v in face.box],
                score=face.score,
                landmarks=marks,
                keypoints=kp,
                emotion=face.emotion,
                probabilities=probs,
            )
    return pa.Table.from_pydict(cols, schema=OUTPUT_SCHEMA)


def annotation_name(source: str) -> str:
    """A safe relative PNG path for a source: `a/b.jpg` -> `a/b.jpg.png`, `train/synth:row_id=3` ->
    `train/synth_row_id=3.png` (no `..`, no characters outside [A-Za-z0-9._=-] in a component)."""
    parts = [re.sub(r"[^A-Za-z0-9._=-]", "_", p) for p in source.split("/") if p]
    parts = [p if p.strip(".") else p.replace(".", "_") for p in parts] or ["image"]
    return "/".join(parts) + ".png"


def json_rows(table: pa.Table) -> Iterator[str]:
    """JSON lines of OUTPUT_SCHEMA rows; float lists as their shortest float32 text."""
    columns = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            texts = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).astype(str)
            offsets = np.asarray(column.offsets) if pa.types.is_list(column.type) else None
            size = 0 if offsets is not None else column.type.list_size  # fixed-size lists: values per row
            valid = column.is_valid().to_pylist()
            values, pos = [], 0
            for i, ok in enumerate(valid):
                if offsets is not None:
                    lo, hi = offsets[i], offsets[i + 1]
                else:
                    lo, hi = (pos, pos + size) if ok else (pos, pos)
                    pos = hi
                values.append([float(t) for t in texts[lo:hi]] if ok else None)
            columns[name] = values
        else:
            columns[name] = column.to_pylist()
    for i in range(table.num_rows):
        yield json.dumps({name: columns[name][i] for name in table.column_names})


def input_keys(sources: list[str], range_starts: list[int | None] | None = None) -> list[str]:
    """What names an input for a resume and the counts: an image's source; a video frame range's
    source and first frame (NUL-separated: no file name holds a NUL)."""
    if range_starts is None:
        return list(sources)
    return [s if r is None else f"{s}\0{r}" for s, r in zip(sources, range_starts)]


def table_keys(table: pa.Table | pa.RecordBatch) -> list[str]:
    """input_keys of a table's rows (`source`, and `range_start` where the table has it)."""
    names = table.schema.names
    starts = table.column(names.index("range_start")).to_pylist() if "range_start" in names else None
    return input_keys(table.column(names.index("source")).to_pylist(), starts)


def source_hashes(sources: list[str]) -> np.ndarray:
    """uint64 [N]: 8 bytes of BLAKE2b per source (what a resume keeps of each input already written)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in sources),
        dtype=np.uint64,
        count=len(sources),
    )


def part_name(sources: list[str]) -> str:
    """`part-<32 hex>`: the same block of inputs, the same name (a retried block overwrites itself)."""
    digest = hashlib.blake2b(digest_size=16)
    for source in sources:
        digest.update(source.encode() + b"\0")
    return f"part-{digest.hexdigest()}"


# ----------------------------------------------------------------------------- files on any filesystem


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    """A JSON file's object, or None when there is no such file."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def write_json(fs: pafs.FileSystem, path: str, value: dict) -> None:
    write_file(path, (json.dumps(value, indent=2) + "\n").encode(), fs=fs)


def _files(fs: pafs.FileSystem, folder: str, suffix: str) -> list[str]:
    """Whole files (not hidden temporaries) ending in suffix in a folder; [] when it does not exist."""
    return sorted(
        i.path
        for i in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        if i.type == pafs.FileType.File and i.path.endswith(suffix) and not i.base_name.startswith((".", "_"))
    )


def parquet_parts(fs: pafs.FileSystem, out: str) -> list[str]:
    return _files(fs, f"{out}/{PARQUET_DIR}", ".parquet")


def write_part(fs: pafs.FileSystem, out: str, name: str, table: pa.Table, jsonl: bool) -> None:
    """A block's rows as OUT/labels.jsonl/NAME.jsonl (first) and OUT/labels.parquet/NAME.parquet (last)."""
    if jsonl:
        write_file(f"{out}/{JSONL_DIR}/{name}.jsonl", "".join(line + "\n" for line in json_rows(table)).encode(), fs=fs)
    write_file(f"{out}/{PARQUET_DIR}/{name}.parquet", lambda stream: pq.write_table(table, stream), fs=fs)


def write_png(fs: pafs.FileSystem, path: str, image) -> None:
    """A PIL image as a PNG file, whole or not at all."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_file(path, buffer.getvalue(), fs=fs)


# ----------------------------------------------------------------------------- a run's output folder


def folder_state(fs: pafs.FileSystem, path: str) -> str:
    """ "missing" | "empty" | "complete" (summary.json: an earlier finished run) | "unfinished" (a run of
    ours without summary.json) | "foreign" (anything else: never touched) | "file"."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return "missing"
    if info.type != pafs.FileType.Directory:
        return "file"
    entries = fs.get_file_info(pafs.FileSelector(path))
    if not entries:
        return "empty"
    names = {i.base_name for i in entries}
    if SUMMARY_FILE in names:
        return "complete"
    if RUN_FILE in names:
        return "unfinished"
    return "foreign"


def check_writable(fs: pafs.FileSystem, path: str, flag: str) -> None:
    """Create the folder and write then delete a probe file in it: an unwritable destination is a
    UserError now, before any model is loaded."""
    probe = f"{path}/.emokp-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"probe")
        fs.delete_file(probe)
    except OSError as err:
        raise UserError(
            f"{flag} {path}: cannot write there ({(str(err).splitlines() or [type(err).__name__])[0]})"
        ) from None


def clear_output(fs: pafs.FileSystem, path: str) -> None:
    """Remove what an earlier run of ours wrote in OUT (only our names)."""
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.base_name in _OURS or info.base_name.startswith(".emokp-"):
            (fs.delete_dir if info.type == pafs.FileType.Directory else fs.delete_file)(info.path)


def remove_unfinished_parts(fs: pafs.FileSystem, out: str) -> int:
    """Before a resume: JSONL parts whose Parquet part is missing (their block is labelled again) and
    hidden temporaries of a killed run. Returns how many files were removed."""
    done = {p.rsplit("/", 1)[1][: -len(".parquet")] for p in parquet_parts(fs, out)}
    removed = 0
    for folder in (f"{out}/{PARQUET_DIR}", f"{out}/{JSONL_DIR}"):
        for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            stem = info.base_name.rsplit(".", 1)[0]
            if info.type == pafs.FileType.File and (info.base_name.startswith(".") or stem not in done):
                fs.delete_file(info.path)
                removed += 1
    return removed


def _scan(fs: pafs.FileSystem, out: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The columns of OUT's parts that exist (an output written before video support has no
    VIDEO_COLUMNS: they are left out)."""
    parts = parquet_parts(fs, out)
    if not parts:
        return iter(())
    dataset = pads.dataset(parts, filesystem=fs, format="parquet")
    present = [c for c in columns if c in dataset.schema.names]
    return dataset.to_batches(columns=present, batch_size=65536)


def done_hashes(fs: pafs.FileSystem, out: str) -> np.ndarray:
    """Sorted unique uint64 hashes of the inputs (input_keys) in OUT's Parquet parts: the inputs a
    resume skips (8 bytes per input already written, streamed part by part)."""
    chunks = [source_hashes(table_keys(batch)) for batch in _scan(fs, out, ["source", "range_start"])]
    return np.unique(np.concatenate(chunks)) if chunks else np.zeros(0, np.uint64)


@dataclass(frozen=True)
class OutputCounts:
    """What an output holds, counted from its Parquet parts (`summarize`)."""

    rows: int
    images: int  # inputs: images, data set or CSV rows, and video frame ranges
    frames: int  # sampled video frames labelled
    faces: int  # rows with status ok
    no_face: int  # images and frames without a face
    errors: int
    emotions: dict[str, int]  # class -> faces


def summarize(fs: pafs.FileSystem, out: str, class_names: list[str]) -> OutputCounts:
    """Counts from what was written (every Parquet part, a few columns at a time): rows, images (the
    inputs: an image's first or only row, and each video frame range once), frames (sampled video
    frames labelled), faces (status ok), no_face (images and frames), errors, emotion counts."""
    counts = {"rows": 0, "images": 0, "frames": 0, "faces": 0, "no_face": 0, "errors": 0}
    emotions = dict.fromkeys(class_names, 0)
    ranges: set[int] = set()  # hashes of the video ranges seen (8 bytes per range)
    for batch in _scan(fs, out, ["face_index", "status", "emotion", "source", "frame_index", "range_start"]):
        names = batch.schema.names
        status = batch.column(names.index("status")).to_numpy(zero_copy_only=False)
        first = batch.column(names.index("face_index")).to_numpy() <= 0
        counts["rows"] += batch.num_rows
        if "range_start" in names:
            video = batch.column(names.index("range_start")).is_valid().to_numpy(zero_copy_only=False)
            framed = batch.column(names.index("frame_index")).is_valid().to_numpy(zero_copy_only=False)
            counts["frames"] += int((first & framed).sum())
            keys = table_keys(batch.filter(pa.array(video)).select(["source", "range_start"]))
            ranges.update(source_hashes(keys).tolist())
            first &= ~video
        counts["images"] += int(first.sum())
        counts["faces"] += int((status == "ok").sum())
        counts["no_face"] += int((status == "no_face").sum())
        counts["errors"] += int((status == "error").sum())
        emotion = batch.column(names.index("emotion"))
        labels, n = np.unique(emotion.drop_null().to_numpy(zero_copy_only=False), return_counts=True)
        for name, k in zip(labels.tolist(), n.tolist()):
            emotions[name] = emotions.get(name, 0) + k
    counts["images"] += len(ranges)
    return OutputCounts(**counts, emotions=emotions)


def read_labels(location: str, columns: list[str] | None = None) -> pa.Table:
    """Every row of a complete `emokp label` output; an unfinished one (no summary.json) is a UserError."""
    fs, path = open_location(location)
    if fs.get_file_info(f"{path}/{SUMMARY_FILE}").type != pafs.FileType.File:
        raise UserError(
            f"{location}: not a complete `emokp label` output (no {SUMMARY_FILE}): "
            f"finish it with `emokp label ... --out {location} --resume`"
        )
    parts = parquet_parts(fs, path)
    if not parts:
        return OUTPUT_SCHEMA.empty_table()
    return pads.dataset(parts, filesystem=fs, format="parquet").to_table(columns=columns)
