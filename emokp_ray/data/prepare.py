"""`emokp data prepare`: Kaggle CSVs -> one prepared data set (Parquet in the schema of schema.py).

Three splits, seeded and recorded in dataset.json: `train`, `val` (chooses recipes, epochs, early
stopping, temperatures) and `test` (reported, never used to choose anything).
- FER files with a Usage column: PublicTest and PrivateTest -> test; Training -> train and a seeded,
  stratified `val_fraction` share of it -> val (`test_fraction` does not apply).
- Keypoint files (training.csv / data.csv) with a people file (`--people FILE`, or found beside the
  input as `<name>_people.csv`, e.g. training.csv.gz -> training_people.csv; columns `row,person`,
  row = 0-based data row): whole PEOPLE go to train, val or test, stratified by complete / partial
  rows, so test figures are what a user gets on people the model never saw. Frames of one person
  look alike even when they are not near-duplicates, so a split by near-duplicate groups leaves a
  test person's other frames in training and flatters the test figure.
- Keypoint files without one: near-duplicate faces (frames of one video) are grouped
  (near_duplicates.py) and whole groups go to train, val or test, stratified by complete / partial
  rows; a few train groups lend one member each to test, flagged in dataset.json
  (`near_duplicates.holdout_row_ids`) so evaluation can say what a leaked near-duplicate is worth.
  The whole file is held in memory for the grouping (Kaggle's has 7,049 rows: ~65 MB).
- Every other labelled file (the 2-column FER variant): a seeded, stratified split decided row by row
  while streaming (`StratifiedSplitter`); strata are the emotion classes.
- Kaggle's keypoints test.csv (no labels): all rows to test, keypoints all NaN, label -1.
- Image folders and keypoint listings (inference/folders.py): `train/`, `val/`, `test/` top folders are
  the splits; otherwise the seeded, stratified split while streaming, as for the 2-column variant.

The output appears only when every input was read completely (schema.DatasetWriter is atomic), so a
failing input leaves no directory, or the previous one untouched.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emokp_ray.data.kaggle import Chunk, KaggleFormat, ReadReport, read_kaggle
from emokp_ray.data.near_duplicates import NEAR_DUPLICATE_RMS, fingerprints, group_split, near_duplicate_groups
from emokp_ray.data.schema import (
    SPLITS,
    DatasetInfo,
    DatasetWriter,
    count_summary,
    format_counts,
    make_table,
    merge_counts,
)
from emokp_ray.errors import UserError
from emokp_ray.labels import EmotionScheme, emotion_scheme

USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "test", "PrivateTest": "test"}
SPLIT_BLOCK_ROWS = 20  # rows of one stratum that receive an exact quota of val/test rows


class StratifiedSplitter:
    """Seeded stratified split, decided per row while streaming (one pass, no row counts needed).

    The rows of each (source, stratum) are taken in file order in blocks of `block` rows. Block b gets
    exactly its quota of test and val rows, from cumulative rounding (after m rows of a stratum,
    round(m * test_fraction) test rows and round(m * (test_fraction + val_fraction)) test + val rows),
    at positions drawn by a permutation seeded with (seed, source, stratum, b). So each stratum is
    split in the requested ratios exactly at every block boundary (the last, partial block adds at
    most `block * fraction` rows of randomness), rows are shuffled within blocks, and the same file,
    seed and fractions always give the same split. (A per-row hash would be just as deterministic but
    only stratified on average: +-3 % of a 1,000-row stratum at 10 %.)
    """

    def __init__(self, seed: int, val_fraction: float, test_fraction: float, block: int = SPLIT_BLOCK_ROWS):
        self.seed, self.val_fraction, self.test_fraction, self.block = seed, val_fraction, test_fraction, block
        self._seen: dict[tuple[str, int], int] = {}  # rows of each (source, stratum) assigned so far

    def _quota(self, b: int) -> tuple[int, int]:
        """(test rows, test + val rows) of block b."""

        def cumulative(m: int, fraction: float) -> int:
            return int(np.floor(m * fraction + 0.5))

        lo, hi = b * self.block, (b + 1) * self.block
        both = self.test_fraction + self.val_fraction
        return (
            cumulative(hi, self.test_fraction) - cumulative(lo, self.test_fraction),
            cumulative(hi, both) - cumulative(lo, both),
        )

    def assign(self, source: str, strata: np.ndarray) -> np.ndarray:
        """Split names (object [N]) for the next N rows of `source`, given each row's stratum (ints >= 0)."""
        out = np.empty(len(strata), dtype=object)
        source_key = zlib.crc32(source.encode())
        for stratum in np.unique(strata):
            idx = np.flatnonzero(strata == stratum)
            start = self._seen.get((source, int(stratum)), 0)
            self._seen[(source, int(stratum))] = start + idx.size
            ranks = start + np.arange(idx.size)
            for b in np.unique(ranks // self.block):
                sel = ranks // self.block == b
                rng = np.random.default_rng([self.seed, source_key, int(stratum), int(b)])
                slot = rng.permutation(self.block)[ranks[sel] % self.block]
                n_test, n_test_val = self._quota(int(b))
                out[idx[sel]] = np.where(slot < n_test, "test", np.where(slot < n_test_val, "val", "train"))
        return out


def _strata(chunk: Chunk) -> np.ndarray:
    """The stratum of each row: its emotion class, or 1 for complete keypoint rows and 0 for partial."""
    if chunk.labels is not None:
        return chunk.labels
    if chunk.keypoints is None:
        raise ValueError("a chunk carries emotion labels or keypoints")
    return (~np.any(np.isnan(chunk.keypoints), axis=1)).astype(np.int64)


def _splits(
    fmt: KaggleFormat, chunk: Chunk, source: str, splitter: StratifiedSplitter, training_splitter: StratifiedSplitter
) -> np.ndarray:
    if chunk.usage is not None:
        # FER: the test rows are Kaggle's; val is a stratified share of Training
        splits = np.array([USAGE_TO_SPLIT[u] for u in chunk.usage], dtype=object)
        training = splits == "train"
        if training.any():
            splits[training] = training_splitter.assign(source, _strata(chunk)[training])
        return splits
    if fmt.task is None:  # test.csv: no labels, inference only
        return np.full(len(chunk), "test", dtype=object)
    return splitter.assign(source, _strata(chunk))


PEOPLE_SUFFIX = "_people.csv"


def people_file_beside(path: Path) -> Path | None:
    """`DIR/NAME.csv[.gz]` -> `DIR/NAME_people.csv` when that file exists, else None."""
    name = path.name
    for ending in (".csv.gz", ".csv"):
        if name.endswith(ending):
            candidate = path.with_name(name[: -len(ending)] + PEOPLE_SUFFIX)
            return candidate if candidate.is_file() else None
    return None


def read_people(path: Path) -> dict[int, str]:
    """A people file (`row,person`, row = 0-based data row of the keypoint file) -> {row: person}.
    A malformed file is a UserError naming the file and line."""
    import csv

    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if header != ["row", "person"]:
                raise UserError(f"{path}:1: a people file has the header 'row,person', got {','.join(header)!r}")
            people: dict[int, str] = {}
            for line, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != 2 or not fields[0].strip().isdigit() or not fields[1].strip():
                    raise UserError(
                        f"{path}:{line}: expected 'ROW,PERSON' (ROW a non-negative integer), got {fields!r}"
                    )
                row = int(fields[0])
                if row in people:
                    raise UserError(f"{path}:{line}: row {row} is listed twice")
                people[row] = fields[1].strip()
    except OSError as err:
        raise UserError(f"cannot read people file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text (CSV) people file") from None
    if not people:
        raise UserError(f"{path} lists no rows")
    return people


def _person_groups(row_ids: np.ndarray, people: dict[int, str], people_path: Path) -> np.ndarray:
    """Group id per kept row (0..P-1, in order of first appearance) from the people file; every kept
    row must be listed. row_ids are file line numbers (header = line 1), so data row = line - 2."""
    ids: dict[str, int] = {}
    groups = np.empty(len(row_ids), np.int64)
    for i, line in enumerate(row_ids.tolist()):
        person = people.get(int(line) - 2)
        if person is None:
            raise UserError(f"{people_path} has no person for data row {int(line) - 2} (file line {int(line)})")
        groups[i] = ids.setdefault(person, len(ids))
    return groups


def _grouped_keypoint_chunk(
    reader: Iterable[Chunk], seed: int, val_fraction: float, test_fraction: float, people_path: Path | None = None
) -> tuple[Chunk | None, np.ndarray, dict]:
    """A whole keypoint file as one chunk, its group-aware splits (by person where a people file is
    given, else by near-duplicate group), and what dataset.json records."""
    people = read_people(people_path) if people_path is not None else None  # a bad file fails before reading
    chunks = list(reader)
    if not chunks:
        return None, np.empty(0, object), {}
    chunk = Chunk(
        images=np.concatenate([c.images for c in chunks]),
        keypoints=np.concatenate([c.keypoints for c in chunks]),
        labels=None,
        usage=None,
        image_ids=None,
        row_ids=np.concatenate([c.row_ids for c in chunks]),
    )
    if people is not None and people_path is not None:
        groups = _person_groups(chunk.row_ids, people, people_path)
        splits, _ = group_split(groups, _strata(chunk), seed, val_fraction, test_fraction, holdout_fraction=0.0)
        per_split = {name: len(np.unique(groups[splits == name])) for name in SPLITS}
        return (
            chunk,
            splits,
            {"method": "people file: whole people per split", "people_file": people_path.name, "people": per_split},
        )
    groups = near_duplicate_groups(fingerprints(chunk.images))
    splits, holdout = group_split(groups, _strata(chunk), seed, val_fraction, test_fraction)
    sizes = np.bincount(groups)
    record = {
        "method": "fingerprint RMS difference < threshold, connected components; whole groups per split",
        "threshold_rms": NEAR_DUPLICATE_RMS,
        "groups": len(sizes),
        "rows_with_near_duplicate": int((sizes[groups] >= 2).sum()),
        "holdout_row_ids": chunk.row_ids[holdout].tolist(),
    }
    return chunk, splits, record


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare_dataset` wrote."""

    out_dir: Path
    info: DatasetInfo
    reports: tuple[ReadReport, ...]
    seconds: float

    def summary(self) -> str:
        """Per-input reports, then a table of rows, keypoint rows and classes per split."""
        lines = [f"prepared {self.out_dir} in {self.seconds:.1f} s"]
        by_source = self.info.extra.get("counts_by_source", {})
        for report in self.reports:
            lines += [f"  {line}" for line in str(report).splitlines()]
            lines += [f"  {note}" for note in self.info.extra.get("notes", {}).get(Path(report.path).name, [])]
            per_split = by_source.get(Path(report.path).name, {})
            lines.append("    -> " + ", ".join(f"{s} {per_split[s]['rows']:,}" for s in SPLITS if s in per_split))
        lines += format_counts(self.info)
        return "\n".join(lines)


def _check_options(inputs: Sequence[str | Path], val_fraction: float, test_fraction: float, seed: int) -> None:
    if not inputs:
        raise UserError("no input files given")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise UserError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    if seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed}")
    names = [Path(p).name for p in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"two inputs share the file name {duplicates[0]!r} (rows are identified by file name and line)")


# (input path, emotion scheme, strict) -> a reader of image inputs, or None (inference/folders.py)
ImageOpener = Callable[[Path, EmotionScheme, bool], Any]


def _open_input(
    path: str | Path, emotion: EmotionScheme, strict: bool, chunk_rows: int | None, open_images: ImageOpener | None
) -> Any:
    """The reader of one input: an image folder or keypoint listing (open_images'), or a Kaggle CSV."""
    location = Path(path)
    reader = None if open_images is None else open_images(location, emotion, strict)
    if reader is not None:
        return reader
    if location.is_dir():
        raise UserError(
            f"{location} is a folder: image folders are read through the face pipeline "
            f"(`emokp data prepare`, or emokp_ray.inference.folders.prepare_images)"
        )
    return read_kaggle(location, scheme=emotion.name, strict=strict, chunk_rows=chunk_rows)


def prepare_dataset(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    scheme: str = "seed5",
    strict: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    group_near_duplicates: bool = True,
    chunk_rows: int | None = None,
    people: str | Path | None = None,
    open_images: ImageOpener | None = None,
) -> PrepareResult:
    """Read Kaggle CSVs (any mix of known formats) into a prepared data set at `out_dir`, atomically.

    Bad rows are skipped and reported (strict=True: the first is a UserError "FILE:LINE: reason");
    an input with no data row, or a run that keeps no row, is a UserError and writes nothing.
    people: the people file of the keypoint input (`row,person`); None looks for `<name>_people.csv`
    beside each keypoint input. With one, whole people go to each split (module docstring).
    group_near_duplicates: keypoint files without a people file are split by near-duplicate groups;
    False splits them row by row like any other file.
    open_images: opens the image inputs (a reader, or None for an input that is not one of them):
    inference/folders.py's, which reads class-named image folders and keypoint listings through the
    predictor's face detection and framing (`prepare_images` passes it).
    """
    started = time.perf_counter()
    _check_options(inputs, val_fraction, test_fraction, seed)
    emotion = emotion_scheme(scheme)
    # Open every input first: an unknown format or class folder fails before any work is done.
    readers: list[Any] = [_open_input(p, emotion, strict, chunk_rows, open_images) for p in inputs]
    tasks = {r.format.task for r in readers}
    keypoint_readers = [r for r in readers if r.format.task == "keypoints"]
    if people is not None and len(keypoint_readers) != 1:
        raise UserError(
            f"--people names the people of one keypoint file; {len(keypoint_readers)} keypoint inputs given"
        )
    class_names = emotion.classes if "emotion" in tasks else None
    splitter = StratifiedSplitter(seed, val_fraction, test_fraction)
    training_splitter = StratifiedSplitter(seed, val_fraction, 0.0)  # FER Training -> train / val
    near_dups: dict[str, dict] = {}
    people_splits: dict[str, dict] = {}
    counts: dict[str, dict[str, int]] = {}
    by_source: dict[str, dict[str, dict[str, int]]] = {}
    sizes: set[tuple[int, int]] = set()
    with DatasetWriter(out_dir) as writer:
        for reader in readers:
            source = reader.path.name
            pairs: Iterable[tuple[Chunk, np.ndarray]]
            people_path = None
            image_input = hasattr(reader, "pairs")  # open_images' readers split as they stream
            if reader.format.task == "keypoints" and not image_input:
                people_path = Path(people) if people is not None else people_file_beside(reader.path)
            if image_input:
                pairs = reader.pairs(splitter)
            elif people_path is not None or (group_near_duplicates and reader.format.task == "keypoints"):
                chunk, grouped, record = _grouped_keypoint_chunk(reader, seed, val_fraction, test_fraction, people_path)
                (people_splits if people_path is not None else near_dups)[source] = record
                pairs = [] if chunk is None else [(chunk, grouped)]
            else:
                pairs = ((c, _splits(reader.format, c, source, splitter, training_splitter)) for c in reader)
            for chunk, splits in pairs:
                table = make_table(chunk.images, chunk.keypoints, chunk.labels, splits, source, chunk.row_ids)
                writer.write(table)
                chunk_counts = count_summary(table, class_names)
                counts = merge_counts(counts, chunk_counts)
                by_source[source] = merge_counts(by_source.get(source, {}), chunk_counts)
                sizes.add(chunk.images.shape[1:])
            if reader.report.rows_read == 0:
                raise UserError(f"{reader.path} has a header but no data rows")
        if not sizes:
            raise UserError("no usable rows in " + "; ".join(str(r.report) for r in readers).replace("\n", " "))
        writer.info = DatasetInfo(
            tasks=[t for t in ("keypoints", "emotion") if t in tasks],
            scheme=emotion.name if class_names else None,
            counts=counts,
            sources=[r.path.name for r in readers],
            image_sizes=[list(s) for s in sorted(sizes)],
            extra={
                "reports": [r.report.to_dict() for r in readers],
                "formats": {r.path.name: r.format.name for r in readers},
                "notes": {r.path.name: r.notes() for r in readers if hasattr(r, "notes") and r.notes()},
                "counts_by_source": by_source,
                "split": {
                    "method": "FER: Usage (PublicTest/PrivateTest = test) with a stratified val share of "
                    "Training; keypoints: whole people (people file) or near-duplicate groups; else stratified blocks",
                    "seed": seed,
                    "val_fraction": val_fraction,
                    "test_fraction": test_fraction,
                    "block_rows": SPLIT_BLOCK_ROWS,
                },
                "near_duplicates": near_dups,
                "people": people_splits,
                "strict": strict,
            },
        )
    return PrepareResult(
        Path(out_dir).resolve(), writer.info, tuple(r.report for r in readers), time.perf_counter() - started
    )
