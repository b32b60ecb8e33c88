"""The stages of a labeling run, as plain functions and classes over Arrow tables (Ray Data calls
them; tests and the plain loop call them directly). One row per INPUT image through A and B:

    A  prepare_block  (Ray Data tasks, CPU)   work rows -> read + decode + detect (unless a listing
                                              row gives its boxes) + crop:
                                              PREPARED rows (source, error, size, boxes, one crop per
                                              face and network, each face's keypoint-crop -> image
                                              map, detector scores and landmarks; the pixels when
                                              annotating)
    B  FaceNetworks   (an actor pool, GPU or CPU: the models are loaded ONCE per actor)
                                              PREPARED rows -> OUTPUT_SCHEMA rows, one per face
    C  write_block    (Ray Data tasks)        OUTPUT rows -> a part file in OUT (+ JSONL part, PNGs);
                                              returns one small row of counts (all the driver gets)

`BatchLabeler` is A and B in one actor (the single-stage pipeline, for comparison). A bad file is an
error ROW, never a failed job: each image is prepared on its own, and a failed model batch is
retried image by image so only the image at fault becomes an error row.

Why split A from B: on photos, face detection costs far more than the networks (Haar 81 ms on a
759x500 photo, 353 ms on 3648x2406, against about 20 ms for both networks per face on CPU, well
under 1 ms on a GPU); in one actor the GPU waits for the detector. Split, each stage gets its own
resources and Ray Data's streaming backpressure balances them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from emokp_ray.errors import UserError
from emokp_ray.inference.label_inputs import DANGLING
from emokp_ray.inference.label_output import (
    annotation_name,
    output_table,
    part_name,
    source_hashes,
    write_part,
    write_png,
)
from emokp_ray.labels import KEYPOINT_NAMES

MAX_FILE_BYTES = 256 * 2**20  # larger files are error rows, never read into a task


def _one_line(err: BaseException, source: str) -> str:
    """An error as one line that names its source (UserErrors already do)."""
    text = (str(err).splitlines() or [""])[0]
    if not isinstance(err, UserError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if source in text else f"{source}: {text}"


def work_sources(batch: pa.Table) -> list[str]:
    """The output `source` of each work row (a data set's rows: `split/source:row_id=N`)."""
    if "row_id" in batch.column_names:
        return [
            f"{split}/{src}:row_id={rid}"
            for split, src, rid in zip(
                batch["split"].to_pylist(), batch["source"].to_pylist(), batch["row_id"].to_pylist()
            )
        ]
    return batch["source"].to_pylist()


def load_batch(
    batch: pa.Table, filesystem: pafs.FileSystem | None
) -> tuple[list[str], list[np.ndarray | None], list[str | None]]:
    """Work rows -> (sources, images, errors). Files are read and decoded here (an unreadable file
    gets an error and no image); crop rows become uint8 [H, W] arrays."""
    from emokp_ray.inference.images import decode_image

    n = batch.num_rows
    sources = work_sources(batch)
    images: list[np.ndarray | None] = [None] * n
    errors: list[str | None] = [None] * n
    known = batch["error"].to_pylist() if "error" in batch.column_names else [None] * n  # bad listing/CSV rows
    if "path" in batch.column_names:
        if filesystem is None:
            raise ValueError("work rows of files need the filesystem they are on")
        for i, (path, size) in enumerate(zip(batch["path"].to_pylist(), batch["size"].to_pylist())):
            if known[i] is not None:
                errors[i] = known[i]
                continue
            try:
                if size == DANGLING:
                    raise UserError(f"{sources[i]}: a symbolic link whose target does not exist")
                if size < 0:  # a listing's row: the size is read here, not on the driver
                    info = filesystem.get_file_info(path)
                    if info.type != pafs.FileType.File:
                        raise UserError(f"{sources[i]}: no such file ({path})")
                    size = info.size
                if size > MAX_FILE_BYTES:
                    raise UserError(f"{sources[i]}: file of {size:,} bytes is larger than {MAX_FILE_BYTES:,}")
                with filesystem.open_input_stream(path) as f:
                    images[i] = decode_image(f.read(), source=sources[i])
            except Exception as err:
                errors[i] = _one_line(err, sources[i])
        return sources, images, errors
    for i, (data, h, w) in enumerate(
        zip(batch["image"].to_pylist(), batch["height"].to_pylist(), batch["width"].to_pylist())
    ):
        if known[i] is not None:
            errors[i] = known[i]
        elif len(data) == h * w and h > 0 and w > 0:
            images[i] = np.frombuffer(data, np.uint8).reshape(h, w)
        else:
            errors[i] = f"{sources[i]}: {len(data)} pixel bytes do not make a {h}x{w} image"
    return sources, images, errors


# ----------------------------------------------------------------------------- A: read, decode, detect, crop


def prepared_schema(inputs: dict[str, int], pixels: bool) -> pa.Schema:
    fields = [
        ("source", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("boxes", pa.list_(pa.float64())),  # 4 per face: x, y, w, h (image pixels)
        ("keypoint_maps", pa.list_(pa.float64())),  # 6 per face: the 2x3 keypoint crop -> image map
        ("scores", pa.list_(pa.float64())),  # 1 per face, NaN without one
        ("landmarks", pa.list_(pa.float64())),  # 10 per face, NaN without them
    ]
    fields += [(f"crops_{task}", pa.binary()) for task in sorted(inputs)]  # uint8 [faces, S, S], row-major
    if pixels:
        fields += [("pixels", pa.binary()), ("channels", pa.int8())]  # the decoded image, for annotation
    return pa.schema(fields)


@functools.lru_cache(maxsize=2)
def _named_detector(name: str, threshold: float | None) -> Any:
    """The detector of this worker process. OpenCV's thread pool (pthreads) ignores OMP_NUM_THREADS,
    which Ray sets to the task's CPUs: without this, cv2.dnn and the cascade would use every core of
    the node from a task that reserved one."""
    import os

    from emokp_ray.inference.detect import make_detector

    detector = make_detector(name, threshold)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import cv2

        cv2.setNumThreads(int(threads))
    return detector


def _detect_with(detector: Any, threshold: float | None = None):
    """image -> Detections: the caller's detector object, or the named one ("mtcnn", "haar"; None:
    the default), built once per worker process on first use (without OpenCV each photo to search
    becomes an error row saying how to install it)."""
    from emokp_ray.inference.detect import DEFAULT_DETECTOR

    def detect(image: np.ndarray) -> list:
        if detector is None or isinstance(detector, str):
            return _named_detector(detector or DEFAULT_DETECTOR, threshold).detect(image)
        return detector.detect(image)

    return detect


def _done_filter(batch: pa.Table, sources: list[str], done: Any) -> tuple[pa.Table, list[str]]:
    """Drop the rows already written by an earlier run (done: sorted uint64 source hashes, or an
    ObjectRef to them)."""
    if done is None:
        return batch, sources
    if not isinstance(done, np.ndarray):
        import ray

        done = ray.get(done)
    if len(done) == 0 or not sources:
        return batch, sources
    hashes = source_hashes(sources)
    at = np.minimum(np.searchsorted(done, hashes), len(done) - 1)
    keep = done[at] != hashes
    if keep.all():
        return batch, sources
    return batch.filter(pa.array(keep)), [s for s, k in zip(sources, keep) if k]


def prepare_block(
    batch: pa.Table,
    *,
    filesystem: pafs.FileSystem | None,
    inputs: dict[str, int],
    mode: str,
    detector: Any = None,
    detector_threshold: float | None = None,
    pixels: bool = False,
    done: Any = None,
    margin: float | None = None,
    shift_y: float | None = None,
) -> pa.Table:
    """Stage A: work rows -> PREPARED rows, one per image not yet written (see the module docstring)."""
    from emokp_ray.inference import predictor as P

    batch, _ = _done_filter(batch, work_sources(batch), done)
    sources, images, errors = load_batch(batch, filesystem)
    # A listing's boxes (label_inputs.py): JSON text, checked there; null = detect.
    given = batch["boxes"].to_pylist() if "boxes" in batch.column_names else [None] * batch.num_rows
    detect = _detect_with(detector, detector_threshold)
    schema = prepared_schema(inputs, pixels)
    cols: dict[str, list] = {name: [] for name in schema.names}
    for source, image, error, boxes in zip(sources, images, errors, given):
        prepared = None
        if image is not None:
            try:
                prepared = P.prepare_faces(
                    [image],
                    inputs,
                    mode,
                    detect,
                    boxes=None if boxes is None else [json.loads(boxes)],
                    margin=margin or P.FRAMING_MARGIN,
                    shift_y=P.FRAMING_SHIFT_Y if shift_y is None else shift_y,
                )
            except Exception as err:
                error = _one_line(err, source)
        cols["source"].append(source)
        cols["error"].append(error if prepared is None else None)
        cols["width"].append(prepared.sizes[0][0] if prepared else None)
        cols["height"].append(prepared.sizes[0][1] if prepared else None)
        cols["boxes"].append(prepared.boxes.reshape(-1).tolist() if prepared else None)
        cols["keypoint_maps"].append(prepared.keypoint_maps.reshape(-1).tolist() if prepared else None)
        cols["scores"].append(prepared.scores.tolist() if prepared else None)
        cols["landmarks"].append(prepared.landmarks.reshape(-1).tolist() if prepared else None)
        for task in inputs:
            cols[f"crops_{task}"].append(prepared.crops[task].tobytes() if prepared else None)
        if pixels:
            kept = image if prepared else None
            cols["pixels"].append(None if kept is None else np.ascontiguousarray(kept).tobytes())
            cols["channels"].append(None if kept is None else (1 if kept.ndim == 2 else kept.shape[2]))
    return pa.Table.from_pydict(cols, schema=schema)


# ----------------------------------------------------------------------------- B: the networks


def load_predictor(
    keypoints: str | None,
    emotion: str | None,
    device: str = "cpu",
    trust_torchscript: bool = False,
    backend: str = "auto",
):
    """The one place a labeling run builds its Predictor (the driver's check and every stage-B actor):
    models only, no detector (detection runs in stage A)."""
    from emokp_ray.inference.predictor import Predictor

    kwargs: dict[str, Any] = {"trust_torchscript": True} if trust_torchscript else {}
    return Predictor.from_paths(keypoints, emotion, device=device, detect=False, backend=backend, **kwargs)


class FaceNetworks:
    """Stage B, the Ray Data actor: load the Predictor once, then PREPARED rows -> OUTPUT_SCHEMA rows
    (plus the pixels on each image's first row when annotating), `batch_size` images per model batch."""

    def __init__(
        self,
        keypoints: str | None,
        emotion: str | None,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int = 32,
        trust_torchscript: bool = False,
        backend: str = "auto",
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.predictor = load_predictor(
            keypoints, emotion, device=device, trust_torchscript=trust_torchscript, backend=backend
        )
        self.class_names = list(self.predictor.labels().get("emotion") or [])
        self.inputs = {
            m.meta.task: m.meta.input_size for m in (self.predictor.keypoints, self.predictor.emotion) if m is not None
        }
        self.batch_size = batch_size

    def __call__(self, prepared: pa.Table) -> pa.Table:
        chunks = [
            self._chunk(prepared.slice(lo, self.batch_size)) for lo in range(0, prepared.num_rows, self.batch_size)
        ]
        return pa.concat_tables(chunks) if chunks else self._chunk(prepared)

    def _faces(self, rows: list[int], faces: dict[str, list], crops: dict[str, list], sizes: list) -> Any:
        from emokp_ray.inference.predictor import PreparedFaces

        def joined(name: str, shape: tuple[int, ...]) -> np.ndarray:
            return np.asarray([v for i in rows for v in faces[name][i]], np.float64).reshape(-1, *shape)

        prepared = PreparedFaces(
            # bytearray: one writable copy (torch.from_numpy wants a writable buffer)
            crops={
                t: np.frombuffer(bytearray(b"".join(crops[t][i] for i in rows)), np.uint8).reshape(-1, s, s)
                for t, s in self.inputs.items()
            },
            boxes=joined("boxes", (4,)),
            counts=[len(faces["boxes"][i]) // 4 for i in rows],
            sizes=[sizes[i] for i in rows],
            keypoint_maps=joined("keypoint_maps", (2, 3)),
            scores=joined("scores", ()),
            landmarks=joined("landmarks", (5, 2)),
        )
        return self.predictor.predict_prepared(prepared)

    def _chunk(self, batch: pa.Table) -> pa.Table:
        sources, errors = batch["source"].to_pylist(), batch["error"].to_pylist()
        faces = {name: batch[name].to_pylist() for name in ("boxes", "keypoint_maps", "scores", "landmarks")}
        crops = {t: batch[f"crops_{t}"].to_pylist() for t in self.inputs}
        sizes = [None if w is None else (w, h) for w, h in zip(batch["width"].to_pylist(), batch["height"].to_pylist())]
        results: list[Any] = [None] * len(sources)
        todo = [i for i, e in enumerate(errors) if e is None]
        if todo:
            try:
                for i, result in zip(todo, self._faces(todo, faces, crops, sizes)):
                    results[i] = result
            except Exception:
                for i in todo:
                    try:
                        results[i] = self._faces([i], faces, crops, sizes)[0]
                    except Exception as err:
                        errors[i] = _one_line(err, sources[i])
        table = output_table(sources, sizes, results, errors, self.class_names)
        if "pixels" in batch.column_names:  # carried on each image's first row, for stage C's PNGs
            first = np.cumsum(
                [0]
                + [max(1, len(r.faces)) if r is not None and errors[i] is None else 1 for i, r in enumerate(results)]
            )[:-1]
            pixels, channels = [None] * table.num_rows, [None] * table.num_rows
            for i, row in enumerate(first.tolist()):
                if results[i] is not None and errors[i] is None:
                    pixels[row], channels[row] = batch["pixels"][i].as_py(), batch["channels"][i].as_py()
            table = table.append_column("pixels", pa.array(pixels, pa.binary())).append_column(
                "channels", pa.array(channels, pa.int8())
            )
        return table


class BatchLabeler:
    """Stages A and B in one actor (the single-stage pipeline): work rows -> OUTPUT_SCHEMA rows.
    Plain Python (usable without Ray): `BatchLabeler(...)(table) -> table`."""

    def __init__(
        self,
        keypoints: str | None,
        emotion: str | None,
        mode: str = "auto",
        device: str = "cpu",
        filesystem: pafs.FileSystem | None = None,
        pixels: bool = False,
        threads: int | None = None,
        detector: Any = None,
        detector_threshold: float | None = None,
        batch_size: int = 32,
        done: Any = None,
        trust_torchscript: bool = False,
        backend: str = "auto",
    ):
        self.networks = FaceNetworks(
            keypoints,
            emotion,
            device=device,
            threads=threads,
            batch_size=batch_size,
            trust_torchscript=trust_torchscript,
            backend=backend,
        )
        self.prepare = functools.partial(
            prepare_block,
            filesystem=filesystem,
            inputs=self.networks.inputs,
            mode=mode,
            detector=detector,
            detector_threshold=detector_threshold,
            pixels=pixels,
            done=done,
        )
        self.batch_size = batch_size

    def __call__(self, rows: pa.Table) -> pa.Table:
        chunks = [
            self.networks(self.prepare(rows.slice(lo, self.batch_size)))
            for lo in range(0, rows.num_rows, self.batch_size)
        ]
        return pa.concat_tables(chunks) if chunks else self.networks(self.prepare(rows))


# ----------------------------------------------------------------------------- C: write

COUNTS_SCHEMA = pa.schema(
    [("part", pa.string()), ("images", pa.int64()), ("faces", pa.int64()), ("errors", pa.int64())]
)


def _faces_of(rows: list[dict], class_names: list[str]):
    from emokp_ray.inference.results import Face, ImageResult

    faces = []
    for row in rows:
        if row["status"] != "ok":
            continue
        kp = row["keypoints"]
        faces.append(
            Face(
                box=tuple(row["box"]),
                keypoints=None if kp is None else {n: (kp[2 * i], kp[2 * i + 1]) for i, n in enumerate(KEYPOINT_NAMES)},
                emotion=row["emotion"],
                probabilities=None if row["probabilities"] is None else dict(zip(class_names, row["probabilities"])),
            )
        )
    return ImageResult(width=rows[0]["width"], height=rows[0]["height"], faces=faces)


def write_block(
    rows: pa.Table,
    *,
    filesystem: pafs.FileSystem,
    out: str,
    schema: pa.Schema,
    jsonl: bool = False,
    annotate_fs: pafs.FileSystem | None = None,
    annotate_dir: str | None = None,
    class_names: Sequence[str] = (),
) -> pa.Table:
    """Stage C: a block's OUTPUT rows -> annotated PNGs (where asked), then the JSONL and Parquet
    parts in OUT (label_output.py says why in that order); returns one COUNTS_SCHEMA row."""
    if rows.num_rows == 0:
        return COUNTS_SCHEMA.empty_table()
    if "pixels" in rows.column_names:
        if annotate_dir is not None:
            _annotate(rows, annotate_fs, annotate_dir, list(class_names))
        rows = rows.drop_columns(["pixels", "channels"])
    table = rows.cast(schema)
    face_index, status = table["face_index"].to_numpy(), table["status"].to_numpy(zero_copy_only=False)
    sources = table["source"].to_pylist()
    first = face_index <= 0
    name = part_name([s for s, f in zip(sources, first) if f])
    write_part(filesystem, out, name, table, jsonl)
    return pa.Table.from_pydict(
        {
            "part": [name],
            "images": [int(first.sum())],
            "faces": [int((status == "ok").sum())],
            "errors": [int((status == "error").sum())],
        },
        schema=COUNTS_SCHEMA,
    )


def _annotate(rows: pa.Table, fs: pafs.FileSystem, folder: str, class_names: list[str]) -> None:
    from PIL import Image  # noqa: F401 - render needs it

    from emokp_ray.inference.render import annotate

    records = rows.drop_columns(["pixels", "channels"]).to_pylist()
    pixels, channels = rows["pixels"].to_pylist(), rows["channels"].to_pylist()
    by_source: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_source.setdefault(record["source"], []).append(i)
    for source, indices in by_source.items():
        data = next((pixels[i] for i in indices if pixels[i] is not None), None)
        if data is None:
            continue
        first = records[indices[0]]
        c = next(channels[i] for i in indices if pixels[i] is not None)
        image = np.frombuffer(data, np.uint8).reshape((first["height"], first["width"]) + (() if c == 1 else (c,)))
        write_png(
            fs,
            f"{folder}/{annotation_name(source)}",
            annotate(image, _faces_of([records[i] for i in indices], class_names)),
        )
