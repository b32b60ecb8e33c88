"""Batch labeling with Ray Data: image files (and videos, split into frame ranges sampled at `fps`), a
prepared data set or a Kaggle CSV in; one row per face (per sampled frame) out, written by the
workers straight into OUT (any pyarrow filesystem).

    driver    check OUT (writable, a new folder or ours), resolve INPUT (label_inputs.py), load the
              models once (a bad checkpoint fails before any worker starts), record the run
              (OUT/_run.json), stream the input listing into OUT/_work in bounded chunks
    Ray Data  A  read + decode + detect + crop    CPU tasks           (label_stages.prepare_block)
              B  the networks                     an actor pool       (label_stages.FaceNetworks)
              C  part files into OUT              tasks               (label_stages.write_block)
    driver    counts of each part as they come (progress); at the end the summary is computed from
              what was written and saved LAST, as OUT/summary.json: the completion marker

Every input is accounted for exactly once: a part is named by its inputs and written whole or not at
all (label_output.py); `resume=True` skips the inputs whose part exists, and the run checks the
images written against the inputs listed. A run killed at any point (SIGKILL, Ctrl-C, a node lost)
is finished by the same command with resume=True (`--resume`); a resume pointed at another run's
output (other INPUT, models or output options) is refused with the difference.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emokp_ray.errors import UserError
from emokp_ray.inference.label_inputs import (
    DATASET_COLUMNS,
    FRAMES_PER_RANGE,
    LabelInput,
    ListingCounts,
    iter_work_tables,
    parquet_footer_readers,
    resolve_input,
)
from emokp_ray.inference.label_output import (
    ANNOTATIONS_FILE,
    JSONL_DIR,
    LISTING_FILE,
    METADATA_KEY,
    OUTPUT_SCHEMA,
    PARQUET_DIR,
    RUN_FILE,
    SUMMARY_FILE,
    WORK_DIR,
    OutputCounts,
    check_writable,
    clear_output,
    done_hashes,
    folder_state,
    read_json,
    remove_unfinished_parts,
    summarize,
    write_json,
)
from emokp_ray.inference.label_stages import (
    BatchLabeler,
    FaceNetworks,
    join_video_segments,
    load_batch,
    load_predictor,
    prepare_block,
    write_block,
)
from emokp_ray.inference.video import DEFAULT_FPS, check_fps
from emokp_ray.labels import KEYPOINT_COLUMNS, KEYPOINT_NAMES
from emokp_ray.storage import open_location, write_file

__all__ = ["MODES", "STAGES", "BatchLabeler", "LabelSummary", "load_batch", "run_label"]

MODES = ("auto", "crop", "detect")
STAGES = ("split", "single")  # A | B | C as separate Ray Data stages, or A+B in one actor
# Rows per actor call, in model batches. Each Ray Data call costs the actor tens of milliseconds
# (scheduling, result transfer, Ray Data's bookkeeping): with one 32-image batch per call, 2 actors
# on 2 cores ran at 0.70x the plain loop once started; with 8 per call at 1.03-1.16x
# (benchmarks/label_throughput.py). A block of that many inputs is also one part file.
ROWS_PER_CALL_BATCHES = 8
PREPARE_CPUS = 1.0  # per stage-A task (decode + detection; OpenCV held to it, label_stages._named_detector)
# Ray's logical memory per stage-A task: one photo at images.MAX_IMAGE_PIXELS decodes to ~160 MB,
# plus the detector's image pyramid. Asking for it also keeps stage A an operator of its own: Ray Data
# 2.60 fuses a task map into the actor map after it when their resources are equal
# (logical/rules/operator_fusion.py), which would run read + decode + detect inside the actors.
PREPARE_MEMORY_BYTES = 256 * 1024 * 1024
WRITE_CPUS = 0.25  # per stage-C task (Parquet encoding and the upload: mostly waiting on I/O)
PROGRESS_EVERY_S = 5.0
OUTPUT_OPTIONS = ("input", "input_kind", "mode", "model", "jsonl", "annotate_dir", "fps", "frames_per_range")


@dataclass(frozen=True)
class LabelSummary:
    """What a labeling run did: counts (from the files written), speed, where the output is."""

    input: str
    input_kind: str  # "images" | "dataset" | "csv"
    images: int  # inputs in the output (one or more rows each; a video frame range is one), earlier runs' included
    faces: int  # rows with status ok
    no_face: int  # images and sampled video frames without a face
    errors: int  # images that could not be read, decoded or labelled
    skipped_files: int  # files in an image folder without an image extension (not inputs)
    seconds: float  # this run's Ray Data pipeline, from start to the last part written
    images_per_s: float  # images labelled by this run / seconds
    startup_s: float  # until the first part was written: tasks and actors started, models loaded
    steady_images_per_s: float  # after the first part: the rate a longer run tends to
    parquet: str  # OUT/labels.parquet (a folder of part files)
    jsonl: str | None  # OUT/labels.jsonl (a folder of part files)
    annotate_dir: str | None
    actors: str  # the network stage, e.g. "2 actors x 1 CPU, 1 torch thread"
    stages: str = "split"
    resumed: int = 0  # images already written by earlier runs into OUT (skipped by this one)
    emotions: dict = field(default_factory=dict)  # class -> faces
    skipped_links: int = 0  # folders met again through a symbolic link, walked only once
    videos: int = 0  # video files among the inputs (each split into frame ranges, counted in `images`)
    frames: int = 0  # sampled video frames labelled (one no_face row, or a row per face, each)
    frames_per_s: float = 0.0  # video frames labelled by this run / seconds

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LabelSummary:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def failure(self, max_error_fraction: float | None = None) -> str | None:
        """Why this run should exit non-zero (nothing labelled; more errors than accepted), or None."""
        if self.images - self.errors <= 0:
            return (
                f"no input was labelled: all {self.images:,} inputs are errors (see the error column of {self.parquet})"
            )
        if max_error_fraction is not None and self.errors > max_error_fraction * self.images:
            return (
                f"{self.errors:,} of {self.images:,} inputs are errors ({self.errors / self.images:.1%}), more than "
                f"--max-error-fraction {max_error_fraction:g} accepts (the output is complete: {self.parquet})"
            )
        return None

    def __str__(self) -> str:
        what = "inputs (images and video frame ranges)" if self.videos else "images"
        text = (
            f"labelled {self.images:,} {what} from {self.input} in {self.seconds:.1f} s: {self.faces:,} faces, "
            f"{self.no_face:,} without a face, {self.errors:,} errors"
        )
        if self.skipped_files:
            text += f" ({self.skipped_files:,} non-image files skipped)"
        if self.skipped_links:
            text += f" ({self.skipped_links:,} folders reached again through symbolic links, walked once)"
        if self.videos:
            text += (
                f"\n  videos: {self.videos:,} files, {self.frames:,} sampled frames labelled "
                f"({self.frames_per_s:,.1f} frames/s)"
            )
        if self.resumed:
            text += f"\n  resumed: {self.resumed:,} images were already written, {self.images - self.resumed:,} labelled now"
        steady = f", then {self.steady_images_per_s:,.1f} images/s" if self.steady_images_per_s else ""
        text += (
            f"\n  {self.images_per_s:,.1f} images/s ({self.startup_s:.1f} s to the first part{steady}; "
            f"{self.stages} stages, networks: {self.actors})"
        )
        text += f"\n  -> {', '.join([self.parquet] + [p for p in (self.jsonl,) if p])}"
        if self.annotate_dir:
            text += f"\n  -> annotated images in {self.annotate_dir}"
        return text


# ----------------------------------------------------------------------------- the run (driver)


def _actor_range(concurrency: int | tuple[int, int]) -> tuple[int, int]:
    """(min, max) actors from an int or a (min, max) pair."""
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return concurrency, concurrency
    if (
        isinstance(concurrency, (tuple, list))
        and len(concurrency) == 2
        and all(isinstance(c, int) for c in concurrency)
        and 1 <= concurrency[0] <= concurrency[1]
    ):
        return concurrency[0], concurrency[1]
    raise UserError(f"concurrency must be a positive integer or (min, max) with 1 <= min <= max, got {concurrency!r}")


def _auto_concurrency(asked_gpu: bool | None, num_cpus: float, task_cpus: float = 0.0) -> int | tuple[int, int]:
    """Actors that fill the machine: one per GPU; on CPUs, one per `num_cpus` of this machine's cores
    (a local cluster; its logical CPUs may outnumber the cores: 2 single-thread actors on 2 cores run
    at 1.1x the plain loop, more only compete) or (1, CPUs / num_cpus) on a cluster, where Ray Data
    grows the pool as work queues up; either way `task_cpus` stay free for the task stages."""
    import ray

    total = ray.cluster_resources()
    if total.get("GPU", 0) >= 1 and asked_gpu is not False:
        return int(total["GPU"])
    room = max(1, int((total.get("CPU", 1) - task_cpus) // num_cpus))
    if os.environ.get("RAY_ADDRESS"):
        return 1, room
    cores = min(os.cpu_count() or 1, total.get("CPU", 1))
    return max(1, min(room, int(cores // num_cpus)))


def _check_resources(asked_gpu: bool | None, min_actors: int, num_cpus: float, task_cpus: float = 0.0) -> bool:
    """Whether actors get a GPU, and that the cluster can hold the smallest pool plus one task of each
    task stage (`task_cpus`; Ray Data would wait for them forever). A local cluster's shortfall is an
    error; on a cluster (RAY_ADDRESS) an autoscaler may add nodes, so it is only reported."""
    import ray

    total = ray.cluster_resources()
    gpus, cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
    gpu = gpus >= 1 if asked_gpu is None else bool(asked_gpu)
    problems = []
    if gpu and min_actors > gpus:
        problems.append(f"{min_actors} actor(s) with one GPU each, but the Ray cluster has {gpus:g} GPUs")
    if min_actors * num_cpus + task_cpus > cpus:
        problems.append(
            f"{min_actors} actor(s) x {num_cpus:g} CPUs and {task_cpus:g} CPUs for the tasks that read and write, "
            f"but the Ray cluster has {cpus:g} CPUs"
        )
    if problems:
        message = "; ".join(problems) + ": lower the concurrency" + (" or num_cpus" if not gpu else "")
        if not os.environ.get("RAY_ADDRESS"):
            raise UserError(message)
        print(f"label: waiting for the autoscaler? {message}", file=sys.stderr, flush=True)
    return gpu


def _detector_available(mode: str, detector: Any, threshold: float | None = None) -> bool:
    """Whether faces can be found in photos; a missing OpenCV is an error only where detection is asked
    (an unknown detector name or a bad threshold always is)."""
    from emokp_ray.inference.detect import DEFAULT_DETECTOR, check_settings, check_threshold, make_detector

    if isinstance(detector, str):
        check_settings(detector, threshold)
    else:
        check_threshold(threshold)
    if mode == "crop":
        return False
    if detector is not None and not isinstance(detector, str):
        return True
    try:
        make_detector(detector or DEFAULT_DETECTOR, threshold)
        return True
    except UserError:
        if mode == "detect":
            raise
        return False


@dataclass(frozen=True)
class RunMetadata:
    """What OUT/_run.json records and every part's schema carries (label_output.METADATA_KEY): the
    models, their output names, INPUT and the output options (what a resume must match:
    OUTPUT_OPTIONS)."""

    keypoint_names: list[str]
    keypoint_columns: list[str]
    emotion_classes: list[str]  # the emotion model's classes, [] without one
    label_scheme: str | None
    model: dict[str, Any]  # task -> Predictor.model_info()'s entry, or None
    input: str  # INPUT's identity (label_inputs.LabelInput.identity)
    input_kind: str
    mode: str  # "crop" | "detect" | "auto"
    jsonl: bool
    annotate_dir: str | None
    fps: float | str  # video frames sampled per second, or "all"
    frames_per_range: int
    format_version: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def input_sizes(self) -> dict[str, int]:
        """task -> its network's input size, for the models this run has."""
        return {task: info["input_size"] for task, info in self.model.items() if info}


def _model_metadata(
    keypoints: str | None, emotion: str | None, trust_torchscript: bool = False, backend: str = "auto"
) -> dict[str, Any]:
    """Load the predictor once on the driver: a bad checkpoint fails here, before any actor starts.
    Returns RunMetadata's model fields."""
    predictor = load_predictor(keypoints, emotion, device="cpu", trust_torchscript=trust_torchscript, backend=backend)
    labels = predictor.labels()
    return dict(
        keypoint_names=list(KEYPOINT_NAMES),
        keypoint_columns=list(KEYPOINT_COLUMNS),
        emotion_classes=list(labels.get("emotion") or []),
        label_scheme=labels.get("label_scheme"),
        model=predictor.model_info(),
    )


def _model_identity(model: dict) -> dict:
    """What names a model for --resume: everything model_info says but where its file is."""
    return {
        task: None if info is None else {k: v for k, v in info.items() if k != "checkpoint"}
        for task, info in model.items()
    }


def _check_resumable(recorded: dict, metadata: RunMetadata, out: str) -> None:
    """A resume continues the same run: same INPUT, models and output options, else a UserError.
    recorded: the earlier run's OUT/_run.json as read (older outputs lack the video options)."""
    current = metadata.to_dict()
    for key in OUTPUT_OPTIONS:
        was, now = recorded.get(key), current.get(key)
        if key == "model":
            was, now = _model_identity(was or {}), _model_identity(now or {})
        if key in ("fps", "frames_per_range") and key not in recorded:
            continue  # an output written before videos were labelled
        if was != now:
            what = {
                "input": "INPUT",
                "input_kind": "INPUT's kind",
                "mode": "detect mode",
                "model": "models",
                "jsonl": "--jsonl",
                "annotate_dir": "--annotate",
                "fps": "--fps",
                "frames_per_range": "frames per video range",
            }[key]

            def shown(v: Any) -> str:
                return json.dumps(v, sort_keys=True)[:200]

            raise UserError(
                f"--resume: {out} holds another run's output ({what}: {shown(was)} there, {shown(now)} now); "
                f"resume with the same INPUT, models and options, or choose a new --out"
            )


def _prepare_out(fs: pafs.FileSystem, path: str, out: str, flag: str, resume: bool) -> str:
    """OUT's state (label_output.folder_state), refusing what must not be touched or replaced."""
    state = folder_state(fs, path)
    if state == "file":
        raise UserError(f"{flag} {out} exists and is not a folder")
    if state == "foreign":
        raise UserError(
            f"{flag} {out} exists and is not an earlier `emokp label` output (no {SUMMARY_FILE}); choose a new folder"
        )
    if state == "unfinished" and not resume:
        raise UserError(
            f"{flag} {out} holds an unfinished run (no {SUMMARY_FILE}): add --resume to finish it, or choose a new folder"
        )
    return state


def _annotate_state(fs: pafs.FileSystem, path: str, where: str, resume: bool) -> None:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type != pafs.FileType.Directory:
        raise UserError(f"--annotate {where} exists and is not a folder")
    entries = fs.get_file_info(pafs.FileSelector(path))
    if entries and not resume and ANNOTATIONS_FILE not in {i.base_name for i in entries}:
        raise UserError(
            f"--annotate {where} exists and is not an earlier `emokp label` output (no {ANNOTATIONS_FILE}); choose a new folder"
        )


@dataclass(frozen=True)
class Listing:
    """The inputs of a run (OUT/_work/listing.json once complete): the work-row chunk files, images
    and CSV rows apart from video frame ranges, and the counts of what the listing met."""

    total: int  # inputs: images, rows, video frame ranges
    skipped_files: int = 0  # files that are not inputs (unknown endings)
    skipped_links: int = 0  # folders reached again through symbolic links, not walked twice
    videos: int = 0
    files: list[str] = field(default_factory=list)  # OUT/_work/inputs-NNNNN.parquet
    video_files: list[str] = field(default_factory=list)  # OUT/_work/videos-NNNNN.parquet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Listing:
        """listing.json as written by this or an earlier version (which lacked the later fields)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _write_listing(spec: LabelInput, fs: pafs.FileSystem, out: str, progress: bool) -> Listing:
    """Stream the input listing into OUT/_work/inputs-NNNNN.parquet (a bounded chunk in memory at a
    time), then OUT/_work/listing.json (it is complete). A resume reuses a complete listing."""
    recorded = read_json(fs, f"{out}/{LISTING_FILE}")
    if recorded is not None:
        return Listing.from_dict(recorded)
    work = f"{out}/{WORK_DIR}"
    if fs.get_file_info(work).type == pafs.FileType.Directory:
        fs.delete_dir(work)  # an interrupted listing: list again
    fs.create_dir(work, recursive=True)
    counts = ListingCounts()
    files: list[str] = []
    video_files: list[str] = []
    schema = spec.work_schema
    for i, table in enumerate(iter_work_tables(spec, counts)):
        # Video ranges apart from images: a range is a block of its own (_work_dataset)
        video = table["range_start"].is_valid() if "range_start" in table.column_names else None
        for kind, rows, names in (
            ("inputs", table if video is None else table.filter(pc.invert(video)), files),
            ("videos", None if video is None else table.filter(video), video_files),
        ):
            if rows is None or rows.num_rows == 0:
                continue
            name = f"{work}/{kind}-{i:05d}.parquet"

            def write(stream: Any, rows: pa.Table = rows) -> None:
                pq.write_table(rows.cast(schema), stream)

            write_file(name, write, fs=fs)
            names.append(name)
        if progress and i and i % 10 == 0:
            print(f"label: listed {counts.inputs:,} inputs", file=sys.stderr, flush=True)
    listing = Listing(
        total=counts.inputs,
        skipped_files=counts.skipped_files,
        skipped_links=counts.skipped_links,
        videos=counts.videos,
        files=files,
        video_files=video_files,
    )
    write_json(fs, f"{out}/{LISTING_FILE}", listing.to_dict())
    return listing


def _work_dataset(spec: LabelInput, listing: Listing, fs: pafs.FileSystem, rows_per_block: int):
    """The Ray Dataset of work rows (lazy; image bytes are not read here), in blocks of
    `rows_per_block` rows (one stage-A call and, further on, one part file each); a video's frame
    range is a block of its own: the ranges of a long video are decoded and searched in parallel."""
    import ray.data

    if spec.kind == "dataset":
        ds = ray.data.read_parquet(spec.split_dirs, filesystem=spec.filesystem).select_columns(DATASET_COLUMNS)
        return ds.repartition(target_num_rows_per_block=rows_per_block)  # streaming: no shuffle, no barrier
    parts = []
    for files, rows in ((listing.files, rows_per_block), (listing.video_files, 1)):
        if files:
            parts.append(ray.data.read_parquet(files, filesystem=fs).repartition(target_num_rows_per_block=rows))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def _stream(pipeline, total: int, resumed: int, progress: bool) -> tuple[float, int, int, int]:
    """Follow the parts as they are written (one small row each), with a progress line every
    PROGRESS_EVERY_S seconds. Returns (seconds to the first part, inputs in it, inputs written,
    video frames written)."""
    started = last = time.perf_counter()
    first, images, frames, faces, errors = None, 0, 0, 0, 0
    for table in pipeline.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=4):
        arrived = time.perf_counter()
        images += int(pc.sum(table["images"]).as_py() or 0)
        frames += int(pc.sum(table["frames"]).as_py() or 0)
        faces += int(pc.sum(table["faces"]).as_py() or 0)
        errors += int(pc.sum(table["errors"]).as_py() or 0)
        if first is None and images:
            first = (arrived - started, images)
        if progress and arrived - last >= PROGRESS_EVERY_S:
            last = arrived
            print(
                f"label: {resumed + images:,}/{total:,} inputs, {faces:,} faces, {errors:,} errors, "
                f"{images / (arrived - started):,.1f} inputs/s"
                + (f", {frames:,} video frames ({frames / (arrived - started):,.1f}/s)" if frames else ""),
                file=sys.stderr,
                flush=True,
            )
    first = first if first is not None else (time.perf_counter() - started, images)
    return first[0], first[1], images, frames


# ----------------------------------------------------------------------------- run_label's steps, in order


def _check_options(
    keypoints: str | None,
    emotion: str | None,
    detect: str,
    stages: str,
    batch_size: int,
    num_cpus: float,
    threads: int | None,
    concurrency: int | tuple[int, int] | None,
) -> None:
    """Bad options fail before anything is opened, loaded or started."""
    if not keypoints and not emotion:
        raise UserError("give --keypoints, --emotion or both")
    if detect not in MODES:
        raise UserError(f"detect must be one of {', '.join(MODES)}, got {detect!r}")
    if stages not in STAGES:
        raise UserError(f"stages must be one of {', '.join(STAGES)}, got {stages!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    if num_cpus <= 0 or (threads is not None and threads < 1):
        raise UserError(f"num_cpus must be > 0 and threads >= 1, got {num_cpus!r}, {threads!r}")
    if concurrency is not None:
        _actor_range(concurrency)  # bad values fail before Ray starts


@dataclass(frozen=True)
class _Outputs:
    """OUT and the --annotate folder, opened and checked (nothing written yet)."""

    out: str  # as given (messages, the summary's paths)
    fs: pafs.FileSystem
    path: str
    state: str  # what OUT held before this run (label_output.folder_state)
    ann_fs: pafs.FileSystem | None  # None: no --annotate
    ann_path: str | None
    made: list  # (filesystem, path) of the folders that did not exist before this run


def _open_outputs(out: str, annotate_dir: str | None, resume: bool) -> _Outputs:
    """OUT first: a folder we must not touch or replace fails before any model loads."""
    out_fs, out_path = open_location(out)
    state = _prepare_out(out_fs, out_path, out, "--out", resume)
    ann_fs = ann_path = None
    if annotate_dir:
        ann_fs, ann_path = open_location(annotate_dir)
        _annotate_state(ann_fs, ann_path, annotate_dir, resume)
    made = [
        (fs, path)
        for fs, path in ((out_fs, out_path), (ann_fs, ann_path))
        if fs is not None and fs.get_file_info(path).type == pafs.FileType.NotFound
    ]
    return _Outputs(out, out_fs, out_path, state, ann_fs, ann_path, made)


@contextmanager
def _removed_if_refused(outputs: _Outputs) -> Iterator[None]:
    """Whatever the block raises, the folders this run created are removed while they are still
    empty: a run refused before anything was written leaves no empty folder behind."""
    try:
        yield
    except BaseException:
        for fs, path in outputs.made:
            try:
                if not fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                    fs.delete_dir(path)
            except OSError:  # it was never created (e.g. a file where its parent folder should be)
                pass
        raise


def _check_writable(outputs: _Outputs) -> None:
    """An unwritable destination fails before any model loads."""
    check_writable(outputs.fs, outputs.path, "--out")
    if outputs.ann_fs is not None and outputs.ann_path is not None:
        check_writable(outputs.ann_fs, outputs.ann_path, "--annotate")


def _resolve(
    input: str,
    detect: str,
    detector: Any,
    threshold: float | None = None,
    fps: float | None = DEFAULT_FPS,
    frames_per_range: int = FRAMES_PER_RANGE,
) -> tuple[LabelInput, str, bool]:
    """INPUT resolved (label_inputs.py), the detect mode its images get, and whether faces can be searched."""
    spec = resolve_input(input, fps, frames_per_range)
    mode = "crop" if spec.crop_mode and detect == "auto" else detect
    return spec, mode, _detector_available(mode, detector, threshold)


def _run_metadata(
    spec: LabelInput,
    mode: str,
    keypoints: str | None,
    emotion: str | None,
    trust_torchscript: bool,
    backend: str,
    jsonl: bool,
    annotate_dir: str | None,
    ann_path: str | None,
) -> RunMetadata:
    """The run's metadata: the models (loaded once, here), INPUT and the output options."""
    return RunMetadata(
        **_model_metadata(keypoints, emotion, trust_torchscript, backend),
        input=spec.identity,
        input_kind=spec.kind,
        mode=mode,
        jsonl=jsonl,
        annotate_dir=(annotate_dir if "://" in annotate_dir else ann_path) if annotate_dir else None,
        fps="all" if spec.fps is None else spec.fps,
        frames_per_range=spec.frames_per_range,
    )


def _recorded_run(outputs: _Outputs, metadata: RunMetadata, resume: bool) -> dict | None:
    """The run a resume continues (OUT/_run.json, refused unless it is this run), or None: a new run."""
    if not resume or outputs.state not in ("unfinished", "complete"):
        return None
    recorded = read_json(outputs.fs, f"{outputs.path}/{RUN_FILE}")
    if recorded is not None:
        _check_resumable(recorded, metadata, outputs.out)
    return recorded


@dataclass(frozen=True)
class _Pool:
    """The network stage's actor pool."""

    concurrency: int | tuple[int, int]  # as given, or as _auto_concurrency chose
    min_actors: int
    max_actors: int
    num_cpus: float  # per actor
    threads: int | None  # torch threads per actor (None: Ray's default)
    gpu: bool  # one GPU per actor

    def __str__(self) -> str:
        """e.g. "2 actors x 1 CPU, default threads"."""
        count = f"{self.min_actors}" if self.min_actors == self.max_actors else f"{self.min_actors}-{self.max_actors}"
        threads = f"{self.threads} torch threads" if self.threads else "default threads"
        return (
            f"{count} actor{'s' if self.max_actors > 1 else ''} x {self.num_cpus:g} CPU"
            f"{' + 1 GPU' if self.gpu else ''}, {threads}"
        )


def _actor_pool(
    concurrency: int | tuple[int, int] | None, use_gpu: bool | None, num_cpus: float, threads: int | None, stages: str
) -> _Pool:
    """Ray started (init_ray) and the pool sized: as asked, or filling the machine or cluster; a pool
    the cluster cannot hold next to one task of each task stage is refused (_check_resources)."""
    from emokp_ray.ray_utils import init_ray

    init_ray()
    task_cpus = WRITE_CPUS + (PREPARE_CPUS if stages == "split" else 0.0)  # one task of each task stage
    if concurrency is None:
        concurrency = _auto_concurrency(use_gpu, num_cpus, task_cpus)
    min_actors, max_actors = _actor_range(concurrency)
    gpu = _check_resources(use_gpu, min_actors, num_cpus, task_cpus)
    return _Pool(concurrency, min_actors, max_actors, num_cpus, threads, gpu)


def _already_complete(outputs: _Outputs, progress: bool) -> LabelSummary:
    """--resume on a finished output: its recorded summary; nothing runs."""
    recorded_summary = read_json(outputs.fs, f"{outputs.path}/{SUMMARY_FILE}")
    if recorded_summary is None:  # folder_state found it a moment ago
        raise UserError(f"--out {outputs.out}: {SUMMARY_FILE} disappeared while resuming; run again")
    finished = LabelSummary.from_dict(recorded_summary)
    if progress:
        print(f"label: {outputs.out} is already complete; nothing to resume", file=sys.stderr, flush=True)
    return finished


def _start_or_continue(
    outputs: _Outputs, metadata: RunMetadata, recorded: dict | None, jsonl: bool, progress: bool
) -> None:
    """A new run records itself (OUT/_run.json) and replaces an earlier run's annotations; a resumed
    one removes the parts its interrupted run left unfinished. Then the part folders exist."""
    if recorded is None:
        ann_fs, ann_path = outputs.ann_fs, outputs.ann_path
        if ann_fs is not None and ann_fs.get_file_info(f"{ann_path}/{ANNOTATIONS_FILE}").type == pafs.FileType.File:
            ann_fs.delete_dir_contents(ann_path)  # an earlier run's annotations are replaced too
        write_json(outputs.fs, f"{outputs.path}/{RUN_FILE}", metadata.to_dict())
    elif remove_unfinished_parts(outputs.fs, outputs.path) and progress:
        print("label: removed the unfinished parts of the interrupted run", file=sys.stderr, flush=True)
    for folder in (PARQUET_DIR, JSONL_DIR if jsonl else None):
        if folder:
            outputs.fs.create_dir(f"{outputs.path}/{folder}", recursive=True)


def _listing(spec: LabelInput, outputs: _Outputs, progress: bool) -> Listing:
    """The inputs: for image files, videos and CSV rows, listed into OUT/_work; a prepared data set
    is read as it is (no files)."""
    if spec.kind == "dataset":
        return Listing(total=spec.total)
    return _write_listing(spec, outputs.fs, outputs.path, progress)


def _say_what_is_labelled(input: str, spec: LabelInput, listing: Listing, mode: str, use_detector: bool) -> None:
    skipped = f", {listing.skipped_files:,} other files skipped" if listing.skipped_files else ""
    if listing.skipped_links:
        skipped += f", {listing.skipped_links:,} folders reached again through symbolic links not walked twice"
    print(f"label: {input}: {listing.total:,} inputs ({spec.detail}{skipped})", file=sys.stderr, flush=True)
    if mode == "auto" and not use_detector and not spec.crop_mode:
        print(
            "label: OpenCV is not installed: images that are not face crops become error rows "
            "(pip install 'emokp-ray[detect]', or detect='crop')",
            file=sys.stderr,
            flush=True,
        )


def _written_before(outputs: _Outputs, recorded: dict | None, total: int, progress: bool) -> np.ndarray | None:
    """On a resume, the hashes of the inputs earlier runs wrote (label_output.done_hashes: skipped by
    this run); None on a new run."""
    if recorded is None:
        return None
    done = done_hashes(outputs.fs, outputs.path)
    if progress and len(done):
        print(f"label: resuming: {len(done):,} of {total:,} inputs are already written", file=sys.stderr, flush=True)
    return done


@dataclass(frozen=True)
class _Networks:
    """What every network actor loads: label_stages.FaceNetworks' (and BatchLabeler's) arguments."""

    keypoints: str | None
    emotion: str | None
    device: str
    threads: int | None
    batch_size: int
    trust_torchscript: bool
    backend: str


def _labelled_parts(
    ds: Any, stages: str, prepare: dict, inputs: dict[str, int], networks: _Networks, pool: _Pool, write: dict
):
    """The Ray Data stages over the work rows, lazily: A | B | C ("split") or A+B | C ("single").
    One small row per part file written (label_stages.write_block)."""
    import ray.data

    blocks: dict[str, Any] = dict(batch_size=None, batch_format="pyarrow", zero_copy_batch=True)
    actors: dict[str, Any] = dict(
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        num_cpus=pool.num_cpus,
        num_gpus=1 if pool.gpu else 0,
    )
    if stages == "split":
        prepared = ds.map_batches(  # A: read + decode + detect + crop
            prepare_block,
            fn_kwargs=dict(inputs=inputs, **prepare),
            num_cpus=PREPARE_CPUS,
            memory=PREPARE_MEMORY_BYTES,
            **blocks,
        )
        labelled = prepared.map_batches(  # B: the networks
            FaceNetworks, fn_constructor_kwargs=asdict(networks), **actors, **blocks
        )
    else:  # A+B in the actors
        labelled = ds.map_batches(
            BatchLabeler, fn_constructor_kwargs={**asdict(networks), **prepare}, **actors, **blocks
        )
    return labelled.map_batches(write_block, fn_kwargs=write, num_cpus=WRITE_CPUS, **blocks)  # C: the part files


@dataclass(frozen=True)
class _Timing:
    seconds: float  # this run's Ray Data pipeline, from start to the last part written
    startup: float  # until the first part was written
    at_startup: int  # images in the first part
    written: int  # images written by this run
    frames: int = 0  # video frames written by this run


def _label_the_rest(
    spec: LabelInput,
    listing: Listing,
    outputs: _Outputs,
    metadata: RunMetadata,
    done: np.ndarray | None,
    *,
    stages: str,
    mode: str,
    detector: Any,
    detector_threshold: float | None,
    pixels: bool,
    jsonl: bool,
    networks: _Networks,
    pool: _Pool,
    progress: bool,
) -> _Timing:
    """Every input not written yet through the Ray Data pipeline (blocks of at most
    ROWS_PER_CALL_BATCHES model batches, at least two per actor), followed part by part (_stream)."""
    import ray

    total, resumed = listing.total, 0 if done is None else len(done)
    started = time.perf_counter()
    startup, at_startup, written, frames = 0.0, 0, 0, 0
    if resumed < total:
        per_block = networks.batch_size * ROWS_PER_CALL_BATCHES
        rows_per_block = max(1, min(per_block, -(-(total - resumed) // (2 * pool.max_actors))))
        done_ref = ray.put(done) if done is not None and len(done) else None
        prepare = dict(
            filesystem=spec.filesystem,
            mode=mode,
            detector=detector,
            detector_threshold=detector_threshold,
            pixels=pixels,
            done=done_ref,
            fps=spec.fps,
        )
        write = dict(
            filesystem=outputs.fs,
            out=outputs.path,
            schema=OUTPUT_SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata.to_dict()).encode()}),
            jsonl=jsonl,
            annotate_fs=outputs.ann_fs,
            annotate_dir=outputs.ann_path,
            class_names=metadata.emotion_classes,
            video_fs=spec.filesystem,
            fps=spec.fps,
        )
        inputs = metadata.input_sizes()
        with parquet_footer_readers(1):
            ds = _work_dataset(spec, listing, outputs.fs, rows_per_block)
            parts = _labelled_parts(ds, stages, prepare, inputs, networks, pool, write)
            startup, at_startup, written, frames = _stream(parts, total, resumed, progress)
    return _Timing(time.perf_counter() - started, startup, at_startup, written, frames)


def _counts_written(outputs: _Outputs, metadata: RunMetadata, total: int) -> OutputCounts:
    """The output's counts, from what was written: every input listed comes out exactly once."""
    counts = summarize(outputs.fs, outputs.path, metadata.emotion_classes)
    if counts.images != total:
        raise RuntimeError(
            f"{outputs.out}: {counts.images:,} images written for {total:,} inputs: rows were lost or duplicated"
        )
    return counts


def _summary(
    spec: LabelInput,
    listing: Listing,
    counts: OutputCounts,
    timing: _Timing,
    pool: _Pool,
    outputs: _Outputs,
    *,
    stages: str,
    resumed: int,
    jsonl: bool,
    annotate_dir: str | None,
) -> LabelSummary:
    seconds = timing.seconds
    steady = (
        (timing.written - timing.at_startup) / (seconds - timing.startup)
        if seconds > timing.startup and timing.written > timing.at_startup
        else 0.0
    )
    location = outputs.out.rstrip("/")
    return LabelSummary(
        input=spec.location,
        input_kind=spec.kind,
        images=counts.images,
        faces=counts.faces,
        no_face=counts.no_face,
        errors=counts.errors,
        skipped_files=listing.skipped_files,
        skipped_links=listing.skipped_links,
        seconds=round(seconds, 3),
        images_per_s=round(timing.written / seconds, 2) if seconds > 0 else 0.0,
        startup_s=round(timing.startup, 3),
        steady_images_per_s=round(steady, 2),
        parquet=f"{location}/{PARQUET_DIR}",
        jsonl=f"{location}/{JSONL_DIR}" if jsonl else None,
        annotate_dir=annotate_dir,
        actors=str(pool),
        stages=stages,
        resumed=resumed,
        emotions=counts.emotions,
        videos=listing.videos,
        frames=counts.frames,
        frames_per_s=round(timing.frames / seconds, 2) if seconds > 0 else 0.0,
    )


def _write_summary(
    outputs: _Outputs, summary: LabelSummary, metadata: RunMetadata, counts: OutputCounts, options: dict[str, Any]
) -> None:
    """The annotations' marker, then OUT/summary.json, LAST: the completion marker."""
    if outputs.ann_fs is not None:
        labels = {"input": summary.input, "labels": summary.parquet}
        write_json(outputs.ann_fs, f"{outputs.ann_path}/{ANNOTATIONS_FILE}", labels)
    write_json(
        outputs.fs,
        f"{outputs.path}/{SUMMARY_FILE}",
        {**summary.to_dict(), **metadata.to_dict(), "rows": counts.rows, "options": options},
    )


def run_label(
    input: str,
    keypoints: str | None,
    emotion: str | None,
    out: str,
    jsonl: bool = False,
    annotate_dir: str | None = None,
    batch_size: int = 32,
    concurrency: int | tuple[int, int] | None = 1,
    use_gpu: bool | None = None,
    detect: str = "auto",
    num_cpus: float = 1.0,
    threads: int | None = None,
    progress: bool = True,
    detector: Any = "mtcnn",
    resume: bool = False,
    stages: str = "split",
    trust_torchscript: bool = False,
    backend: str = "auto",
    detector_threshold: float | None = None,
    fps: float | None = DEFAULT_FPS,
    frames_per_range: int = FRAMES_PER_RANGE,
) -> LabelSummary:
    """Label every face of INPUT with the Predictor in Ray Data stages; see the module docstring.

    out, annotate_dir: a local path or a URI (s3://, gs://, file://, ...): written by the workers.
    detect: how faces are found in image files: "auto" (a square image of at most 128 px is one face
    crop, others are searched; without OpenCV those become error rows), "crop" (each image is one
    face) or "detect" (always search; needs OpenCV). Data set and CSV rows are crops unless "detect".
    concurrency: network actors (int), (min, max) for an autoscaling pool, or None: fill the machine
    or cluster (`_auto_concurrency`). num_cpus: CPUs reserved per actor; threads: torch threads per
    actor (None: Ray's default, one per reserved CPU). use_gpu: one GPU per actor (None: when the
    cluster has GPUs). detector: "mtcnn" (default) or "haar" (detect.make_detector, built in each
    task; detector_threshold: MTCNN's final score threshold in (0, 1)), or an object with
    `detect(image) -> [Detection...]` (largest first), pickled to every task. resume: finish the unfinished run in OUT
    (see the module docstring). stages: "split" (A | B | C) or "single" (A+B in the actors | C).
    fps: videos' frames sampled per second (None: every frame); frames_per_range: sampled frames per
    video frame range, the unit Ray Data labels in parallel (label_inputs.py). With annotate_dir, a
    video's annotated frames come out as NAME.annotated.mp4 (joined from its ranges at the end).
    """
    _check_options(keypoints, emotion, detect, stages, batch_size, num_cpus, threads, concurrency)
    fps = check_fps(fps)
    if not isinstance(frames_per_range, int) or frames_per_range < 1:
        raise UserError(f"frames per video range must be a positive integer, got {frames_per_range!r}")
    outputs = _open_outputs(out, annotate_dir, resume)
    with _removed_if_refused(outputs):  # the plan: nothing is written until it holds
        _check_writable(outputs)
        spec, mode, use_detector = _resolve(input, detect, detector, detector_threshold, fps, frames_per_range)
        metadata = _run_metadata(
            spec, mode, keypoints, emotion, trust_torchscript, backend, jsonl, annotate_dir, outputs.ann_path
        )
        recorded = _recorded_run(outputs, metadata, resume)
        pool = _actor_pool(concurrency, use_gpu, num_cpus, threads, stages)
    if outputs.state == "complete":
        if resume:
            return _already_complete(outputs, progress)
        clear_output(outputs.fs, outputs.path)  # an earlier finished output of ours is replaced

    _start_or_continue(outputs, metadata, recorded, jsonl, progress)
    listing = _listing(spec, outputs, progress)
    if progress:
        _say_what_is_labelled(input, spec, listing, mode, use_detector)
    done = _written_before(outputs, recorded, listing.total, progress)
    networks = _Networks(
        keypoints, emotion, "cuda" if pool.gpu else "cpu", threads, batch_size, trust_torchscript, backend
    )
    timing = _label_the_rest(
        spec,
        listing,
        outputs,
        metadata,
        done,
        stages=stages,
        mode=mode,
        detector=detector,
        detector_threshold=detector_threshold,
        pixels=annotate_dir is not None,
        jsonl=jsonl,
        networks=networks,
        pool=pool,
        progress=progress,
    )

    counts = _counts_written(outputs, metadata, listing.total)
    if outputs.ann_fs is not None and outputs.ann_path is not None and listing.videos:
        join_video_segments(outputs.ann_fs, outputs.ann_path)
    summary = _summary(
        spec,
        listing,
        counts,
        timing,
        pool,
        outputs,
        stages=stages,
        resumed=0 if done is None else len(done),
        jsonl=jsonl,
        annotate_dir=annotate_dir,
    )
    options = dict(
        batch_size=batch_size,
        concurrency=list(pool.concurrency) if isinstance(pool.concurrency, tuple) else pool.concurrency,
        use_gpu=pool.gpu,
        detect=detect,
        detector=detector if isinstance(detector, str) else type(detector).__name__,
        detector_threshold=detector_threshold,
        num_cpus=num_cpus,
        threads=threads,
        stages=stages,
    )
    _write_summary(outputs, summary, metadata, counts, options)
    return summary
