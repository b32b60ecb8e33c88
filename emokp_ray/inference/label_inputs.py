"""What `emokp label` reads: INPUT resolved on the driver, its work rows streamed in bounded chunks.

INPUT is one of
    an image folder, a glob or one image file   local path or URI (s3://, gs://, file://, ...) through
    (videos among them: VIDEO_EXTENSIONS)       pyarrow filesystems; work rows: path, source, size,
                                                range_start, range_stop, error (a video: one row per
                                                frame range, `FrameRange`; an image: range null)
    a prepared Parquet data set                 DIR/dataset.json + DIR/<split>/*.parquet (schema.py);
                                                Ray Data reads its rows (image, height, width, split,
                                                source, row_id: face crops) where they are
    a Kaggle CSV (.csv / .csv.gz, local)        any format kaggle.py reads, Kaggle's keypoints
                                                test.csv included; work rows: source, image, height,
                                                width, error (face crops, or a bad row's reason)
    a listing: a Parquet file, or a CSV whose   one image per row: `path` (relative to the listing's
    header has a `path` column (local or URI)   folder, or absolute on its filesystem) and optionally
                                                `boxes`, the faces the user already has (below);
                                                work rows: path, source, size (-1: not known yet),
                                                boxes (JSON text or null), error

Videos are split on the driver into frame ranges of about `LabelInput.frames_per_range` sampled
frames (video.frame_ranges, from the header: the driver opens each video, decodes nothing), so the
ranges of one long video are labelled by Ray Data tasks in parallel; a range is an input of its
own (one part file holds it whole, a resume skips it whole). A video that cannot be opened is one
work row carrying its error (an error row in the output). The last range of a video is open-ended.

A listing's `boxes` (as the HTTP API's `boxes`): JSON text `[[x, y, w, h], ...]` in a CSV; in Parquet
a list<list<double>> or the same JSON text. `[]` means "no faces here", null or missing "detect".
Given boxes are the crop boxes (image px) and skip detection for that image. A cell that is not a
list of at most MAX_BOXES_PER_IMAGE boxes that pass inference/boxes.check_box (as the HTTP API's) makes
that image an error row (its reason in `error`), never a failed run; so does a path with a URI
scheme (paths are read on the listing's own filesystem); a box outside the image is an error row of
stage A.

Only names and sizes are listed on the driver; image bytes are read and decoded by the labeling
tasks, so an unreadable file becomes an error row there. A CSV is parsed on the driver (it is one
file); its bad rows become work rows that carry their error.

Memory bound of the listing (`iter_work_tables`): the walk goes one folder at a time (pyarrow lists
a folder in one call, `_walk`), so the driver holds the entries of the folders on the current path,
their pending sub-folder names, and one chunk of at most LISTING_CHUNK_ROWS work rows (about
300 bytes each for files as Python tuples, 100 as Arrow; ~9 KB for 96x96 CSV crops, CSV_CHUNK_ROWS
at a time), never the whole listing. A flat prefix of millions of objects is still one folder listing: split such a bucket by
sub-prefix. The chunks are written to OUT/_work by the run (label.py), and Ray Data reads them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emokp_ray.data.kaggle import KaggleReader
from emokp_ray.data.schema import DATASET_META, SPLITS
from emokp_ray.errors import UserError
from emokp_ray.inference.boxes import BoxError, JsonNumberError, check_box, load_json, short_repr
from emokp_ray.inference.images import IMAGE_EXTENSIONS  # the endings of the formats images.py decodes
from emokp_ray.inference.video import DEFAULT_FPS, VIDEO_EXTENSIONS, frame_ranges, is_video, probe_video
from emokp_ray.storage import is_uri, open_location

CSV_SUFFIXES = (".csv", ".csv.gz")
CSV_CHUNK_ROWS = 512  # rows parsed at a time from a CSV (96x96: ~4.7 MB)
# File rows per listing chunk on the driver: ~3 MB of Python tuples while it fills, ~0.8 MB as Arrow.
# Small chunks, because the allocator keeps what a chunk freed: the listing's peak memory grows with the
# chunk, not with the input count (benchmarks/label_memory.py measures the whole driver).
LISTING_CHUNK_ROWS = 8_192
# Columns of a prepared data set the labeler needs (labels and keypoints stay on disk).
DATASET_COLUMNS = ["image", "height", "width", "split", "source", "row_id"]
_GLOB_MAGIC = re.compile(r"[*?\[]")

# range_start / range_stop: a video's frame range [start, stop) (stop null: to the end); both null for
# an image. error: a work row that is an error already (a video that cannot be opened), else null.
FILE_WORK_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("source", pa.string()),
        ("size", pa.int64()),
        ("range_start", pa.int64()),
        ("range_stop", pa.int64()),
        ("error", pa.string()),
    ]
)
LISTING_WORK_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("source", pa.string()),
        ("size", pa.int64()),
        ("boxes", pa.string()),
        ("error", pa.string()),
        ("range_start", pa.int64()),
        ("range_stop", pa.int64()),
    ]
)  # size -1: read by the task; boxes: canonical JSON text, null = detect; error: a bad row's reason
FRAMES_PER_RANGE = 32  # sampled frames per video range: one range is one stage-A call (a few s of detection)
LISTING_SUFFIXES = (".parquet", ".pq")
MAX_BOXES_PER_IMAGE = 256  # a listing row with more is an error row (each box is a crop per network)
CROP_WORK_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("image", pa.binary()),
        ("height", pa.int16()),
        ("width", pa.int16()),
        ("error", pa.string()),
    ]
)  # error: a bad CSV row's reason (image empty), else null


@dataclass
class LabelInput:
    """INPUT resolved (not yet listed): its kind and where its rows are."""

    kind: str  # "images" | "dataset" | "csv" | "listing"
    location: str  # INPUT as given
    filesystem: pafs.FileSystem | None = None  # images, dataset
    path: str = ""  # INPUT's path on `filesystem` (images: a folder, a glob or a file)
    split_dirs: list[str] = field(default_factory=list)  # dataset: <DIR>/<split> paths on `filesystem`
    total: int = 0  # dataset: rows (from the footers); others: known once listed
    detail: str = ""  # one line for the console: what was found
    fps: float | None = DEFAULT_FPS  # videos: frames sampled per second (None: every frame)
    frames_per_range: int = FRAMES_PER_RANGE  # videos: sampled frames per work row (frame range)

    @property
    def crop_mode(self) -> bool:
        """Every row is one face crop (data set, CSV); image files go through the predictor's mode."""
        return self.kind in ("dataset", "csv")

    @property
    def work_schema(self) -> pa.Schema:
        """The schema of this input's work rows in OUT/_work."""
        return {"images": FILE_WORK_SCHEMA, "listing": LISTING_WORK_SCHEMA}.get(self.kind, CROP_WORK_SCHEMA)

    @property
    def identity(self) -> str:
        """INPUT as a run's output records it (an absolute path or the URI): what --resume compares."""
        return self.location if is_uri(self.location) else self.path


@dataclass
class ListingCounts:
    """What a listing found so far (updated while `iter_work_tables` runs)."""

    inputs: int = 0  # work rows: images and video frame ranges expected in the output
    videos: int = 0  # video files among them (each one or more frame ranges)
    skipped_files: int = 0  # files in an image folder without an image extension (not inputs)
    skipped_links: int = 0  # folders reached again through a symbolic link (walked once, not again)


@dataclass(frozen=True)
class FrameRange:
    """A video's work row: frames [start, stop) of the file at `path` (stop None: to the end), or,
    with `error`, a video that could not be opened (start 0, stop None: the whole file)."""

    path: str
    source: str
    size: int
    start: int
    stop: int | None
    error: str | None = None


def video_ranges(fs: pafs.FileSystem, path: str, source: str, size: int, spec: LabelInput) -> list[FrameRange]:
    """A video file -> its frame ranges (label_inputs' docstring), from its header; a file that is not
    a readable video (or PyAV missing) is one FrameRange with the error."""
    try:
        if size == DANGLING:
            raise UserError(f"{source}: a symbolic link whose target does not exist")
        if size < 0:  # a listing's row: its size is read here
            info = fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                raise UserError(f"{source}: no such file ({path})")
            size = info.size or 0
        if size > MAX_VIDEO_BYTES:
            raise UserError(f"{source}: file of {size:,} bytes is larger than {MAX_VIDEO_BYTES:,}")
        header = probe_video(lambda: fs.open_input_file(path), source)
    except (UserError, OSError) as err:
        text = (str(err).splitlines() or [type(err).__name__])[0]
        return [FrameRange(path, source, size, 0, None, text if source in text else f"{source}: {text}")]
    ranges = frame_ranges(header, spec.fps, spec.frames_per_range)
    return [FrameRange(path, source, size, start, stop) for start, stop in ranges]


MAX_VIDEO_BYTES = 64 * 2**30  # a larger file is an error row (decoded as a stream: memory does not grow with it)


def _glob_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Path components against glob components: `*`, `?`, `[..]` inside one component, `**` any number."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(pattern[1:], parts[1:])


def _may_contain(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether a folder at relative `parts` can hold a match of `pattern` (prunes the walk of a glob)."""
    for i, part in enumerate(parts):
        if i >= len(pattern):
            return False
        if pattern[i] == "**":
            return True
        if not fnmatch.fnmatchcase(part, pattern[i]):
            return False
    return len(parts) < len(pattern)


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(relative).parts)


# The size _walk gives a symbolic link whose target is missing: an error row when read (-1 is a
# listing's row whose size is read by the labeling task).
DANGLING = -2


def _list_folder(fs: pafs.FileSystem, folder: str) -> list[tuple[str, str, int]]:
    """One folder's entries (path, kind "dir" | "file" | "dangling", size), sorted by path. Local
    folders are read with os.scandir: pyarrow follows symbolic links and leaves dangling ones out."""
    if isinstance(fs, pafs.LocalFileSystem):
        out = []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    path = f"{folder.rstrip('/')}/{entry.name}"
                    try:
                        if entry.is_dir():  # follows a link to a folder
                            out.append((path, "dir", 0))
                        elif entry.is_file():
                            out.append((path, "file", entry.stat().st_size))
                        elif entry.is_symlink() and not os.path.exists(path):
                            out.append((path, "dangling", DANGLING))
                    except OSError:  # vanished or unreadable between listing and stat: read as an error row
                        out.append((path, "dangling", DANGLING))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(out)
    kinds = {pafs.FileType.Directory: "dir", pafs.FileType.File: "file"}
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False, allow_not_found=True))
    return sorted((i.path, kinds[i.type], i.size or 0) for i in infos if i.type in kinds)


def _walk(
    fs: pafs.FileSystem,
    base: str,
    keep_folder=lambda parts: True,
    counts: ListingCounts | None = None,
    visited: set[tuple[int, int]] | None = None,
) -> Iterator[tuple[str, str, int]]:
    """(path, path relative to base, size) of every file under base, depth first, each folder's
    entries sorted by name; one folder listed per call (see the module docstring's bound).

    Symbolic links are followed, but never into a folder already walked (same device and inode): a
    link back up the tree (`a -> .`) would otherwise walk forever, and a second link to one folder
    would list its files twice. Such folders are counted in counts.skipped_links. A dangling link
    comes out with size DANGLING, so it becomes an error row instead of vanishing. `visited`
    (device, inode) of folders walked already, shared by several walks (updated in place)."""
    local = isinstance(fs, pafs.LocalFileSystem)
    visited = set() if visited is None else visited
    if local:
        with contextlib.suppress(OSError):
            st = os.stat(base)
            visited.add((st.st_dev, st.st_ino))
    stack: list[str] = [base]
    while stack:
        folder = stack.pop()
        entries = _list_folder(fs, folder)
        subfolders = []
        for path, kind, size in entries:
            relative = str(PurePosixPath(path).relative_to(base))
            if kind == "dir":
                if not keep_folder(PurePosixPath(relative).parts):
                    continue
                if local:
                    try:
                        st = os.stat(path)
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) in visited:
                        if counts is not None:
                            counts.skipped_links += 1
                        continue
                    visited.add((st.st_dev, st.st_ino))
                subfolders.append(path)
            else:
                yield path, relative, size
        del entries
        stack.extend(reversed(subfolders))  # popped in name order


def _file_entries(spec: LabelInput, counts: ListingCounts) -> Iterator[tuple[str, str, int]]:
    """The image files of a folder (image extensions, hidden entries skipped), a glob (every match) or one file."""
    fs, path = spec.filesystem, spec.path
    assert fs is not None, "an image input is resolved with its filesystem"
    if _GLOB_MAGIC.search(path):
        parts = PurePosixPath(path).parts
        first_magic = next(i for i, p in enumerate(parts) if _GLOB_MAGIC.search(p))
        base = str(PurePosixPath(*parts[:first_magic])) if first_magic else "/"
        pattern = parts[first_magic:]
        for entry in _walk(fs, base, lambda folder: _may_contain(pattern, folder), counts):
            if _glob_match(pattern, PurePosixPath(entry[1]).parts):
                yield entry
        return
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        yield path, PurePosixPath(path).name, info.size
        return
    for entry in _walk(fs, path, lambda folder: not folder[-1].startswith("."), counts):
        if _hidden(entry[1]):
            continue
        if entry[1].lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS):
            yield entry
        else:
            counts.skipped_files += 1


def _file_tables(spec: LabelInput, counts: ListingCounts, chunk_rows: int) -> Iterator[pa.Table]:
    chunk: list[tuple[str, str, int] | FrameRange] = []
    fs = spec.filesystem
    assert fs is not None, "an image input is resolved with its filesystem"
    for entry in _file_entries(spec, counts):
        if is_video(entry[1]):
            counts.videos += 1
            chunk.extend(video_ranges(fs, *entry, spec))
        else:
            chunk.append(entry)
        if len(chunk) >= chunk_rows:
            yield _file_table(chunk, counts)
            chunk = []
    if chunk:
        yield _file_table(chunk, counts)


def _file_table(entries: list[tuple[str, str, int] | FrameRange], counts: ListingCounts) -> pa.Table:
    """Work rows of image files (path, source, size) and video frame ranges."""
    columns: dict[str, list] = {name: [] for name in FILE_WORK_SCHEMA.names}
    for entry in entries:
        values: tuple[object, ...]
        if isinstance(entry, FrameRange):
            values = (entry.path, entry.source, entry.size, entry.start, entry.stop, entry.error)
        else:
            values = (*entry, None, None, None)
        for name, value in zip(FILE_WORK_SCHEMA.names, values):
            columns[name].append(value)
    counts.inputs += len(entries)
    return pa.Table.from_pydict(columns, schema=FILE_WORK_SCHEMA)


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
    return LabelInput(
        "dataset",
        location,
        filesystem=fs,
        path=path,
        split_dirs=split_dirs,
        total=rows,
        detail=f"prepared data set, {rows:,} face crops ({names})",
    )


class _AllBadRowsReader(KaggleReader):
    """A KaggleReader that keeps the line and reason of EVERY bad row (the report keeps the first few):
    for labeling, each input row must come out as a result or as an error row."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad: list[tuple[int, str]] = []

    def _account(self, lines, reasons, bad, dropped, keep) -> None:
        super()._account(lines, reasons, bad, dropped, keep)
        self.bad.extend((int(lines[i]), str(reasons[i])) for i in np.flatnonzero(bad))


def _csv_tables(spec: LabelInput, counts: ListingCounts) -> Iterator[pa.Table]:
    """A Kaggle CSV as crop tables, CSV_CHUNK_ROWS rows at a time. The scheme is fer7, which keeps
    every valid FER row (labels are not needed to label). Sources: `test.csv:ImageId=N` for Kaggle's
    keypoints test file, else `NAME:line=N` (the row's line in the file, header = 1); bad rows come
    last, with their reason."""
    name = Path(spec.location).name
    reader = _AllBadRowsReader(os.path.expanduser(spec.location), scheme="fer7", chunk_rows=CSV_CHUNK_ROWS)
    by_id = reader.format.id_column is not None
    for chunk in reader:
        n, height, width = chunk.images.shape
        ids = chunk.image_ids if chunk.image_ids is not None else chunk.row_ids
        sources = [f"{name}:ImageId={i}" if by_id else f"{name}:line={i}" for i in ids]
        flat = np.ascontiguousarray(chunk.images).reshape(n, height * width)
        counts.inputs += n
        yield pa.Table.from_arrays(
            [
                pa.array(sources, pa.string()),
                pa.array([row.tobytes() for row in flat], pa.binary()),
                pa.array(np.full(n, height, np.int16)),
                pa.array(np.full(n, width, np.int16)),
                pa.nulls(n, pa.string()),
            ],
            schema=CROP_WORK_SCHEMA,
        )
    if reader.bad:
        n = len(reader.bad)
        counts.inputs += n
        yield pa.Table.from_arrays(
            [
                pa.array([f"{name}:line={line}" for line, _ in reader.bad], pa.string()),
                pa.array([b""] * n, pa.binary()),
                pa.array(np.zeros(n, np.int16)),
                pa.array(np.zeros(n, np.int16)),
                pa.array([f"{name}:{line}: {reason}" for line, reason in reader.bad], pa.string()),
            ],
            schema=CROP_WORK_SCHEMA,
        )


def parse_boxes(value: object) -> list[list[float]] | None:
    """A listing's `boxes` cell -> [[x, y, w, h], ...] ([] = no faces), or None (null: detect).
    JSON text or nested lists, each box checked by boxes.check_box (as the HTTP API's); anything else
    is a ValueError saying what a box is."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None  # an empty CSV cell
        text = value
        try:
            value = load_json(text)
        except JsonNumberError as err:
            raise ValueError(f"boxes {short_repr(text)}: {err}") from None
        except ValueError:
            raise ValueError(f"boxes {short_repr(text)} is not JSON: expected [[x, y, w, h], ...]") from None
        if value is None:
            return None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"boxes must be a list of [x, y, w, h], got {short_repr(value)}")
    if len(value) > MAX_BOXES_PER_IMAGE:
        raise ValueError(f"{len(value):,} boxes for one image, more than {MAX_BOXES_PER_IMAGE}")
    boxes = []
    for j, box in enumerate(value):
        try:
            boxes.append(list(check_box(box)))
        except BoxError as err:
            raise ValueError(f"box {j}: {err}") from None
    return boxes


def _listing_rows(spec: LabelInput, paths: list, cells: list) -> pa.Table:
    """A chunk of a listing (its `path` and `boxes` values) -> work rows; a bad row carries its error."""
    base = str(PurePosixPath(spec.path).parent)
    out: dict[str, list] = {name: [] for name in LISTING_WORK_SCHEMA.names}
    fs = spec.filesystem
    assert fs is not None, "a listing is resolved with its filesystem"

    def add(
        path: str, source: str, boxes: str | None, error: str | None, start: int | None = None, stop: int | None = None
    ) -> None:
        values = (path, source, -1, boxes, error, start, stop)
        for name, value in zip(LISTING_WORK_SCHEMA.names, values):
            out[name].append(value)

    for path, cell in zip(paths, cells):
        source, error, boxes = str(path or ""), None, None
        try:
            if not source.strip():
                raise ValueError("empty path")
            if "://" in source:
                raise ValueError("a listing's paths are on its own filesystem: relative to its folder, or absolute")
            boxes = parse_boxes(cell)
            if boxes is not None and is_video(source):
                raise ValueError("boxes are for images: a video's faces are detected in every sampled frame")
        except ValueError as err:
            error = f"{spec.location}: {source or '(no path)'}: {err}"
        full = source if source.startswith("/") or error else f"{base}/{source}"
        if error is None and is_video(source):
            for r in video_ranges(fs, full, source, -1, spec):
                add(r.path, r.source, None, r.error, r.start, r.stop)
            continue
        add(full, source, None if boxes is None else json.dumps(boxes), error)
    return pa.Table.from_pydict(out, schema=LISTING_WORK_SCHEMA)


def _listing_tables(spec: LabelInput, counts: ListingCounts, chunk_rows: int) -> Iterator[pa.Table]:
    """A listing's rows, `chunk_rows` at a time: Parquet read by record batches, CSV streamed."""
    fs = spec.filesystem
    assert fs is not None, "a listing is resolved with its filesystem"
    if spec.path.lower().endswith(LISTING_SUFFIXES):
        with fs.open_input_file(spec.path) as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            columns = [c for c in ("path", "boxes") if c in names]
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
                cells = batch.column("boxes").to_pylist() if "boxes" in columns else [None] * batch.num_rows
                table = _listing_rows(spec, batch.column("path").to_pylist(), cells)
                counts.inputs += table.num_rows
                yield table
        return
    import pyarrow.csv as pacsv

    with fs.open_input_stream(spec.path, compression="detect") as f:
        reader = pacsv.open_csv(
            f,
            read_options=pacsv.ReadOptions(block_size=1 << 20),
            convert_options=pacsv.ConvertOptions(
                column_types={"path": pa.string(), "boxes": pa.string()}, strings_can_be_null=True
            ),
        )
        for batch in reader:
            for lo in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(lo, chunk_rows)
                names = part.schema.names
                cells = part.column("boxes").to_pylist() if "boxes" in names else [None] * part.num_rows
                table = _listing_rows(spec, part.column("path").to_pylist(), cells)
                counts.inputs += table.num_rows
                yield table


def iter_work_tables(
    spec: LabelInput, counts: ListingCounts | None = None, chunk_rows: int = LISTING_CHUNK_ROWS
) -> Iterator[pa.Table]:
    """The work rows of an image or CSV input, streamed in chunks (see the module docstring's bound);
    `counts` is updated as they come. A prepared data set has none: Ray Data reads it in place."""
    counts = counts if counts is not None else ListingCounts()
    if spec.kind == "images":
        yield from _file_tables(spec, counts, chunk_rows)
    elif spec.kind == "csv":
        yield from _csv_tables(spec, counts)
    elif spec.kind == "listing":
        yield from _listing_tables(spec, counts, chunk_rows)


def work_table(spec: LabelInput) -> pa.Table:
    """All work rows of a small input as one table (tests, benchmarks, a plain loop)."""
    tables = list(iter_work_tables(spec))
    return pa.concat_tables(tables) if tables else FILE_WORK_SCHEMA.empty_table()


def resolve_input(
    location: str, fps: float | None = DEFAULT_FPS, frames_per_range: int = FRAMES_PER_RANGE
) -> LabelInput:
    """Find out what INPUT is and check that it has inputs (listing stops at the first one); a
    missing, empty, unreadable or unknown INPUT is a UserError. fps, frames_per_range: how videos
    are sampled and split (LabelInput)."""
    fs, path = open_location(location)
    try:
        spec = _resolve(location, fs, path)
        spec.fps, spec.frames_per_range = fps, frames_per_range
        if spec.kind != "dataset" and next(iter_work_tables(spec, chunk_rows=1), None) is None:
            if spec.kind in ("csv", "listing"):
                raise UserError(f"{location}: no data rows")
            if _GLOB_MAGIC.search(path):
                raise UserError(f"{location}: no files match this pattern")
            raise UserError(
                f"{location}: no image files or videos in this folder "
                f"(looked for {', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})"
            )
        return spec
    except OSError as err:  # a folder that cannot be listed, a store that refuses us
        raise UserError(f"{location}: cannot be read ({(str(err).splitlines() or [type(err).__name__])[0]})") from None


def _resolve(location: str, fs: pafs.FileSystem, path: str) -> LabelInput:
    if _GLOB_MAGIC.search(path):
        return LabelInput("images", location, filesystem=fs, path=path, detail="image files matching the pattern")
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{location}: no such file or folder")
    if info.type == pafs.FileType.Directory:
        if fs.get_file_info(f"{path}/{DATASET_META}").type == pafs.FileType.File:
            return _dataset(location, fs, path)
        return LabelInput("images", location, filesystem=fs, path=path, detail="an image folder")
    if path.lower().endswith(LISTING_SUFFIXES) or (path.lower().endswith(CSV_SUFFIXES) and _has_path_column(fs, path)):
        return _listing(location, fs, path)
    if path.lower().endswith(CSV_SUFFIXES):
        if is_uri(location):
            raise UserError(f"{location}: a Kaggle CSV must be a local file (copy it here first)")
        return LabelInput("csv", location, path=path, detail="a Kaggle CSV (parsed on the driver)")
    return LabelInput(
        "images", location, filesystem=fs, path=path, detail=f"1 {'video' if is_video(path) else 'image'} file"
    )


def _has_path_column(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a CSV's header names a `path` column (a listing), not a Kaggle file's columns."""
    with fs.open_input_stream(path, compression="detect") as f:
        header = f.read(64 * 1024).decode("utf-8", "replace").splitlines()[:1]
    return bool(header) and "path" in [c.strip().strip('"') for c in header[0].split(",")]


def _listing(location: str, fs: pafs.FileSystem, path: str) -> LabelInput:
    """A Parquet or CSV listing of image paths; it must name a `path` column."""
    names: list[str] = []
    if path.lower().endswith(LISTING_SUFFIXES):
        try:
            with fs.open_input_file(path) as f:
                names = pq.ParquetFile(f).schema_arrow.names
        except (OSError, pa.ArrowInvalid) as err:
            raise UserError(f"{location}: not a readable Parquet file ({(str(err).splitlines() or [''])[0]})") from None
        if "path" not in names:
            raise UserError(f"{location}: a Parquet listing needs a `path` column (it has: {', '.join(names)})")
    extra = " with face boxes" if "boxes" in names else ""
    return LabelInput("listing", location, filesystem=fs, path=path, detail=f"a listing of image paths{extra}")


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
