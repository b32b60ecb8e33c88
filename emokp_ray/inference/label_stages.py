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

A video's work row is a frame range (label_inputs.FrameRange): stage A decodes its sampled frames one
at a time (inference/video.py) and makes one PREPARED row per frame (frame_index, timestamp,
range_start), which B and C treat like images. With --annotate, a frame's pixels are NOT carried
through the stages (a range of 1080p frames is hundreds of MB): its rows carry the video's path and
range instead, and C decodes the range again to draw it into an MP4 segment (`video_segment_name`).

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
    input_keys,
    output_table,
    part_name,
    source_hashes,
    table_keys,
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


def work_keys(batch: pa.Table) -> list[str]:
    """The input key (label_output.input_keys) of each work row: what a resume compares."""
    starts = batch["range_start"].to_pylist() if "range_start" in batch.column_names else None
    return input_keys(work_sources(batch), starts)


def load_batch(
    batch: pa.Table, filesystem: pafs.FileSystem | None
) -> tuple[list[str], list[np.ndarray | None], list[str | None]]:
    """Work rows -> (sources, images, errors). Files are read and decoded here (an unreadable file
    gets an error and no image); crop rows become uint8 [H, W] arrays. A video's frame range is
    left alone (no image, no error: `_video_rows` decodes it), unless the listing gave its error."""
    from emokp_ray.inference.images import decode_image

    n = batch.num_rows
    sources = work_sources(batch)
    images: list[np.ndarray | None] = [None] * n
    errors: list[str | None] = [None] * n
    known = batch["error"].to_pylist() if "error" in batch.column_names else [None] * n  # bad listing/CSV rows
    starts = batch["range_start"].to_pylist() if "range_start" in batch.column_names else [None] * n
    if "path" in batch.column_names:
        if filesystem is None:
            raise ValueError("work rows of files need the filesystem they are on")
        for i, (path, size) in enumerate(zip(batch["path"].to_pylist(), batch["size"].to_pylist())):
            if known[i] is not None:
                errors[i] = known[i]
                continue
            if starts[i] is not None:
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
        ("frame_index", pa.int64()),  # video frames (null for images): label_output.VIDEO_COLUMNS
        ("timestamp", pa.float64()),
        ("range_start", pa.int64()),
    ]
    fields += [(f"crops_{task}", pa.binary()) for task in sorted(inputs)]  # uint8 [faces, S, S], row-major
    if pixels:
        fields += [("pixels", pa.binary()), ("channels", pa.int8())]  # the decoded image, for annotation
        fields += [("video", pa.string()), ("range_stop", pa.int64())]  # a video frame's file and range, instead
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
    hashes = source_hashes(work_keys(batch))
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
    fps: float | None = None,
) -> pa.Table:
    """Stage A: work rows -> PREPARED rows, one per image not yet written and one per sampled frame
    of each video range not yet written (fps: the sampling rate, None every frame; see the module
    docstring)."""
    from emokp_ray.inference import predictor as P

    batch, _ = _done_filter(batch, work_sources(batch), done)
    sources, images, errors = load_batch(batch, filesystem)
    # A listing's boxes (label_inputs.py): JSON text, checked there; null = detect.
    given = batch["boxes"].to_pylist() if "boxes" in batch.column_names else [None] * batch.num_rows
    n = batch.num_rows
    starts: list[Any] = batch["range_start"].to_pylist() if "range_start" in batch.column_names else [None] * n
    stops: list[Any] = batch["range_stop"].to_pylist() if "range_stop" in batch.column_names else [None] * n
    paths: list[Any] = batch["path"].to_pylist() if "path" in batch.column_names else [None] * n
    detect = _detect_with(detector, detector_threshold)
    schema = prepared_schema(inputs, pixels)
    cols: dict[str, list] = {name: [] for name in schema.names}

    def prepare(image: np.ndarray, boxes: str | None) -> Any:
        return P.prepare_faces(
            [image],
            inputs,
            mode,
            detect,
            boxes=None if boxes is None else [json.loads(boxes)],
            margin=margin or P.FRAMING_MARGIN,
            shift_y=P.FRAMING_SHIFT_Y if shift_y is None else shift_y,
        )

    def add(
        source: str, image: Any, error: str | None, prepared: Any, frame: tuple = (None, None, None), video=None
    ) -> None:
        _add_prepared(cols, inputs, pixels, source, image, error, prepared, frame, video)

    for i, (source, image, error, boxes) in enumerate(zip(sources, images, errors, given)):
        if starts[i] is not None and error is None:
            assert filesystem is not None, "video rows are files"
            video = (paths[i], stops[i])

            def add_frame(
                source: str, image: Any, error: str | None, prepared: Any, frame: tuple, video: tuple = video
            ) -> None:
                add(source, None, error, prepared, frame, video)  # pixels: decoded again by stage C

            _video_rows(filesystem, paths[i], source, starts[i], stops[i], fps, prepare, add_frame)
            continue
        prepared = None
        if image is not None:
            try:
                prepared = prepare(image, boxes)
            except Exception as err:
                error = _one_line(err, source)
        add(source, image, error, prepared, (None, None, starts[i]))
    return pa.Table.from_pydict(cols, schema=schema)


def _video_rows(
    filesystem: pafs.FileSystem,
    path: str,
    source: str,
    start: int,
    stop: int | None,
    fps: float | None,
    prepare: Any,
    add: Any,
) -> None:
    """A video's frame range -> one PREPARED row per sampled frame (decoded one at a time); a failure
    (unreadable file, corrupt data, a frame that cannot be prepared) adds one error row for the
    range after the frames before it."""
    from emokp_ray.inference.video import iter_frames

    where = source if start == 0 and stop is None else f"{source} frames {start}-{'end' if stop is None else stop - 1}"
    try:
        for frame in iter_frames(lambda: filesystem.open_input_file(path), fps, start, stop, source=source):
            try:
                prepared = prepare(frame.image, None)
            except Exception as err:
                raise UserError(f"{where}: frame {frame.index}: {_one_line(err, source)}") from None
            add(source, frame.image, None, prepared, (frame.index, frame.timestamp, start))
    except Exception as err:
        add(source, None, _one_line(err, where), None, (None, None, start))


def _add_prepared(
    cols: dict[str, list],
    inputs: dict[str, int],
    pixels: bool,
    source: str,
    image: np.ndarray | None,
    error: str | None,
    prepared: Any,
    frame: tuple,
    video: tuple[str, int | None] | None = None,
) -> None:
    """One PREPARED row: an image's or a frame's faces (prepared), or its error; video: a frame's
    (path, range_stop), kept for stage C's annotation."""
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
    for name, value in zip(("frame_index", "timestamp", "range_start"), frame):
        cols[name].append(value)
    if pixels:
        kept = image if prepared else None
        cols["pixels"].append(None if kept is None else np.ascontiguousarray(kept).tobytes())
        cols["channels"].append(None if kept is None else (1 if kept.ndim == 2 else kept.shape[2]))
        cols["video"].append(None if video is None else video[0])
        cols["range_stop"].append(None if video is None else video[1])


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
        frames = list(zip(*(batch[c].to_pylist() for c in ("frame_index", "timestamp", "range_start"))))
        table = output_table(sources, sizes, results, errors, self.class_names, frames)
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
            rows_per_input = np.diff(np.append(first, table.num_rows))
            for name in ("video", "range_stop"):  # on every row of a video frame
                table = table.append_column(name, batch[name].take(np.repeat(np.arange(len(first)), rows_per_input)))
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
        fps: float | None = None,
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
            fps=fps,
        )
        self.batch_size = batch_size

    def __call__(self, rows: pa.Table) -> pa.Table:
        chunks = [
            self.networks(self.prepare(rows.slice(lo, self.batch_size)))
            for lo in range(0, rows.num_rows, self.batch_size)
        ]
        return pa.concat_tables(chunks) if chunks else self.networks(self.prepare(rows))


# ----------------------------------------------------------------------------- C: write

# images: the inputs of a part (images and video frame ranges); frames: video frames labelled in it.
COUNTS_SCHEMA = pa.schema(
    [
        ("part", pa.string()),
        ("images", pa.int64()),
        ("frames", pa.int64()),
        ("faces", pa.int64()),
        ("errors", pa.int64()),
    ]
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
    video_fs: pafs.FileSystem | None = None,
    fps: float | None = None,
) -> pa.Table:
    """Stage C: a block's OUTPUT rows -> annotated PNGs and video segments (where asked; video_fs:
    where the videos are, fps: how they were sampled), then the JSONL and Parquet parts in OUT
    (label_output.py says why in that order); returns one COUNTS_SCHEMA row."""
    if rows.num_rows == 0:
        return COUNTS_SCHEMA.empty_table()
    if "pixels" in rows.column_names:
        if annotate_dir is not None:
            _annotate(rows, annotate_fs, annotate_dir, list(class_names), video_fs, fps)
        rows = rows.drop_columns(["pixels", "channels", "video", "range_stop"])
    table = rows.cast(schema)
    face_index, status = table["face_index"].to_numpy(), table["status"].to_numpy(zero_copy_only=False)
    first = face_index <= 0
    keys = table_keys(table)
    inputs = list(dict.fromkeys(k for k, f in zip(keys, first) if f))  # in order, each range once
    framed = table["frame_index"].is_valid().to_numpy(zero_copy_only=False)
    name = part_name(inputs)
    write_part(filesystem, out, name, table, jsonl)
    return pa.Table.from_pydict(
        {
            "part": [name],
            "images": [len(inputs)],
            "frames": [int((first & framed).sum())],
            "faces": [int((status == "ok").sum())],
            "errors": [int((status == "error").sum())],
        },
        schema=COUNTS_SCHEMA,
    )


def _annotate(
    rows: pa.Table,
    fs: pafs.FileSystem,
    folder: str,
    class_names: list[str],
    video_fs: pafs.FileSystem | None = None,
    fps: float | None = None,
) -> None:
    from PIL import Image  # noqa: F401 - render needs it

    from emokp_ray.inference.render import annotate

    records = rows.drop_columns(["pixels", "channels", "video", "range_stop"]).to_pylist()
    pixels, channels = rows["pixels"].to_pylist(), rows["channels"].to_pylist()
    videos, stops = rows["video"].to_pylist(), rows["range_stop"].to_pylist()
    by_source: dict[str, list[int]] = {}  # an image's rows
    ranges: dict[tuple[str, int], dict[int, list[int]]] = {}  # a video range's rows, by frame
    for i, record in enumerate(records):
        if videos[i] is not None and record["frame_index"] is not None:
            frames = ranges.setdefault((record["source"], record["range_start"]), {})
            frames.setdefault(record["frame_index"], []).append(i)
        elif record["range_start"] is None:
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
    for (source, range_start), frames in ranges.items():
        row = next(iter(frames.values()))[0]
        assert video_fs is not None, "video rows come with the filesystem of their videos"
        _write_segment(
            fs,
            f"{folder}/{video_segment_name(source, range_start)}",
            lambda path=videos[row]: video_fs.open_input_file(path),
            (range_start, stops[row], fps, source),
            {index: _faces_of([records[i] for i in indices], class_names) for index, indices in frames.items()},
        )


def video_segment_name(source: str, range_start: int) -> str:
    """The annotated MP4 of one frame range of a video: `a/b.mp4` -> `a/b.mp4.frames-000000300.mp4`
    (names sort in frame order; `join_video_segments` joins them into `a/b.mp4.annotated.mp4`)."""
    return f"{annotation_name(source)[: -len('.png')]}.frames-{range_start:09d}.mp4"


def _write_segment(fs: pafs.FileSystem, path: str, opener: Any, span: tuple, results: dict[int, Any]) -> None:
    """A video range decoded again (span: start, stop, fps, source), each frame with a result drawn
    and encoded -> an MP4 at the sampling rate, written whole or not at all (compressed, in memory).
    A range that no longer decodes keeps the frames drawn before (its error row says why)."""
    import io

    from emokp_ray.inference.render import annotate
    from emokp_ray.inference.video import VideoError, VideoWriter, iter_frames, output_rate, probe_video
    from emokp_ray.storage import write_file

    start, stop, fps, source = span
    buffer = io.BytesIO()
    try:
        rate = output_rate(fps, probe_video(opener, source).rate)
        with VideoWriter(buffer, rate, format="mp4") as writer:
            for frame in iter_frames(opener, fps, start, stop, source=source):
                if frame.index in results:
                    writer.write(annotate(frame.image, results[frame.index]))
    except VideoError:
        pass
    if buffer.tell():
        write_file(path, buffer.getvalue(), fs=fs)


def join_video_segments(fs: pafs.FileSystem, folder: str) -> list[str]:
    """Join each video's annotated range segments in `folder` (video_segment_name) into one
    `NAME.annotated.mp4`, in frame order, then remove the segments; returns the videos written.
    The segments are decoded and encoded again one frame at a time into a local temporary file (MP4
    needs a seekable file), which is then copied into place: never a whole video in memory."""
    import re
    import shutil
    import tempfile

    from emokp_ray.inference.video import VideoWriter, iter_frames, probe_video

    pattern = re.compile(r"^(.*)\.frames-(\d{9})\.mp4$")
    found: dict[str, list[str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True)):
        match = pattern.match(info.path) if info.type == pafs.FileType.File else None
        if match and not info.base_name.startswith("."):
            found.setdefault(match.group(1), []).append(info.path)
    written = []
    for stem, segments in sorted(found.items()):
        segments.sort()
        opener = lambda path: lambda: fs.open_input_file(path)  # noqa: E731 - one opener per segment
        rate = probe_video(opener(segments[0]), segments[0]).rate
        target = f"{stem}.annotated.mp4"
        partial = f"{target.rsplit('/', 1)[0]}/.{target.rsplit('/', 1)[1]}.partial"  # hidden until whole
        with tempfile.NamedTemporaryFile(suffix=".mp4") as local:
            with VideoWriter(local.name, rate) as writer:
                for segment in segments:
                    for frame in iter_frames(opener(segment), None, source=segment):
                        writer.write(frame.image)
            with open(local.name, "rb") as source, fs.open_output_stream(partial) as stream:
                shutil.copyfileobj(source, stream, 1 << 20)
        fs.move(partial, target)
        for segment in segments:
            fs.delete_file(segment)
        written.append(target)
    return written
