"""Your own faces as `emokp data prepare` inputs: image folders named by emotion, keypoint listings.

Emotion: a folder of class-named folders (torchvision's ImageFolder habit)

    ROOT/happy/0001.png ...                   the seeded, stratified split (--seed, --val-fraction, --test-fraction)
    ROOT/train/happy/0001.png, ROOT/val/..., ROOT/test/...    the top folders are the splits

Class folder names match the scheme's classes case-insensitively, with the usual synonyms (happy,
happiness; angry, anger; sad, sadness; surprised; fearful, afraid, scared; disgusted; calm) and FER's
label numbers 0-6 (FER's order). An unknown name is one `UserError` listing the known ones before any
image is read; `--classes a,b,c` declares a set of one's own (labels.custom_scheme_name). Class folders
may nest; symbolic links are followed but never into a folder already walked (label_inputs._walk).

Keypoints: a listing, CSV (plain or .gz) or Parquet, with a `path` column (relative to the listing's
folder, or absolute) and Kaggle's 30 keypoint columns (`left_eye_center_x`, ...: pixels of that image,
origin at the centre of the top-left pixel, empty = missing), split by rows like any Kaggle file.

Every image is decoded (EXIF turned, colour or grey, any size) and turned grey. With --detect auto,
the predictor's rule decides: a square image of at most 128 px is a face crop, used as it is (its own
size; training resizes it, keypoints with it); anything else goes through the predictor's detection
and framing (inference/predictor.prepare_faces): the largest face, aligned and cropped as that
network's crops are (CROP_SIZE px), keypoints moved into the crop's coordinates. An image without a
face, an unreadable file and a bad listing row are reported like bad CSV rows and skipped
(`--strict`: the first one stops the run); files without an image extension are counted as skipped.

Streamed: the folder walk lists one folder at a time and rows go out in chunks of at most CHUNK_ROWS
faces, so memory does not grow with the number of images.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from emokp_ray.data.kaggle import MAX_REPORTED_BAD, Chunk, ReadReport
from emokp_ray.data.prepare import ImageOpener, PrepareResult, prepare_dataset
from emokp_ray.errors import UserError
from emokp_ray.inference.label_inputs import IMAGE_EXTENSIONS, ListingCounts, _walk
from emokp_ray.labels import CUSTOM_PREFIX, EMOTION_NAMES, FER7, KEYPOINT_COLUMNS, EmotionScheme

CHUNK_ROWS = 1024  # faces per chunk handed to the writer (per image size)
CROP_SIZE = 96  # side of the crops cut from photos (the keypoint network's input; emotion resizes)
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
# folder name (lower case) -> the one emotion name (labels.EMOTION_NAMES)
EMOTION_SYNONYMS: dict[str, str] = {
    **{name: name for name in EMOTION_NAMES},
    "angry": "anger",
    "mad": "anger",
    "disgusted": "disgust",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "happy": "happiness",
    "joy": "happiness",
    "sadness": "sad",
    "unhappy": "sad",
    "surprised": "surprise",
    "calm": "neutral",
    **{str(i): name for i, name in enumerate(FER7.classes)},  # FER's label numbers as folder names
}
LISTING_SUFFIXES = (".csv", ".csv.gz", ".parquet")
PATH_COLUMN = "path"


def _normalized(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def class_name_of(folder: str) -> str:
    """A folder's name as a class name: lower case, its synonym's one name where it has one."""
    key = _normalized(folder)
    return EMOTION_SYNONYMS.get(key, key)


def _image_extensions() -> tuple[str, ...]:
    return IMAGE_EXTENSIONS


def _scheme_words(scheme: EmotionScheme) -> str:
    return "the --classes given" if scheme.name.startswith(CUSTOM_PREFIX) else f"scheme {scheme.name}"


def _inode(folder: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ImageReport(ReadReport):
    """A ReadReport whose rows are image files (or listing rows), numbered from 1 in reading order."""

    def __str__(self) -> str:
        unit = "images" if self.format == "image folders" else "rows"
        text = f"{self.path} ({self.format}): {self.rows_read:,} {unit} read, {self.rows_kept:,} kept, {self.bad_rows:,} bad"
        for _, reason in self.first_bad:
            text += f"\n  {reason}"
        if self.bad_rows > len(self.first_bad):
            text += f"\n  ... and {self.bad_rows - len(self.first_bad):,} more"
        return text


@dataclass(frozen=True)
class InputFormat:
    """What prepare_dataset needs of an input's format (as kaggle.KaggleFormat)."""

    name: str
    task: str


class _Faces:
    """Image file -> one grey face crop (and the crop -> image map for keypoints), as the predictor frames it."""

    def __init__(self, task: str, mode: str, detector: Any, detector_name: str):
        self.task, self.mode = task, mode
        self._detector, self._detector_name = detector, detector_name

    def _detect(self, image: np.ndarray) -> list:
        if self._detector is None:  # only when a photo comes: OpenCV is an optional extra
            from emokp_ray.inference.detect import make_detector

            self._detector = make_detector(self._detector_name)
        return self._detector.detect(image)

    def crop(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """(grey crop uint8 [S, S] or the whole crop image, crop -> image map float64 [2, 3]);
        a `UserError` (one line) where the file is no image or shows no face."""
        from emokp_ray.inference.images import load_image_file, to_grey
        from emokp_ray.inference.predictor import prepare_faces
        from emokp_ray.inference.results import is_face_crop

        image = load_image_file(path)
        height, width = image.shape[:2]
        if is_face_crop(self.mode, height, width):  # a face crop: as it is
            return to_grey(image), np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        faces = prepare_faces([image], {self.task: CROP_SIZE}, "detect", self._detect)
        if not faces.counts[0]:
            raise UserError(f"no face found in the {width}x{height} image")
        # detectors answer largest face first; the keypoint map is the keypoint network's framing
        return faces.crops[self.task][0], faces.keypoint_maps[0]


@dataclass
class _Rows:
    """Kept faces waiting to be written, grouped by image size (a table holds one size)."""

    by_size: dict[tuple[int, int], dict[str, list]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(rows["image"]) for rows in self.by_size.values())

    def add(self, image: np.ndarray, split: str, row_id: int, label: int, keypoints: np.ndarray | None) -> int:
        """Queue one face; returns the faces now queued at its size."""
        rows = self.by_size.setdefault(image.shape, {"image": [], "split": [], "row": [], "label": [], "kp": []})
        rows["image"].append(image)
        rows["split"].append(split)
        rows["row"].append(row_id)
        rows["label"].append(label)
        rows["kp"].append(keypoints)
        return len(rows["image"])

    def take(self, size: tuple[int, int] | None = None) -> Iterator[tuple[Chunk, np.ndarray]]:
        for key in [size] if size is not None else list(self.by_size):
            rows = self.by_size.pop(key, None)
            if not rows or not rows["image"]:
                continue
            keypoints = None if rows["kp"][0] is None else np.stack(rows["kp"]).astype(np.float32)
            chunk = Chunk(
                images=np.stack(rows["image"]),
                keypoints=keypoints,
                labels=None if keypoints is not None else np.asarray(rows["label"], np.int64),
                usage=None,
                image_ids=None,
                row_ids=np.asarray(rows["row"], np.int64),
            )
            yield chunk, np.asarray(rows["split"], dtype=object)


class _ImageInput:
    """The reader interface prepare_dataset uses: path, format, report, and `pairs(splitter)`."""

    path: Path
    format: InputFormat
    report: ReadReport
    strict: bool

    def _bad(self, row_id: int, where: str, reason: str) -> None:
        if self.strict:
            raise UserError(f"{where}: {reason}")
        self.report.bad_rows += 1
        if len(self.report.first_bad) < MAX_REPORTED_BAD:
            self.report.first_bad.append((row_id, f"{where}: {reason}"))


# ----------------------------------------------------------------------------- emotion folders


class ImageFolderReader(_ImageInput):
    """Class-named folders of face images (module docstring) -> (Chunk, splits) pairs, streamed."""

    def __init__(
        self,
        root: str | Path,
        scheme: EmotionScheme,
        strict: bool = False,
        mode: str = "auto",
        detector: Any = None,
        detector_name: str = "mtcnn",
    ):
        self.path = Path(root)
        self.scheme, self.strict = scheme, strict
        self.format = InputFormat("image folders", "emotion")
        self.report = ImageReport(path=str(self.path), format=self.format.name, scheme=scheme.name)
        self.faces = _Faces("emotion", mode, detector, detector_name)
        self.skipped_files = 0  # files without an image extension
        self.empty_folders: list[str] = []  # class folders without an image
        self.listing = ListingCounts()  # skipped_links: folder links not followed (loops, folders walked already)
        self.class_folders = self._class_folders()  # (path, split or None, class index); checks every name first

    def _subfolders(self, folder: Path) -> list[Path]:
        try:
            return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as err:
            raise UserError(f"cannot list {folder}: {err.strerror or err}") from None

    def _class_folders(self) -> list[tuple[Path, str | None, int]]:
        top = self._subfolders(self.path)
        splits = [p for p in top if _normalized(p.name) in SPLIT_FOLDERS]
        if splits and len(splits) != len(top):
            others = ", ".join(p.name for p in top if p not in splits)
            raise UserError(
                f"{self.path} mixes split folders ({', '.join(p.name for p in splits)}) with other folders ({others}); "
                "use either ROOT/<split>/<class>/ or ROOT/<class>/"
            )
        groups = [(p, SPLIT_FOLDERS[_normalized(p.name)]) for p in splits] if splits else [(self.path, None)]
        out: list[tuple[Path, str | None, int]] = []
        unknown: list[str] = []
        classes = {name: i for i, name in enumerate(self.scheme.classes)}
        for folder, split in groups:
            for sub in self._subfolders(folder):
                key = _normalized(sub.name)
                index = classes.get(key, classes.get(class_name_of(sub.name)))
                if index is None:
                    unknown.append(str(sub.relative_to(self.path)))
                else:
                    out.append((sub, split, index))
        if unknown:
            raise UserError(
                f"{self.path}: folder(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} name no class of "
                f"{_scheme_words(self.scheme)} (known: {', '.join(self.scheme.classes)}; synonyms such as happy, angry, "
                "sadness count); rename them, choose --scheme, or declare your classes with --classes a,b,c"
            )
        if not out:
            raise UserError(
                f"{self.path} has no class folders: expected ROOT/<class>/images or ROOT/<split>/<class>/images "
                f"(classes: {', '.join(self.scheme.classes)})"
            )
        return out

    def _files(self, folder: Path) -> Iterator[str]:
        extensions = _image_extensions()
        # a link inside one class folder into ROOT, a split folder or another class folder is not
        # followed (that folder is walked as itself, or is an ancestor: a loop)
        visited = {_inode(p) for p in [self.path, *{f.parent for f, _, _ in self.class_folders}]}
        visited |= {_inode(f) for f, _, _ in self.class_folders if f != folder}
        visited.discard(None)
        walk = _walk(
            pafs.LocalFileSystem(),
            str(folder),
            lambda parts: not parts[-1].startswith("."),
            counts=self.listing,
            visited=visited,  # type: ignore[arg-type]
        )
        for path, relative, _size in walk:
            if any(part.startswith(".") for part in PurePosixPath(relative).parts):
                continue
            if path.lower().endswith(extensions):
                yield path
            else:
                self.skipped_files += 1

    def pairs(self, splitter: Any) -> Iterator[tuple[Chunk, np.ndarray]]:
        """(Chunk, splits) per CHUNK_ROWS faces of one size; splits from the folders or `splitter`."""
        rows = _Rows()
        source = self.path.name
        for folder, split, label in self.class_folders:
            found = 0
            for path in self._files(folder):
                found += 1
                self.report.rows_read += 1
                row_id = self.report.rows_read
                where = os.path.relpath(path, self.path)
                try:
                    crop, _ = self.faces.crop(path)
                except UserError as err:
                    self._bad(row_id, where, str(err).replace(f"{path}: ", ""))
                    continue
                self.report.rows_kept += 1
                row_split = split if split is not None else str(splitter.assign(source, np.array([label]))[0])
                if rows.add(crop, row_split, row_id, label, None) >= CHUNK_ROWS:
                    yield from rows.take(crop.shape)
                elif rows.total >= 4 * CHUNK_ROWS:  # crops of many sizes: flush them all, memory stays bounded
                    yield from rows.take()
            if not found:
                self.empty_folders.append(str(folder.relative_to(self.path)))
        yield from rows.take()
        if self.report.rows_read == 0:
            raise UserError(
                f"{self.path} holds no image files in its class folders "
                f"({self.skipped_files} other files skipped; images: {', '.join(_image_extensions())})"
            )

    def notes(self) -> list[str]:
        out = []
        if self.empty_folders:
            out.append(f"class folders without images: {', '.join(self.empty_folders)}")
        if self.skipped_files:
            out.append(f"{self.skipped_files:,} file(s) without an image extension skipped")
        if self.listing.skipped_links:
            out.append(f"{self.listing.skipped_links:,} folder link(s) not followed (a loop, or a folder read already)")
        return out


# ----------------------------------------------------------------------------- keypoint listings


def is_listing(path: Path) -> bool:
    """A keypoint listing: a Parquet file, or a CSV whose header has a `path` column."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return True
    if not name.endswith((".csv", ".csv.gz")) or not path.is_file():
        return False
    try:
        with _open_text(path) as stream:
            header = next(csv.reader(stream), [])
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile):
        return False
    return PATH_COLUMN in [h.strip() for h in header]


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


class KeypointListingReader(_ImageInput):
    """A listing of images with their 30 keypoint coordinates -> (Chunk, splits) pairs, streamed."""

    def __init__(
        self,
        path: str | Path,
        strict: bool = False,
        mode: str = "auto",
        detector: Any = None,
        detector_name: str = "mtcnn",
    ):
        self.path = Path(path)
        self.strict = strict
        self.format = InputFormat("keypoint listing", "keypoints")
        self.report = ImageReport(path=str(self.path), format=self.format.name, scheme="")
        self.faces = _Faces("keypoints", mode, detector, detector_name)
        self.columns = self._columns()

    def _columns(self) -> list[str]:
        if self.path.name.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                columns = pq.ParquetFile(self.path).schema_arrow.names
            except (OSError, ValueError) as err:
                raise UserError(f"{self.path} is not a readable Parquet file ({str(err).splitlines()[0]})") from None
        else:
            with _open_text(self.path) as stream:
                columns = [h.strip() for h in next(csv.reader(stream), [])]
        missing = [c for c in (PATH_COLUMN, *KEYPOINT_COLUMNS) if c not in columns]
        if missing:
            raise UserError(
                f"{self.path}: a keypoint listing needs a `{PATH_COLUMN}` column and Kaggle's 30 keypoint columns; "
                f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
            )
        return columns

    def _records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(row id, record): CSV file lines (header = 1), Parquet rows from 1, one batch at a time."""
        if self.path.name.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            row = 0
            for batch in pq.ParquetFile(self.path).iter_batches(
                batch_size=CHUNK_ROWS, columns=[PATH_COLUMN, *KEYPOINT_COLUMNS]
            ):
                for record in batch.to_pylist():
                    row += 1
                    yield row, record
            return
        with _open_text(self.path) as stream:
            reader = csv.DictReader(stream)
            for record in reader:
                yield reader.line_num, record

    def _keypoints(self, record: dict[str, Any]) -> np.ndarray:
        values = []
        for column in KEYPOINT_COLUMNS:
            value = record.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                values.append(np.nan)
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise UserError(f"{column} is not a number ({str(value)[:20]!r})") from None
            if not np.isfinite(number):
                raise UserError(f"{column} is not a finite number ({value!r})")
            values.append(number)
        points = np.asarray(values, np.float64)
        if np.isnan(points).all():
            raise UserError("no keypoint given")
        return points

    def pairs(self, splitter: Any) -> Iterator[tuple[Chunk, np.ndarray]]:
        rows = _Rows()
        source = self.path.name
        base = self.path.resolve().parent
        for row_id, record in self._records():
            self.report.rows_read += 1
            raw_path = str(record.get(PATH_COLUMN) or "").strip()
            where = raw_path or "(empty path)"
            try:
                if not raw_path:
                    raise UserError("the path cell is empty")
                points = self._keypoints(record)
                image_path = Path(raw_path) if os.path.isabs(raw_path) else base / raw_path
                crop, crop_to_image = self.faces.crop(str(image_path))
                on_crop = _into_crop(points, crop_to_image)
                size = crop.shape[0]
                present = ~np.isnan(on_crop)
                if ((on_crop[present] < -0.5) | (on_crop[present] > size - 0.5)).any():
                    raise UserError("a keypoint lies outside the face crop")
            except UserError as err:
                self._bad(
                    row_id,
                    f"line {row_id} ({where})",
                    str(err).replace(f"{image_path}: ", "") if raw_path else str(err),
                )
                continue
            self.report.rows_kept += 1
            stratum = int(present.all())  # complete / partial rows, as for Kaggle files
            row_split = str(splitter.assign(source, np.array([stratum]))[0])
            if rows.add(crop, row_split, row_id, -1, on_crop.astype(np.float32)) >= CHUNK_ROWS:
                yield from rows.take(crop.shape)
            elif rows.total >= 4 * CHUNK_ROWS:
                yield from rows.take()
        yield from rows.take()
        if self.report.rows_read == 0:
            raise UserError(f"{self.path} has a header but no data rows")

    def notes(self) -> list[str]:
        return []


def _into_crop(points: np.ndarray, crop_to_image: np.ndarray) -> np.ndarray:
    """Image pixels [30] (x, y per point, NaN = missing) -> crop pixels through the inverse of the
    crop -> image affine map [2, 3] (pixel centres on both sides)."""
    linear, offset = crop_to_image[:, :2], crop_to_image[:, 2]
    xy = points.reshape(-1, 2)
    out = (np.linalg.inv(linear) @ (xy - offset).T).T
    return out.reshape(-1)


def image_opener(detect_mode: str = "auto", detector: Any = None, detector_name: str = "mtcnn") -> ImageOpener:
    """data.prepare's `open_images`: a class-named image folder (emotion) or a keypoint listing (CSV or
    Parquet with a `path` column) as a reader; None for any other input. detect_mode ("auto" | "crop"
    | "detect", the predictor's modes) says which images are face crops; detector (an object with
    `.detect(image)`; default `make_detector(detector_name)`, made at the first photo) finds the
    faces in the others."""

    def open_images(location: Path, emotion: EmotionScheme, strict: bool) -> Any:
        if location.is_dir():
            return ImageFolderReader(location, emotion, strict, detect_mode, detector, detector_name)
        if is_listing(location):
            return KeypointListingReader(location, strict, detect_mode, detector, detector_name)
        return None

    return open_images


def prepare_images(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    detect_mode: str = "auto",
    detector: Any = None,
    detector_name: str = "mtcnn",
    **options: Any,
) -> PrepareResult:
    """`prepare_dataset` (data/prepare.py: its options) with image folders and keypoint listings
    among the inputs, read through the predictor's face pipeline (`image_opener`); what
    `emokp data prepare` runs."""
    return prepare_dataset(inputs, out_dir, open_images=image_opener(detect_mode, detector, detector_name), **options)
