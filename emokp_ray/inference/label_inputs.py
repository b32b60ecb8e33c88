"""What `emokp label` reads, resolved on the driver into a Ray Dataset of work rows.

INPUT is one of
    an image folder, a glob or one image file   local path or URI (s3://, gs://, ...) through
                                                pyarrow filesystems; work rows: path, source, size
    a prepared Parquet data set                 DIR/dataset.json + DIR/<split>/*.parquet (schema.py);
                                                work rows: the schema's image, height, width, split,
                                                source, row_id (face crops)
    a Kaggle CSV (.csv / .csv.gz, local)        any format kaggle.py reads, Kaggle's keypoints
                                                test.csv included; work rows: source, image, height,
                                                width (face crops)

Only names and sizes are listed on the driver; image bytes are read and decoded by the labeling
actors, so an unreadable file becomes an error row there. A CSV is parsed on the driver (it is one
file, and its rows are small crops); its bad rows become error rows here, its good rows crop rows.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emokp_ray.data.kaggle import KaggleReader
from emokp_ray.data.schema import DATASET_META, SPLITS
from emokp_ray.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CSV_SUFFIXES = (".csv", ".csv.gz")
CSV_CHUNK_ROWS = 512        # rows parsed at a time from a CSV (96x96: ~4.7 MB)
MAX_BLOCKS = 2000           # work blocks from a listing or a CSV (more rows: larger blocks)
# Columns of a prepared data set the labeler needs (labels and keypoints stay on disk).
DATASET_COLUMNS = ["image", "height", "width", "split", "source", "row_id"]
_GLOB_MAGIC = re.compile(r"[*?\[]")

FILE_WORK_SCHEMA = pa.schema([("path", pa.string()), ("source", pa.string()), ("size", pa.int64())])
CROP_WORK_SCHEMA = pa.schema([("source", pa.string()), ("image", pa.binary()), ("height", pa.int16()), ("width", pa.int16())])


@dataclass
class LabelInput:
    """INPUT resolved: its kind, where its rows are, and the inputs already known to be bad."""

    kind: str                                   # "images" | "dataset" | "csv"
    location: str                               # INPUT as given
    filesystem: pafs.FileSystem | None = None   # images, dataset
    files: pa.Table | None = None               # images: FILE_WORK_SCHEMA rows, sorted by source
    skipped_files: int = 0                      # images: files in a folder without an image extension
    split_dirs: list[str] = field(default_factory=list)   # dataset: <DIR>/<split> paths on `filesystem`
    crops: list[pa.Table] = field(default_factory=list)   # csv: CROP_WORK_SCHEMA tables
    error_rows: list[tuple[str, str]] = field(default_factory=list)  # csv: (source, reason) of bad rows
    total: int = 0                              # images expected in the output (bad CSV rows included)
    detail: str = ""                            # one line for the console: what was found

    @property
    def crop_mode(self) -> bool:
        """Every row is one face crop (data set, CSV); image files go through the predictor's mode."""
        return self.kind != "images"


def _is_uri(location: str) -> bool:
    return "://" in location


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for a local path or a URI."""
    if _is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
            raise UserError(f"{location}: cannot open this URI ({str(err).splitlines()[0]})") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def _glob_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Path components against glob components: `*`, `?`, `[..]` inside one component, `**` any number."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(pattern[1:], parts[1:])


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(relative).parts)


def _file_table(entries: list[tuple[str, str, int]]) -> pa.Table:
    entries.sort(key=lambda e: e[1])
    paths, sources, sizes = zip(*entries) if entries else ((), (), ())
    return pa.Table.from_arrays([pa.array(paths, pa.string()), pa.array(sources, pa.string()),
                                 pa.array(sizes, pa.int64())], schema=FILE_WORK_SCHEMA)


def _list_images(location: str, fs: pafs.FileSystem, path: str) -> LabelInput:
    """An image folder (recursive; image extensions only; hidden entries skipped) or a glob
    (every match, whatever its extension). Sources are paths relative to the folder / glob base."""
    if _GLOB_MAGIC.search(path):
        parts = PurePosixPath(path).parts
        first_magic = next(i for i, p in enumerate(parts) if _GLOB_MAGIC.search(p))
        base = str(PurePosixPath(*parts[:first_magic])) if first_magic else "/"
        pattern = parts[first_magic:]
        found = pafs.FileSelector(base, recursive="**" in pattern or len(pattern) > 1, allow_not_found=True)
        entries = []
        for info in fs.get_file_info(found):
            relative = str(PurePosixPath(info.path).relative_to(base))
            if info.type == pafs.FileType.File and _glob_match(pattern, PurePosixPath(relative).parts):
                entries.append((info.path, relative, info.size))
        if not entries:
            raise UserError(f"{location}: no files match this pattern")
        files, skipped = _file_table(entries), 0
    else:
        entries, skipped = [], 0
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            relative = str(PurePosixPath(info.path).relative_to(path))
            if info.type != pafs.FileType.File or _hidden(relative):
                continue
            if relative.lower().endswith(IMAGE_EXTENSIONS):
                entries.append((info.path, relative, info.size))
            else:
                skipped += 1
        if not entries:
            raise UserError(f"{location}: no image files in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
        files = _file_table(entries)
    detail = f"{files.num_rows:,} image files" + (f" ({skipped:,} other files skipped)" if skipped else "")
    return LabelInput("images", location, filesystem=fs, files=files, skipped_files=skipped,
                      total=files.num_rows, detail=detail)


def _dataset(location: str, fs: pafs.FileSystem, path: str) -> LabelInput:
    """A prepared data set: every split present, in train/val/test order."""
    try:
        with fs.open_input_stream(f"{path}/{DATASET_META}") as f:
            json.loads(f.read())
    except ValueError as err:
        raise UserError(f"{location}/{DATASET_META} is not a valid {DATASET_META}: {err}") from None
    split_dirs, rows = [], 0
    for split in SPLITS:
        listing = fs.get_file_info(pafs.FileSelector(f"{path}/{split}", allow_not_found=True))
        if any(i.type == pafs.FileType.File and i.path.endswith(".parquet") for i in listing):
            split_dirs.append(f"{path}/{split}")
            # Rows from the files' footers, not dataset.json: the count every input is checked against.
            for parquet in (i.path for i in listing if i.path.endswith(".parquet")):
                with fs.open_input_file(parquet) as f:
                    rows += pq.ParquetFile(f).metadata.num_rows
    if not split_dirs:
        raise UserError(f"{location}: prepared data set without Parquet files in {', '.join(SPLITS)}")
    names = ", ".join(PurePosixPath(d).name for d in split_dirs)
    return LabelInput("dataset", location, filesystem=fs, split_dirs=split_dirs, total=rows,
                      detail=f"prepared data set, {rows:,} face crops ({names})")


class _AllBadRowsReader(KaggleReader):
    """A KaggleReader that keeps the line and reason of EVERY bad row (the report keeps the first few):
    for labeling, each input row must come out as a result or as an error row."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad: list[tuple[int, str]] = []

    def _account(self, lines, reasons, bad, dropped, keep) -> None:
        super()._account(lines, reasons, bad, dropped, keep)
        self.bad.extend((int(lines[i]), str(reasons[i])) for i in np.flatnonzero(bad))


def _csv(location: str) -> LabelInput:
    """A Kaggle CSV as crop tables. The scheme is fer7, which keeps every valid FER row (labels are
    not needed to label). Sources: `test.csv:ImageId=N` for Kaggle's keypoints test file, else
    `NAME:line=N` (the row's line in the file, header = 1)."""
    if _is_uri(location):
        raise UserError(f"{location}: a Kaggle CSV must be a local file (copy it here first)")
    name = Path(location).name
    reader = _AllBadRowsReader(os.path.expanduser(location), scheme="fer7", chunk_rows=CSV_CHUNK_ROWS)
    by_id = reader.format.id_column is not None
    crops = []
    for chunk in reader:
        n, height, width = chunk.images.shape
        ids = chunk.image_ids if by_id else chunk.row_ids
        sources = [f"{name}:ImageId={i}" if by_id else f"{name}:line={i}" for i in ids]
        flat = np.ascontiguousarray(chunk.images).reshape(n, height * width)
        crops.append(pa.Table.from_arrays(
            [pa.array(sources, pa.string()), pa.array([row.tobytes() for row in flat], pa.binary()),
             pa.array(np.full(n, height, np.int16)), pa.array(np.full(n, width, np.int16))],
            schema=CROP_WORK_SCHEMA))
    errors = [(f"{name}:line={line}", f"{name}:{line}: {reason}") for line, reason in reader.bad]
    report = reader.report
    if not crops and not errors:
        raise UserError(f"{location}: no data rows")
    detail = f"{reader.format.description}, {report.rows_kept:,} face crops" + (f", {report.bad_rows:,} bad rows" if report.bad_rows else "")
    return LabelInput("csv", location, crops=crops, error_rows=errors, total=report.rows_kept + len(errors), detail=detail)


def resolve_input(location: str) -> LabelInput:
    """Find out what INPUT is and list it; a missing, empty, unreadable or unknown INPUT is a UserError."""
    fs, path = _filesystem(location)
    try:
        return _resolve(location, fs, path)
    except OSError as err:   # a folder that cannot be listed, a store that refuses us
        raise UserError(f"{location}: cannot be read ({(str(err).splitlines() or [type(err).__name__])[0]})") from None


def _resolve(location: str, fs: pafs.FileSystem, path: str) -> LabelInput:
    if not _GLOB_MAGIC.search(path):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"{location}: no such file or folder")
        if info.type == pafs.FileType.Directory:
            meta = fs.get_file_info(f"{path}/{DATASET_META}")
            return _dataset(location, fs, path) if meta.type == pafs.FileType.File else _list_images(location, fs, path)
        if path.lower().endswith(CSV_SUFFIXES):
            return _csv(location)
        name = PurePosixPath(path).name
        files = _file_table([(path, name, info.size)])
        return LabelInput("images", location, filesystem=fs, files=files, total=1, detail="1 image file")
    return _list_images(location, fs, path)


@contextlib.contextmanager
def parquet_footer_readers(count: int) -> Iterator[None]:
    """Bound the actor pool that Ray 2.60's read_parquet starts to read file footers, for the run inside.

    It defaults to 32 actors (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS), started on every execution: on 2 cores
    a 2-file data set took 6-14 s to its first block that way, 1-4 s with one actor (each reads with
    128 I/O threads, plenty for thousands of files). A value the user set is left alone."""
    name = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
    if name in os.environ:
        yield
        return
    os.environ[name] = str(count)
    try:
        yield
    finally:
        os.environ.pop(name, None)


def work_dataset(spec: LabelInput, rows_per_block: int, min_blocks: int = 1):
    """The Ray Dataset of work rows for the labeling actors (lazy; image bytes are not read here).

    Blocks of about `rows_per_block` rows (one actor call each), but at least `min_blocks` of them
    where there are rows enough, so every actor of the pool gets work at once, and results stream
    back block by block (a whole file as one block would go to one actor and come back in one piece).
    """
    import ray

    if spec.kind == "dataset":
        ds = ray.data.read_parquet(spec.split_dirs, filesystem=spec.filesystem).select_columns(DATASET_COLUMNS)
        return ds.repartition(target_num_rows_per_block=rows_per_block)   # streaming: no shuffle, no barrier
    tables = [spec.files] if spec.kind == "images" else spec.crops
    rows = sum(t.num_rows for t in tables)
    if rows == 0:
        return None  # a CSV of bad rows only: nothing for the actors
    step = max(1, min(rows_per_block, -(-rows // min_blocks)), -(-rows // MAX_BLOCKS))
    return ray.data.from_arrow([t.slice(lo, step) for t in tables for lo in range(0, t.num_rows, step)])
