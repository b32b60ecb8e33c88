"""Batch labeling with Ray Data: image files, a prepared data set or a Kaggle CSV in; one row per face out.

    driver    resolve INPUT (label_inputs.py); load the predictor once, so a bad checkpoint fails early
    Ray Data  work rows -> map_batches(BatchLabeler): an actor pool, the Predictor loaded ONCE per actor;
              files are read and decoded in the actors, so a bad file is an error ROW, never a failed job
    driver    stream the result rows into OUT (label_output.py), count them, show progress

Rows come in completion order (sort by source for a stable one). Every input is accounted for
exactly once: the run checks the images written against the inputs listed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from emokp_ray.errors import UserError
from emokp_ray.inference.label_inputs import LabelInput, parquet_footer_readers, resolve_input, work_dataset
from emokp_ray.inference.label_output import (ANNOTATIONS_FILE, JSONL_FILE, METADATA_KEY, OUTPUT_SCHEMA, PARQUET_FILE,
                                              SUMMARY_FILE, OutputWriter, StagedFolder, annotation_name, output_table)
from emokp_ray.labels import KEYPOINT_COLUMNS, KEYPOINT_NAMES

MODES = ("auto", "crop", "detect")
MAX_FILE_BYTES = 256 * 2**20   # larger files are error rows, never read into an actor
# Rows per actor call, in model batches. Each Ray Data call costs the actor tens of milliseconds
# (scheduling, result transfer, Ray Data's bookkeeping): with one 32-image batch per call, 2 actors
# on 2 cores ran at 0.70x the plain loop once started; with 8 per call at 1.03-1.16x
# (benchmarks/label_throughput.py).
ROWS_PER_CALL_BATCHES = 8
PROGRESS_EVERY_S = 5.0


# ----------------------------------------------------------------------------- per batch (actors)

def _one_line(err: BaseException, source: str) -> str:
    """An error as one line that names its source (UserErrors already do)."""
    text = (str(err).splitlines() or [""])[0]
    if not isinstance(err, UserError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if source in text else f"{source}: {text}"


def load_batch(batch: pa.Table, filesystem: pafs.FileSystem | None) -> tuple[list[str], list[np.ndarray | None], list[str | None]]:
    """Work rows -> (sources, images, errors). Files are read and decoded here (an unreadable file
    gets an error and no image); crop rows become uint8 [H, W] arrays."""
    from emokp_ray.inference.images import decode_image

    n = batch.num_rows
    images: list[np.ndarray | None] = [None] * n
    errors: list[str | None] = [None] * n
    if "path" in batch.column_names:
        sources = batch["source"].to_pylist()
        for i, (path, size) in enumerate(zip(batch["path"].to_pylist(), batch["size"].to_pylist())):
            try:
                if size > MAX_FILE_BYTES:
                    raise UserError(f"{sources[i]}: file of {size:,} bytes is larger than {MAX_FILE_BYTES:,}")
                with filesystem.open_input_stream(path) as f:
                    images[i] = decode_image(f.read(), source=sources[i])
            except Exception as err:  # noqa: BLE001 - any failure of one file is that file's error row
                errors[i] = _one_line(err, sources[i])
        return sources, images, errors
    if "row_id" in batch.column_names:  # a prepared data set's rows
        sources = [f"{split}/{src}:row_id={rid}" for split, src, rid in
                   zip(batch["split"].to_pylist(), batch["source"].to_pylist(), batch["row_id"].to_pylist())]
    else:
        sources = batch["source"].to_pylist()
    for i, (data, h, w) in enumerate(zip(batch["image"].to_pylist(), batch["height"].to_pylist(), batch["width"].to_pylist())):
        if len(data) == h * w and h > 0 and w > 0:
            images[i] = np.frombuffer(data, np.uint8).reshape(h, w)
        else:
            errors[i] = f"{sources[i]}: {len(data)} pixel bytes do not make a {h}x{w} image"
    return sources, images, errors


class BatchLabeler:
    """The Ray Data UDF: load the Predictor once (per actor), then label batches of work rows.

    Plain Python (usable without Ray): `BatchLabeler(...)(table) -> table`. A call's rows (a Ray
    block: several model batches, so Ray's per-call cost is paid once per ROWS_PER_CALL_BATCHES
    batches) are labelled in chunks of `batch_size`; all decodable images of a chunk go through the
    predictor in ONE call; if that call fails, the chunk's images are retried one by one so only the
    one at fault becomes an error row.
    """

    def __init__(self, keypoints: str | None, emotion: str | None, mode: str = "auto", device: str = "cpu",
                 detect: bool = True, filesystem: pafs.FileSystem | None = None, annotate_dir: str | None = None,
                 threads: int | None = None, detector: Any = None, batch_size: int = 32):
        import torch

        from emokp_ray.inference.export import load_model
        from emokp_ray.inference.predictor import Predictor

        if threads:
            torch.set_num_threads(threads)
        if detector is None:
            self.predictor = Predictor.from_paths(keypoints, emotion, device=device, detect=detect)
        else:  # the caller's own detector (tests, custom detectors) instead of OpenCV's
            def load(path):
                return load_model(path, map_location=device) if path else None
            self.predictor = Predictor(load(keypoints), load(emotion), device=device, detector=detector)
        self.class_names = list(self.predictor.labels().get("emotion") or [])
        self.mode = mode
        self.filesystem = filesystem
        self.annotate_dir = Path(annotate_dir) if annotate_dir else None
        self.batch_size = batch_size

    def __call__(self, rows: pa.Table) -> pa.Table:
        return pa.concat_tables([self._label_chunk(rows.slice(lo, self.batch_size))
                                 for lo in range(0, rows.num_rows, self.batch_size)] or [self._label_chunk(rows)])

    def _label_chunk(self, batch: pa.Table) -> pa.Table:
        sources, images, errors = load_batch(batch, self.filesystem)
        results = self._predict(sources, images, errors)
        if self.annotate_dir is not None:
            self._annotate(sources, images, results)
        return output_table(sources, images, results, errors, self.class_names)

    def _predict(self, sources: list[str], images: list[np.ndarray | None], errors: list[str | None]) -> list[Any]:
        results: list[Any] = [None] * len(images)
        todo = [i for i, image in enumerate(images) if image is not None]
        if not todo:
            return results
        try:
            for i, result in zip(todo, self.predictor.predict([images[i] for i in todo], mode=self.mode)):
                results[i] = result
        except Exception:  # noqa: BLE001 - find the image at fault, keep the others
            for i in todo:
                try:
                    results[i] = self.predictor.predict([images[i]], mode=self.mode)[0]
                except Exception as err:  # noqa: BLE001
                    errors[i] = _one_line(err, sources[i])
        return results

    def _annotate(self, sources: list[str], images: list[np.ndarray | None], results: list[Any]) -> None:
        from emokp_ray.inference.render import annotate

        for source, image, result in zip(sources, images, results):
            if result is None:
                continue
            path = self.annotate_dir / annotation_name(source)
            path.parent.mkdir(parents=True, exist_ok=True)
            annotate(image, result).save(path)


@dataclass(frozen=True)
class LabelSummary:
    """What a labeling run did: counts, speed, where the output is."""

    input: str
    input_kind: str            # "images" | "dataset" | "csv"
    images: int                # inputs accounted for (one or more rows each)
    faces: int                 # rows with status ok
    no_face: int               # images without a face
    errors: int                # images that could not be read, decoded or labelled
    skipped_files: int         # files in an image folder without an image extension (not inputs)
    seconds: float             # the Ray Data run, from start to the last row written
    images_per_s: float
    startup_s: float           # until the first results came back: actors started, models loaded, one batch
    steady_images_per_s: float  # after the first results: the rate a longer run tends to
    parquet: str
    jsonl: str | None
    annotate_dir: str | None
    actors: str                # the actor pool, e.g. "2 actors x 1 CPU, 1 thread"

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        text = (f"labelled {self.images:,} images from {self.input} in {self.seconds:.1f} s: {self.faces:,} faces, "
                f"{self.no_face:,} without a face, {self.errors:,} errors")
        if self.skipped_files:
            text += f" ({self.skipped_files:,} non-image files skipped)"
        steady = f", then {self.steady_images_per_s:,.1f} images/s" if self.steady_images_per_s else ""
        text += f"\n  {self.images_per_s:,.1f} images/s ({self.startup_s:.1f} s to the first results{steady}; {self.actors})"
        outputs = [self.parquet] + [p for p in (self.jsonl,) if p]
        text += f"\n  -> {', '.join(outputs)}"
        if self.annotate_dir:
            text += f"\n  -> annotated images in {self.annotate_dir}"
        return text


# ----------------------------------------------------------------------------- the run (driver)

def _actor_range(concurrency: int | tuple[int, int]) -> tuple[int, int]:
    """(min, max) actors from an int or a (min, max) pair."""
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return concurrency, concurrency
    if (isinstance(concurrency, (tuple, list)) and len(concurrency) == 2 and all(isinstance(c, int) for c in concurrency)
            and 1 <= concurrency[0] <= concurrency[1]):
        return concurrency[0], concurrency[1]
    raise UserError(f"concurrency must be a positive integer or (min, max) with 1 <= min <= max, got {concurrency!r}")


def _auto_concurrency(asked_gpu: bool | None, num_cpus: float) -> int | tuple[int, int]:
    """Actors that fill the machine: one per GPU; on CPUs, one per `num_cpus` of this machine's cores
    (a local cluster; its logical CPUs may outnumber the cores: 2 single-thread actors on 2 cores run
    at 1.1x the plain loop, more only compete) or (1, CPUs / num_cpus) on a cluster,
    where Ray Data grows the pool as work queues up."""
    import ray

    total = ray.cluster_resources()
    if total.get("GPU", 0) >= 1 and asked_gpu is not False:
        return int(total["GPU"])
    if os.environ.get("RAY_ADDRESS"):
        return 1, max(1, int(total.get("CPU", 1) // num_cpus))
    cores = min(os.cpu_count() or 1, total.get("CPU", 1))
    return max(1, int(cores // num_cpus))


def _check_resources(asked_gpu: bool | None, min_actors: int, num_cpus: float) -> bool:
    """Whether actors get a GPU, and that the cluster can hold the smallest pool (Ray Data would wait
    for it forever). A local cluster's shortfall is an error; on a cluster (RAY_ADDRESS) an autoscaler
    may add nodes, so it is only reported."""
    import ray

    total = ray.cluster_resources()
    gpus, cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
    gpu = gpus >= 1 if asked_gpu is None else bool(asked_gpu)
    problems = []
    if gpu and min_actors > gpus:
        problems.append(f"{min_actors} actor(s) with one GPU each, but the Ray cluster has {gpus:g} GPUs")
    if min_actors * num_cpus > cpus:
        problems.append(f"{min_actors} actor(s) x {num_cpus:g} CPUs, but the Ray cluster has {cpus:g} CPUs")
    if problems:
        message = "; ".join(problems) + ": lower the concurrency" + (" or num_cpus" if not gpu else "")
        if not os.environ.get("RAY_ADDRESS"):
            raise UserError(message)
        print(f"label: waiting for the autoscaler? {message}", file=sys.stderr, flush=True)
    return gpu


def _detector_available(mode: str, detector: Any) -> bool:
    """Whether faces can be found in photos; a missing OpenCV is an error only where detection is asked."""
    if mode == "crop":
        return False
    if detector is not None:
        return True
    from emokp_ray.inference.detect import require_detector

    try:
        require_detector()
        return True
    except UserError:
        if mode == "detect":
            raise
        return False


def _model_metadata(keypoints: str | None, emotion: str | None) -> dict:
    """Load the predictor once on the driver: a bad checkpoint fails here, before any actor starts."""
    from emokp_ray.inference.predictor import Predictor

    predictor = Predictor.from_paths(keypoints, emotion, device="cpu", detect=False)
    labels = predictor.labels()
    return {"format_version": 1, "keypoint_names": list(KEYPOINT_NAMES), "keypoint_columns": list(KEYPOINT_COLUMNS),
            "emotion_classes": list(labels.get("emotion") or []), "label_scheme": labels.get("label_scheme"),
            "model": predictor.model_info()}


def _stream(labeled, output: OutputWriter, total: int, progress: bool) -> tuple[float, int]:
    """Write the actors' results as they come, with a progress line every PROGRESS_EVERY_S seconds.
    Returns (seconds, images done) when the first results arrived."""
    started = last = time.perf_counter()
    first = None
    for table in labeled.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=2):
        arrived = time.perf_counter()
        output.write(table)
        if first is None:
            first = (arrived - started, output.images)
        if progress and arrived - last >= PROGRESS_EVERY_S:
            last = arrived
            print(f"label: {output.images:,}/{total:,} images, {output.faces:,} faces, {output.no_face:,} without a face, "
                  f"{output.errors:,} errors, {output.images / (arrived - started):,.1f} images/s", file=sys.stderr, flush=True)
    return first if first is not None else (time.perf_counter() - started, output.images)


def run_label(input: str, keypoints: str | None, emotion: str | None, out: str, jsonl: bool = False,
              annotate_dir: str | None = None, batch_size: int = 32, concurrency: int | tuple[int, int] | None = 1,
              use_gpu: bool | None = None, detect: str = "auto", num_cpus: float = 1.0, threads: int | None = None,
              progress: bool = True, detector: Any = None) -> LabelSummary:
    """Label every face of INPUT with the Predictor, in a Ray Data actor pool; see the module docstring.

    detect: how faces are found in image files: "auto" (a square image of at most 128 px is one face
    crop, others are searched; without OpenCV those become error rows), "crop" (each image is one
    face) or "detect" (always search; needs OpenCV). Data set and CSV rows are crops unless "detect".
    concurrency: actors (int), (min, max) for an autoscaling pool, or None: fill the machine or
    cluster (`_auto_concurrency`). num_cpus: CPUs reserved per actor;
    threads: torch threads per actor (None: Ray's default, one per reserved CPU). use_gpu: one GPU per
    actor (None: when the cluster has GPUs). detector: an object with `detect(grey) -> [(x, y, w, h)...]`
    (largest first) used instead of OpenCV's; it is pickled to every actor.
    """
    if not keypoints and not emotion:
        raise UserError("give --keypoints, --emotion or both")
    if detect not in MODES:
        raise UserError(f"detect must be one of {', '.join(MODES)}, got {detect!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    if num_cpus <= 0 or (threads is not None and threads < 1):
        raise UserError(f"num_cpus must be > 0 and threads >= 1, got {num_cpus!r}, {threads!r}")
    if concurrency is not None:
        min_actors, max_actors = _actor_range(concurrency)   # bad values fail before Ray starts
    out_stage = StagedFolder(out, "--out", SUMMARY_FILE)
    ann_stage = StagedFolder(annotate_dir, "--annotate", ANNOTATIONS_FILE) if annotate_dir else None
    spec: LabelInput = resolve_input(input)
    mode = "crop" if spec.crop_mode and detect == "auto" else detect
    use_detector = _detector_available(mode, detector)
    metadata = {**_model_metadata(keypoints, emotion), "input": spec.location, "input_kind": spec.kind, "mode": mode}
    if progress:
        print(f"label: {input}: {spec.detail}", file=sys.stderr, flush=True)
        if mode == "auto" and not use_detector and not spec.crop_mode:
            print("label: OpenCV is not installed: images that are not face crops become error rows "
                  "(pip install 'emokp-ray[detect]', or detect='crop')", file=sys.stderr, flush=True)

    from emokp_ray.ray_utils import init_ray

    init_ray()
    import ray.data

    if concurrency is None:
        concurrency = _auto_concurrency(use_gpu, num_cpus)
        min_actors, max_actors = _actor_range(concurrency)
    gpu = _check_resources(use_gpu, min_actors, num_cpus)
    compute = ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors)
    actors = (f"{min_actors}" if min_actors == max_actors else f"{min_actors}-{max_actors}") + f" actor{'s' if max_actors > 1 else ''}"
    actors += f" x {num_cpus:g} CPU{' + 1 GPU' if gpu else ''}, " + (f"{threads} torch threads" if threads else "default threads")
    schema = OUTPUT_SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    with out_stage as out_tmp, (ann_stage or contextlib.nullcontext()) as ann_tmp:
        started = time.perf_counter()
        with OutputWriter(out_tmp, schema, jsonl) as output:
            if spec.error_rows:   # bad CSV rows, found on the driver
                sources, messages = map(list, zip(*spec.error_rows))
                output.write(output_table(sources, [None] * len(sources), [None] * len(sources), messages, []))
            startup, done_at_startup = 0.0, output.images
            with parquet_footer_readers(1):
                rows_per_call = batch_size * ROWS_PER_CALL_BATCHES
                ds = work_dataset(spec, rows_per_call, min_blocks=2 * max_actors)
                if ds is not None:
                    labeled = ds.map_batches(
                        BatchLabeler,
                        fn_constructor_kwargs=dict(keypoints=keypoints, emotion=emotion, mode=mode, device="cuda" if gpu else "cpu",
                                                   detect=use_detector, filesystem=spec.filesystem, threads=threads,
                                                   detector=detector, annotate_dir=str(ann_tmp) if ann_tmp else None,
                                                   batch_size=batch_size),
                        batch_size=rows_per_call, batch_format="pyarrow", zero_copy_batch=True,
                        compute=compute, num_cpus=num_cpus, num_gpus=1 if gpu else 0,
                    )
                    startup, done_at_startup = _stream(labeled, output, spec.total, progress)
        seconds = time.perf_counter() - started
        if output.images != spec.total:
            raise RuntimeError(f"labelled {output.images} images of {spec.total}: rows were lost or duplicated")
        steady = (output.images - done_at_startup) / (seconds - startup) if seconds > startup else 0.0
        summary = LabelSummary(
            input=spec.location, input_kind=spec.kind, images=output.images, faces=output.faces,
            no_face=output.no_face, errors=output.errors, skipped_files=spec.skipped_files,
            seconds=round(seconds, 3), images_per_s=round(output.images / seconds, 2) if seconds > 0 else 0.0,
            startup_s=round(startup, 3), steady_images_per_s=round(steady, 2),
            parquet=str(out_stage.final / PARQUET_FILE), jsonl=str(out_stage.final / JSONL_FILE) if jsonl else None,
            annotate_dir=str(ann_stage.final) if ann_stage else None, actors=actors)
        options = dict(batch_size=batch_size, concurrency=list(concurrency) if isinstance(concurrency, tuple) else concurrency,
                       use_gpu=gpu, detect=detect, num_cpus=num_cpus, threads=threads)
        (out_tmp / SUMMARY_FILE).write_text(json.dumps({**summary.to_dict(), **metadata, "options": options}, indent=2) + "\n")
        if ann_stage is not None:
            (ann_tmp / ANNOTATIONS_FILE).write_text(json.dumps({"input": spec.location, "labels": summary.parquet}, indent=2) + "\n")
            ann_stage.commit()
        out_stage.commit()
    return summary
