"""What `emokp label` writes: the output schema, its rows, and folders that appear only when complete.

OUT (a folder, written in a hidden sibling and renamed into place when complete; an earlier
`emokp label` output there is replaced then, any other existing folder is refused):

    labels.parquet   OUTPUT_SCHEMA, one row per face; an image without a face, or one that could not be
                     read or decoded, gets ONE row with face_index -1 and status "no_face" / "error".
                     The schema's metadata key b"emokp" holds the keypoint columns, class names and
                     model info (JSON).
    labels.jsonl     the same rows as JSON lines, floats written as their shortest float32 text, so
                     they read back to the Parquet values exactly
    summary.json     the counts, timing, model info and options of the run

Annotated images: one PNG per decoded image, named by `annotation_name(source)`, in a folder staged
the same way (marked by annotations.json).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emokp_ray.errors import UserError
from emokp_ray.labels import KEYPOINT_COLUMNS, KEYPOINT_NAMES

PARQUET_FILE = "labels.parquet"
JSONL_FILE = "labels.jsonl"
SUMMARY_FILE = "summary.json"          # also marks a folder as an earlier output that may be replaced
ANNOTATIONS_FILE = "annotations.json"  # the same for an annotation folder
METADATA_KEY = b"emokp"

OUTPUT_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),      # file path relative to INPUT, `split/source:row_id=N`, `test.csv:ImageId=N`
    pa.field("face_index", pa.int32(), nullable=False),   # 0.. per image, largest face first; -1: no face / error
    pa.field("status", pa.string(), nullable=False),      # "ok" | "no_face" | "error"
    pa.field("error", pa.string()),                       # one line naming the source; null unless status is error
    pa.field("width", pa.int32()),                        # the decoded image's size, pixels; null on error
    pa.field("height", pa.int32()),
    pa.field("box", pa.list_(pa.float32(), 4)),           # x, y, w, h in the image's pixels
    pa.field("keypoints", pa.list_(pa.float32(), len(KEYPOINT_COLUMNS))),  # KEYPOINT_COLUMNS order, image pixels
    pa.field("emotion", pa.string()),                     # argmax class name
    pa.field("probabilities", pa.list_(pa.float32())),    # one per class, in the metadata's class order
])


def output_table(sources: list[str], images: list[np.ndarray | None], results: list[Any], errors: list[str | None],
                 class_names: list[str]) -> pa.Table:
    """One OUTPUT_SCHEMA row per face, or one no_face / error row per image."""
    cols: dict[str, list] = {f.name: [] for f in OUTPUT_SCHEMA}

    def add(source, index, status, error=None, size=(None, None), box=None, kp=None, emotion=None, probs=None):
        for name, value in zip(OUTPUT_SCHEMA.names, (source, index, status, error, size[0], size[1], box, kp, emotion, probs)):
            cols[name].append(value)

    for source, image, result, error in zip(sources, images, results, errors):
        if error is not None or result is None:
            add(source, -1, "error", error or f"{source}: not labelled")
            continue
        size = (image.shape[1], image.shape[0])
        if not result.faces:
            add(source, -1, "no_face", size=size)
        for k, face in enumerate(result.faces):
            kp = None if face.keypoints is None else [float(v) for name in KEYPOINT_NAMES for v in face.keypoints[name]]
            probs = None if face.probabilities is None else [float(face.probabilities[c]) for c in class_names]
            add(source, k, "ok", size=size, box=[float(v) for v in face.box], kp=kp, emotion=face.emotion, probs=probs)
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
            size = None if offsets is not None else column.type.list_size
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


class OutputWriter:
    """labels.parquet (and labels.jsonl) in a folder, written as tables arrive, with running counts."""

    def __init__(self, folder: Path, schema: pa.Schema, jsonl: bool):
        self.schema = schema
        self.images = self.faces = self.no_face = self.errors = 0
        self._parquet = pq.ParquetWriter(folder / PARQUET_FILE, schema)
        self._jsonl = open(folder / JSONL_FILE, "w") if jsonl else None

    def write(self, table: pa.Table) -> None:
        table = table.cast(self.schema)
        self._parquet.write_table(table)
        if self._jsonl is not None:
            self._jsonl.writelines(line + "\n" for line in json_rows(table))
        status = np.asarray(table["status"].to_pylist(), dtype=object)
        self.images += int((table["face_index"].to_numpy() <= 0).sum())   # an image's first (or only) row
        self.faces += int((status == "ok").sum())
        self.no_face += int((status == "no_face").sum())
        self.errors += int((status == "error").sum())

    def close(self) -> None:
        self._parquet.close()
        if self._jsonl is not None:
            self._jsonl.close()

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StagedFolder:
    """A folder written under a hidden temporary sibling and renamed into place by commit(); an existing
    folder there is replaced only if it is empty or carries `marker` (an earlier output of ours)."""

    def __init__(self, path: str, flag: str, marker: str):
        if "://" in path:
            raise UserError(f"{flag} {path}: must be a local folder")
        self.final = Path(path).expanduser().resolve()
        if self.final.exists():
            if not self.final.is_dir():
                raise UserError(f"{flag} {self.final} exists and is not a folder")
            if any(self.final.iterdir()) and not (self.final / marker).is_file():
                raise UserError(f"{flag} {self.final} exists and is not an earlier `emokp label` output (no {marker}); choose a new folder")
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        return self.tmp

    def commit(self) -> None:
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            self.final.rename(old)
        self.tmp.rename(self.final)
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:  # not committed: the job failed or was interrupted
            shutil.rmtree(self.tmp, ignore_errors=True)
