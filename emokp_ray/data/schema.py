"""The one Parquet schema that every source is written in, and the prepared data set's layout.

A prepared data set is a directory:

    DIR/dataset.json                 what is inside: schema version, tasks, scheme, counts, sources
    DIR/<split>/part-00000.parquet   split in {train, val, test}; row groups of at most 4,096 rows

Each row is one grey face:

    image      binary      height*width uint8 grey values, row-major (no header, no compression)
    height     int16       pixels
    width      int16       pixels
    keypoints  fixed_size_list<float32>[30]: Kaggle column order (x, y per keypoint), pixel units,
               NaN where one is missing; all 30 NaN where the row has no keypoint labels at all.
               (Never null: Parquet files with null fixed-size-list entries written by pyarrow 26
               failed to read in pyarrow 25 -- "Expected all lists to be of size=30" -- so a
               cluster with mixed versions could not share data sets.)
    label      int16       emotion class in the data set's scheme; -1 where the row has no emotion
    split      string      train | val | test
    source     string      the input file's name (or "synth")
    row_id     int64       the data row's 1-based line number in its source file (synth: its index)

A row may carry keypoints, an emotion label or both (the synthetic faces carry both).
The writer is atomic (storage.atomic_dir): it writes into a temporary sibling directory and
renames it into place only when every file is complete, so a crash or a Ctrl-C never leaves a
half-written data set.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emokp_ray.errors import UserError
from emokp_ray.labels import NUM_KEYPOINTS, canonical_emotion_name
from emokp_ray.storage import atomic_dir, is_uri, open_location

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
NO_LABEL = -1
ROW_GROUP_ROWS = 4096
DATASET_META = "dataset.json"

SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary(), nullable=False),
        pa.field("height", pa.int16(), nullable=False),
        pa.field("width", pa.int16(), nullable=False),
        pa.field("keypoints", pa.list_(pa.float32(), 2 * NUM_KEYPOINTS), nullable=False),
        pa.field("label", pa.int16(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("row_id", pa.int64(), nullable=False),
    ]
)


def make_table(
    images: np.ndarray,
    keypoints: np.ndarray | None,
    labels: np.ndarray | None,
    splits: Iterable[str] | np.ndarray,
    source: str,
    row_ids: np.ndarray,
) -> pa.Table:
    """Build a table in SCHEMA from arrays.

    images: [N, H, W] uint8. keypoints: [N, 30] float32 with NaN, or None (no keypoint labels:
    stored as all NaN). labels: [N] ints (-1 = none), or None.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n, height, width = images.shape
    flat = images.reshape(n, height * width)
    image_col = pa.array([row.tobytes() for row in flat], type=pa.binary())
    if keypoints is None:
        keypoints = np.full((n, 2 * NUM_KEYPOINTS), np.nan, np.float32)
    keypoints = np.asarray(keypoints, dtype=np.float32).reshape(n, 2 * NUM_KEYPOINTS)
    kp_col = pa.FixedSizeListArray.from_arrays(pa.array(keypoints.reshape(-1), type=pa.float32()), 2 * NUM_KEYPOINTS)
    label_col = np.full(n, NO_LABEL, np.int16) if labels is None else np.asarray(labels, np.int16)
    return pa.Table.from_arrays(
        [
            image_col,
            pa.array(np.full(n, height, np.int16)),
            pa.array(np.full(n, width, np.int16)),
            kp_col,
            pa.array(label_col),
            pa.array(list(splits), type=pa.string()),
            pa.array([source] * n, type=pa.string()),
            pa.array(np.asarray(row_ids, np.int64)),
        ],
        schema=SCHEMA,
    )


def images_from_column(column: pa.ChunkedArray | pa.Array | Iterable[bytes], height: int, width: int) -> np.ndarray:
    """Decode an `image` column into [N, H, W] uint8 (all rows must share the given size)."""
    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        column = column.to_pylist()
    buf = b"".join(column)
    return np.frombuffer(buf, dtype=np.uint8).reshape(-1, height, width)


def keypoints_from_column(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Decode a `keypoints` column into [N, 30] float32, NaN for missing values (and for null rows,
    which older data sets may hold)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    out = np.full((n, 2 * NUM_KEYPOINTS), np.nan, np.float32)
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if valid.any():
        present = column.filter(pa.array(valid))
        out[valid] = present.flatten().to_numpy(zero_copy_only=False).reshape(-1, 2 * NUM_KEYPOINTS)
    return out


@dataclass
class DatasetInfo:
    """The content of DIR/dataset.json."""

    tasks: list[str]  # subset of ["keypoints", "emotion"]
    scheme: str | None  # emotion scheme name, None without emotion labels
    counts: dict[str, dict[str, int]]  # split -> {"rows": n, "keypoints": n, "complete_keypoints": n, class: n}
    sources: list[str]
    image_sizes: list[list[int]]  # distinct [height, width] present
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)


class DatasetWriter:
    """Write tables into a prepared data set directory, atomically.

    with DatasetWriter(out_dir) as writer:
        writer.write(table)          # any number of times, any mix of splits
        writer.info = DatasetInfo(...)
    The directory appears at `out_dir` only when the `with` block exits cleanly; an existing
    directory there is replaced only then (so a failed run never destroys the previous output).
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir).resolve()
        self.info: DatasetInfo | None = None
        self._tmp: Path | None = None
        self._folder = ExitStack()  # holds the atomic_dir the data set is built in
        self._writers: dict[str, pq.ParquetWriter] = {}

    def __enter__(self) -> DatasetWriter:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UserError(f"--out {self.out_dir} exists and is not a directory")
        self._tmp = self._folder.enter_context(atomic_dir(self.out_dir))
        return self

    def write(self, table: pa.Table) -> None:
        assert self._tmp is not None, "use DatasetWriter in a with block"
        for split in SPLITS:
            part = table.filter(pc.equal(table["split"], split))
            if part.num_rows == 0:
                continue
            writer = self._writers.get(split)
            if writer is None:
                (self._tmp / split).mkdir()
                writer = pq.ParquetWriter(self._tmp / split / "part-00000.parquet", SCHEMA)
                self._writers[split] = writer
            writer.write_table(part, row_group_size=ROW_GROUP_ROWS)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._tmp is not None
        try:
            for writer in self._writers.values():
                writer.close()
            if exc_type is None:
                if self.info is None:
                    raise RuntimeError("DatasetWriter closed without info")
                (self._tmp / DATASET_META).write_text(self.info.to_json() + "\n")
        except BaseException:
            self._folder.__exit__(*sys.exc_info())  # removes the temporary folder; the error goes on
            raise
        self._folder.__exit__(exc_type, exc, tb)  # swaps the folder in, or removes it after an error


def read_info(data_dir: str | os.PathLike) -> DatasetInfo:
    """Read DIR/dataset.json (DIR a local path or a pyarrow filesystem URI); a missing or foreign
    directory is a `UserError`."""
    location = str(data_dir).rstrip("/")
    meta = f"{location}/{DATASET_META}"
    try:
        if is_uri(location):
            filesystem, path = open_location(meta)
            with filesystem.open_input_stream(path) as stream:
                raw = json.loads(stream.read())
        else:
            raw = json.loads(Path(meta).read_text())
        info = DatasetInfo(**raw)
    except FileNotFoundError:
        raise UserError(
            f"{data_dir} is not a prepared data set (no {DATASET_META}); run `emokp data prepare` or `emokp data synth`"
        ) from None
    except (ValueError, TypeError) as err:
        raise UserError(f"{meta} is not a valid {DATASET_META}: {err}") from None
    except OSError as err:  # a URI's filesystem: no such bucket, no credentials, ...
        raise UserError(f"cannot read {meta}: {str(err).splitlines()[0]}") from None
    # counts of a data set prepared with FER's words ("angry", "happy") under the one name set
    info.counts = {
        split: {canonical_emotion_name(k): v for k, v in per.items()} for split, per in (info.counts or {}).items()
    }
    return info


def split_files(data_dir: str | os.PathLike, split: str) -> list[str]:
    """The Parquet files of one split (empty list if the split has no rows); URIs for a URI data set
    (pyarrow's read_table and ParquetFile open those directly)."""
    location = str(data_dir).rstrip("/")
    if is_uri(location):
        scheme = location.split("://", 1)[0]
        filesystem, path = open_location(f"{location}/{split}")
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(f"{scheme}://{info.path}" for info in infos if info.path.endswith(".parquet"))
    folder = Path(location) / split
    return sorted(str(p) for p in folder.glob("*.parquet")) if folder.is_dir() else []


def iter_split(data_dir: str | os.PathLike, split: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Stream one split as tables of at most ROW_GROUP_ROWS rows (bounded memory)."""
    for path in split_files(data_dir, split):
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            yield pf.read_row_group(i, columns=columns)


def count_summary(table: pa.Table, class_names: tuple[str, ...] | None) -> dict[str, dict[str, int]]:
    """Per-split counts of rows, keypoint rows, complete keypoint rows and each emotion class."""
    out: dict[str, dict[str, int]] = {}
    splits = np.asarray(table["split"].to_pylist(), dtype=object)
    labels = table["label"].to_numpy()
    kp = keypoints_from_column(table["keypoints"])
    has_kp = ~np.isnan(kp).all(axis=1)
    complete = ~np.isnan(kp).any(axis=1)
    for split in SPLITS:
        sel = splits == split
        if not sel.any():
            continue
        counts = {
            "rows": int(sel.sum()),
            "keypoints": int((sel & has_kp).sum()),
            "complete_keypoints": int((sel & complete).sum()),
        }
        if class_names is not None:
            for k, name in enumerate(class_names):
                counts[name] = int(((labels == k) & sel).sum())
        out[split] = counts
    return out


def merge_counts(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Add two count_summary results."""
    out = {s: dict(c) for s, c in a.items()}
    for split, counts in b.items():
        dst = out.setdefault(split, {})
        for key, value in counts.items():
            dst[key] = dst.get(key, 0) + value
    return out


def format_counts(info: DatasetInfo) -> list[str]:
    """Console table of rows, keypoint rows and emotion classes per split."""
    from emokp_ray.labels import emotion_scheme

    classes = list(emotion_scheme(info.scheme).classes) if info.scheme else []
    keypoint_columns = ["keypoints", "complete_keypoints"] if "keypoints" in info.tasks else []
    columns = ["rows"] + keypoint_columns + classes
    widths = [max(len(c), 9) for c in columns]
    lines = [f"  {'split':<6}" + "".join(f" {c:>{w}}" for c, w in zip(columns, widths))]
    for split in SPLITS:
        counts = info.counts.get(split)
        if counts:
            lines.append(f"  {split:<6}" + "".join(f" {counts.get(c, 0):>{w},}" for c, w in zip(columns, widths)))
    return lines
