"""Streamed readers for the Kaggle CSV files users download (plain `.csv` or gzip `.csv.gz`).

The format is detected from the header line, never from the file name, and gzip from the first
bytes. Column names match after stripping spaces, case-insensitively, in any order; extra columns are
ignored.

    fer2013         emotion,pixels,Usage              48x48  Kaggle's fer2013.csv
    icml_face_data  emotion, Usage, pixels            48x48  Kaggle's icml_face_data.csv
    fer_2col        emotion,pixels                    48x48  the course's 2-column variant
    keypoints       30 keypoint columns,Image         96x96  Kaggle's training.csv, the course's data.csv
    keypoints_test  ImageId,Image                     96x96  Kaggle's test.csv (no labels)

Each data row is checked in this order, and the first failed check is its reason: the number of
fields; the emotion label (an integer 0..6); the Usage value; the ImageId (a positive integer); the
keypoints (numbers, or empty = NaN; x and y of a point both present or both missing; at least one
point; inside the image, i.e. in [-0.5, W - 0.5] under the pixel-centre convention of
emokp_ray.labels: [-0.5, 95.5] for 96x96); the pixels (exactly H*W integers in 0..255).
Validity is checked before the emotion scheme, so the bad-row count does not depend on the scheme;
valid rows whose FER label the scheme drops (seed5 drops fear and neutral) are counted apart.

Bad rows are skipped and counted in the `ReadReport` (strict=False), or the first one is a
`UserError` "FILE:LINE: reason" (strict=True). Whole-file problems are a `UserError` naming the file
in both modes: missing, empty, binary, an unknown header, and a truncated or corrupt gzip (its tail is
lost, and silently shrinking the data set would be worse than stopping).
Line numbers are the file's physical lines, header = line 1 (a quoted field spanning several lines
reports the line where its record starts).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emokp_ray.errors import UserError
from emokp_ray.labels import KEYPOINT_COLUMNS, KEYPOINT_IMAGE_SIZE, emotion_scheme

FER_IMAGE_SIZE = 48
FER7_LABELS = range(7)
USAGE_VALUES = ("Training", "PublicTest", "PrivateTest")
MAX_REPORTED_BAD = 5  # bad rows listed by line in a ReadReport (all are counted)
PIXELS_PER_CHUNK = 2048 * 48 * 48  # default chunk: 2,048 FER rows or 512 keypoint rows (~4.7 M pixels)
_SNIFF_BYTES = 64 * 1024  # decompressed bytes read to tell text from binary
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")


@dataclass(frozen=True)
class KaggleFormat:
    """One known CSV layout: the columns it needs and what they hold."""

    name: str
    description: str
    columns: tuple[str, ...]  # needed columns, in the order Kaggle writes them
    image_column: str
    image_size: int  # square images, pixels per side
    label_column: str | None = None  # FER7 emotion index 0..6
    usage_column: str | None = None  # Training | PublicTest | PrivateTest
    id_column: str | None = None  # test.csv ImageId
    keypoint_columns: tuple[str, ...] = ()

    @property
    def task(self) -> str | None:
        """ "emotion", "keypoints", or None for a file without labels."""
        if self.label_column:
            return "emotion"
        return "keypoints" if self.keypoint_columns else None


FORMATS: tuple[KaggleFormat, ...] = (
    KaggleFormat(
        "fer2013",
        "Kaggle FER2013 fer2013.csv",
        ("emotion", "pixels", "Usage"),
        "pixels",
        FER_IMAGE_SIZE,
        label_column="emotion",
        usage_column="Usage",
    ),
    KaggleFormat(
        "icml_face_data",
        "Kaggle FER2013 icml_face_data.csv",
        ("emotion", "Usage", "pixels"),
        "pixels",
        FER_IMAGE_SIZE,
        label_column="emotion",
        usage_column="Usage",
    ),
    KaggleFormat(
        "fer_2col", "FER2013 2-column variant", ("emotion", "pixels"), "pixels", FER_IMAGE_SIZE, label_column="emotion"
    ),
    KaggleFormat(
        "keypoints",
        "Kaggle facial keypoints training.csv / data.csv",
        KEYPOINT_COLUMNS + ("Image",),
        "Image",
        KEYPOINT_IMAGE_SIZE,
        keypoint_columns=KEYPOINT_COLUMNS,
    ),
    KaggleFormat(
        "keypoints_test",
        "Kaggle facial keypoints test.csv",
        ("ImageId", "Image"),
        "Image",
        KEYPOINT_IMAGE_SIZE,
        id_column="ImageId",
    ),
)


def _key(name: str) -> str:
    return name.strip().lower()


def _known_formats() -> str:
    def cols(f: KaggleFormat) -> str:
        return "30 keypoint columns,Image" if f.keypoint_columns else ",".join(f.columns)

    return "; ".join(f"{f.name} ({cols(f)})" for f in FORMATS)


def _match_header(path: Path, header: list[str]) -> tuple[KaggleFormat, dict[str, int]]:
    """The format a header line belongs to and each needed column's position, or a UserError."""
    positions: dict[str, int] = {}
    for i, name in enumerate(header):
        positions.setdefault(_key(name), i)
    exact = [f for f in FORMATS if [_key(c) for c in f.columns] == [_key(h) for h in header]]
    fits = [f for f in FORMATS if all(_key(c) in positions for c in f.columns)]
    if exact or fits:
        # Exact order first (tells fer2013 from icml_face_data), then the widest format contained.
        fmt = exact[0] if exact else max(fits, key=lambda f: len(f.columns))
        return fmt, {c: positions[_key(c)] for c in fmt.columns}
    shown = ",".join(header)
    shown = shown if len(shown) <= 200 else shown[:200] + "..."
    overlap = {f.name: sum(_key(c) in positions for c in f.columns) for f in FORMATS}
    nearest = max(FORMATS, key=lambda f: (overlap[f.name], -len(f.columns)))
    if overlap[nearest.name] > 0:
        missing = [c for c in nearest.columns if _key(c) not in positions]
        raise UserError(
            f"{path}: header lacks column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing[:5]))}"
            f"{' ...' if len(missing) > 5 else ''} needed by format {nearest.name}; found header {shown!r}"
        )
    raise UserError(
        f"{path} is not a known Kaggle CSV format: found header {shown!r}; known formats: {_known_formats()}"
    )


def _open_binary(path: Path):
    with open(path, "rb") as raw:
        magic = raw.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _stream_error(path: Path, err: Exception, line: int) -> UserError:
    where = f" after line {line}" if line else ""
    return UserError(
        f"{path}: gzip data is truncated or corrupt{where} ({err}); the rest of the file is lost: "
        "download or compress the file again"
    )


_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def _read_header(path: Path) -> list[str]:
    """Check the file is non-empty UTF-8 text and return its header fields (whole-file UserErrors)."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    try:
        with _open_binary(path) as f:
            sample = f.read(_SNIFF_BYTES)
    except _GZIP_ERRORS as err:
        raise _stream_error(path, err, 0) from None
    if not sample.strip():
        raise UserError(f"{path} is empty: expected a CSV header line")
    if b"\x00" in sample:
        raise UserError(f"{path} is a binary file (NUL bytes), not a CSV text file")
    try:  # an incremental decoder tolerates a multi-byte character cut at the end of the sample
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is a binary file (not UTF-8 text at byte {err.start}), not a CSV text file") from None
    text = sample.decode("utf-8-sig", errors="replace")
    first = text.splitlines()[0] if text else ""
    header = next(csv.reader([first]), [])
    if not any(h.strip() for h in header):
        raise UserError(f"{path}: line 1 is blank: expected a CSV header line")
    return header


def detect_format(path: str | Path) -> KaggleFormat:
    """The Kaggle format of a CSV file, from its header; a UserError for anything else."""
    path = Path(path)
    return _match_header(path, _read_header(path))[0]


@dataclass
class ReadReport:
    """What reading one file found. rows_read = rows_kept + dropped_by_scheme + bad_rows."""

    path: str
    format: str
    scheme: str
    rows_read: int = 0  # data records (blank lines are not records)
    rows_kept: int = 0
    dropped_by_scheme: int = 0  # valid rows whose FER label the scheme leaves out
    bad_rows: int = 0
    first_bad: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), first MAX_REPORTED_BAD

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["first_bad"] = [[line, reason] for line, reason in self.first_bad]
        return out

    def __str__(self) -> str:
        text = f"{self.path} ({self.format}): {self.rows_read:,} rows read, {self.rows_kept:,} kept"
        if self.dropped_by_scheme:
            text += f", {self.dropped_by_scheme:,} dropped by scheme {self.scheme}"
        text += f", {self.bad_rows:,} bad"
        for line, reason in self.first_bad:
            text += f"\n  line {line}: {reason}"
        if self.bad_rows > len(self.first_bad):
            text += f"\n  ... and {self.bad_rows - len(self.first_bad):,} more bad rows"
        return text


@dataclass(frozen=True)
class Chunk:
    """Kept rows of one chunk of a file, in file order."""

    images: np.ndarray  # uint8 [N, H, W]
    keypoints: np.ndarray | None  # float32 [N, 30] pixels, NaN = missing; None without keypoint labels
    labels: np.ndarray | None  # int64 [N] in the scheme; None without emotion labels
    usage: np.ndarray | None  # object [N] FER Usage strings; None where the file has none
    image_ids: np.ndarray | None  # int64 [N] test.csv ImageId; None elsewhere
    row_ids: np.ndarray  # int64 [N] file line numbers, header = 1

    def __len__(self) -> int:
        return len(self.row_ids)

    def to_batch(self) -> dict[str, np.ndarray]:
        """The pipeline batch: "image" uint8 [N,H,W], "keypoints" float32 [N,30], "label" int64 [N] (-1 = none)."""
        n = len(self)
        keypoints = (
            self.keypoints if self.keypoints is not None else np.full((n, len(KEYPOINT_COLUMNS)), np.nan, np.float32)
        )
        labels = self.labels if self.labels is not None else np.full(n, -1, np.int64)
        return {"image": self.images, "keypoints": keypoints, "label": labels}


def _parse_pixels_slow(text: str, count: int) -> tuple[np.ndarray | None, str | None]:
    """Exact check of one pixel string, for the rows the fast path rejects: (values, None) or (None, reason)."""
    tokens = text.split()
    for i, token in enumerate(tokens):
        if not _INTEGER.fullmatch(token):
            return None, f"non-numeric pixel value {token[:20]!r} (value {i + 1})"
    if len(tokens) != count:
        return None, f"expected {count} pixel values, found {len(tokens)}"
    values = np.array([int(t) for t in tokens], np.int64)
    out_of_range = np.flatnonzero((values < 0) | (values > 255))
    if out_of_range.size:
        i = int(out_of_range[0])
        return None, f"pixel value {values[i]} out of range 0..255 (value {i + 1})"
    return values.astype(np.uint8), None


def _parse_pixels(texts: list[str], count: int, reasons: list[str | None]) -> np.ndarray:
    """uint8 [N, count] from pixel strings; rows that fail get a reason (rows with one already are skipped)."""
    out = np.zeros((len(texts), count), np.uint8)
    with warnings.catch_warnings():
        # np.fromstring warns (here: raises) where the text is not all whitespace-separated integers.
        warnings.simplefilter("error", DeprecationWarning)
        for i, text in enumerate(texts):
            if reasons[i] is not None:
                continue
            try:
                values = np.fromstring(text, dtype=np.int64, sep=" ")  # C parser: ~13 ns per value
                ok = values.size == count and values.min() >= 0 and values.max() <= 255
            except (ValueError, DeprecationWarning):
                ok = False
            if ok:
                out[i] = values
                continue
            parsed, reasons[i] = _parse_pixels_slow(text, count)
            if parsed is not None:
                out[i] = parsed
    return out


def _parse_keypoints(
    rows: list[list[str]], names: tuple[str, ...], positions: dict[str, int], size: int, reasons: list[str | None]
) -> np.ndarray:
    """float32 [N, 30] coordinates (NaN = empty); rows that fail get a reason."""
    coords = np.full((len(rows), len(names)), np.nan, np.float64)
    cols = [positions[c] for c in names]
    for i, row in enumerate(rows):
        if reasons[i] is not None:
            continue
        for j, col in enumerate(cols):
            text = row[col].strip()
            if not text:
                continue
            try:
                coords[i, j] = float(text)
            except ValueError:
                reasons[i] = f"non-numeric coordinate {text[:20]!r} in column {names[j]}"
                break
    low, high = -0.5, size - 0.5  # the image's extent, origin at the top-left pixel's centre
    with np.errstate(invalid="ignore"):
        outside = ~np.isnan(coords) & ((coords < low) | (coords > high))
    half = np.isnan(coords[:, 0::2]) != np.isnan(coords[:, 1::2])
    empty = np.all(np.isnan(coords), axis=1)
    for i in np.flatnonzero(outside.any(axis=1) | half.any(axis=1) | empty).tolist():
        if reasons[i] is not None:
            continue
        if empty[i]:
            reasons[i] = "no keypoint values"
        elif half[i].any():
            point = names[2 * int(np.argmax(half[i]))][:-2]
            reasons[i] = f"keypoint {point} has only one of x, y"
        else:
            j = int(np.argmax(outside[i]))
            reasons[i] = f"{names[j]} = {coords[i, j]:g} is outside the {size}x{size} image [{low}, {high}]"
    return coords.astype(np.float32)


def _parse_int_column(values: list[str], reasons: list[str | None], allowed: range, reason: str) -> np.ndarray:
    """int64 [N] from integer strings in `allowed`; others get `reason` with {value} filled in."""
    out = np.full(len(values), -1, np.int64)
    for i, text in enumerate(values):
        if reasons[i] is not None:
            continue
        if _INTEGER.fullmatch(text) and int(text) in allowed:
            out[i] = int(text)
        else:
            reasons[i] = reason.format(value=repr(text.strip()[:20]))
    return out


class KaggleReader:
    """Iterate a Kaggle CSV file as `Chunk`s; `report` is complete once iteration ends.

    reader = read_kaggle("fer2013.csv.gz")
    for chunk in reader: ...
    print(reader.report)
    """

    def __init__(self, path: str | Path, scheme: str = "seed5", strict: bool = False, chunk_rows: int | None = None):
        self.path = Path(path)
        self.scheme = emotion_scheme(scheme)
        self.strict = strict
        header = _read_header(self.path)
        self.format, self._positions = _match_header(self.path, header)
        self.header = tuple(header)
        if chunk_rows is not None and chunk_rows < 1:
            raise UserError(f"chunk_rows must be at least 1, got {chunk_rows}")
        size = self.format.image_size
        self.chunk_rows = chunk_rows or max(1, PIXELS_PER_CHUNK // (size * size))
        self.report = ReadReport(str(self.path), self.format.name, self.scheme.name)

    def __iter__(self) -> Iterator[Chunk]:
        batch: list[tuple[int, list[str]]] = []
        for record in self._records():
            batch.append(record)
            if len(batch) == self.chunk_rows:
                chunk = self._parse(batch)
                batch = []
                if chunk is not None:
                    yield chunk
        if batch:
            chunk = self._parse(batch)
            if chunk is not None:
                yield chunk

    def _records(self) -> Iterator[tuple[int, list[str]]]:
        """(first line number, fields) of each non-blank data record."""
        line = 1
        try:
            with _open_binary(self.path) as binary:
                text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="")
                reader = csv.reader(text)
                next(reader, None)  # the header, already matched
                line = reader.line_num
                for fields in reader:
                    start, line = line + 1, reader.line_num
                    if fields:
                        yield start, fields
        except _GZIP_ERRORS as err:
            raise _stream_error(self.path, err, line) from None
        except csv.Error as err:
            raise UserError(f"{self.path}:{line + 1}: unreadable CSV record ({err})") from None

    def _parse(self, batch: list[tuple[int, list[str]]]) -> Chunk | None:
        fmt, pos = self.format, self._positions
        lines = np.array([line for line, _ in batch], np.int64)
        rows = [fields for _, fields in batch]
        width = len(self.header)
        reasons: list[str | None] = [
            None if len(r) == width else f"expected {width} fields, found {len(r)}" for r in rows
        ]
        # A row with too few fields has no value to read: pad it (it is already marked bad).
        rows = [r if len(r) >= width else r + [""] * (width - len(r)) for r in rows]
        labels = usage = image_ids = keypoints = None
        if fmt.label_column:
            labels = _parse_int_column(
                [r[pos[fmt.label_column]] for r in rows],
                reasons,
                FER7_LABELS,
                "unknown emotion label {value} (FER labels are integers 0..6)",
            )
        if fmt.usage_column:
            usage = np.array([r[pos[fmt.usage_column]].strip() for r in rows], dtype=object)
            for i, value in enumerate(usage):
                if reasons[i] is None and value not in USAGE_VALUES:
                    reasons[i] = f"unknown Usage {value[:20]!r} (expected {', '.join(USAGE_VALUES)})"
        if fmt.id_column:
            image_ids = _parse_int_column(
                [r[pos[fmt.id_column]] for r in rows],
                reasons,
                range(1, 2**62),
                "ImageId {value} is not a positive integer",
            )
        if fmt.keypoint_columns:
            keypoints = _parse_keypoints(rows, fmt.keypoint_columns, pos, fmt.image_size, reasons)
        size = fmt.image_size
        pixels = _parse_pixels([r[pos[fmt.image_column]] for r in rows], size * size, reasons)

        bad = np.array([r is not None for r in reasons])
        keep = ~bad
        dropped = np.zeros_like(keep)
        if labels is not None:
            mapped = np.array([self.scheme.from_fer7.get(int(v), -1) for v in labels], np.int64)
            dropped = keep & (mapped < 0)
            keep &= ~dropped
            labels = mapped
        self._account(lines, reasons, bad, dropped, keep)
        if not keep.any():
            return None
        return Chunk(
            images=pixels[keep].reshape(-1, size, size),
            keypoints=None if keypoints is None else keypoints[keep],
            labels=None if labels is None else labels[keep],
            usage=None if usage is None else usage[keep],
            image_ids=None if image_ids is None else image_ids[keep],
            row_ids=lines[keep],
        )

    def _account(
        self, lines: np.ndarray, reasons: list[str | None], bad: np.ndarray, dropped: np.ndarray, keep: np.ndarray
    ) -> None:
        bad_idx = np.flatnonzero(bad)
        if bad_idx.size and self.strict:
            i = int(bad_idx[0])
            raise UserError(f"{self.path}:{lines[i]}: {reasons[i]}")
        report = self.report
        report.rows_read += len(lines)
        report.rows_kept += int(keep.sum())
        report.dropped_by_scheme += int(dropped.sum())
        report.bad_rows += int(bad_idx.size)
        room = MAX_REPORTED_BAD - len(report.first_bad)
        report.first_bad.extend((int(lines[i]), str(reasons[i])) for i in bad_idx[: max(room, 0)])


def read_kaggle(
    path: str | Path, scheme: str = "seed5", strict: bool = False, chunk_rows: int | None = None
) -> KaggleReader:
    """Open a Kaggle CSV (format from its header) for streaming; iterate it for `Chunk`s.

    chunk_rows: rows per chunk; None picks ~4.7 M pixels (2,048 FER rows, 512 keypoint rows), so memory
    stays bounded whatever the file size. Whole-file problems raise here, bad rows while iterating.
    """
    return KaggleReader(path, scheme=scheme, strict=strict, chunk_rows=chunk_rows)
