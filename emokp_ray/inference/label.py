"""Batch labeling with Ray Data: image files, a prepared data set or a Kaggle CSV in; one row per face
out, written by the workers straight into OUT (any pyarrow filesystem).

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
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from emokp_ray.artifacts.files import open_location, write_file
from emokp_ray.errors import UserError
from emokp_ray.inference.label_inputs import (
    CROP_WORK_SCHEMA,
    DATASET_COLUMNS,
    FILE_WORK_SCHEMA,
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
    load_batch,
    load_predictor,
    prepare_block,
    write_block,
)
from emokp_ray.labels import KEYPOINT_COLUMNS, KEYPOINT_NAMES

__all__ = ["MODES", "STAGES", "BatchLabeler", "LabelSummary", "load_batch", "run_label"]

MODES = ("auto", "crop", "detect")
STAGES = ("split", "single")  # A | B | C as separate Ray Data stages, or A+B in one actor (today's shape)
# Rows per actor call, in model batches. Each Ray Data call costs the actor tens of milliseconds
# (scheduling, result transfer, Ray Data's bookkeeping): with one 32-image batch per call, 2 actors
# on 2 cores ran at 0.70x the plain loop once started; with 8 per call at 1.03-1.16x
# (benchmarks/label_throughput.py). A block of that many inputs is also one part file.
ROWS_PER_CALL_BATCHES = 8
PREPARE_CPUS = 1.0  # per stage-A task (decode + Haar detection are single-threaded Python/C)
WRITE_CPUS = 0.25  # per stage-C task (Parquet encoding and the upload: mostly waiting on I/O)
PROGRESS_EVERY_S = 5.0
OUTPUT_OPTIONS = ("input", "input_kind", "mode", "model", "jsonl", "annotate_dir")  # what a resume must match


@dataclass(frozen=True)
class LabelSummary:
    """What a labeling run did: counts (from the files written), speed, where the output is."""

    input: str
    input_kind: str  # "images" | "dataset" | "csv"
    images: int  # inputs in the output (one or more rows each), earlier runs' included
    faces: int  # rows with status ok
    no_face: int  # images without a face
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
        text = (
            f"labelled {self.images:,} images from {self.input} in {self.seconds:.1f} s: {self.faces:,} faces, "
            f"{self.no_face:,} without a face, {self.errors:,} errors"
        )
        if self.skipped_files:
            text += f" ({self.skipped_files:,} non-image files skipped)"
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


def _model_metadata(
    keypoints: str | None, emotion: str | None, trust_torchscript: bool = False, backend: str = "auto"
) -> dict:
    """Load the predictor once on the driver: a bad checkpoint fails here, before any actor starts."""
    predictor = load_predictor(keypoints, emotion, device="cpu", trust_torchscript=trust_torchscript, backend=backend)
    labels = predictor.labels()
    return {
        "format_version": 2,
        "keypoint_names": list(KEYPOINT_NAMES),
        "keypoint_columns": list(KEYPOINT_COLUMNS),
        "emotion_classes": list(labels.get("emotion") or []),
        "label_scheme": labels.get("label_scheme"),
        "model": predictor.model_info(),
    }


def _own_stage() -> dict:
    """A `ray_remote_args_fn` that changes nothing, but keeps stage A an operator of its own: Ray Data
    2.60 fuses a task map into the actor map after it when their resources are equal
    (logical/rules/operator_fusion.py), which would run read + decode + detect inside the actors."""
    return {}


def _model_identity(model: dict) -> dict:
    """What names a model for --resume: everything model_info says but where its file is."""
    return {
        task: None if info is None else {k: v for k, v in info.items() if k != "checkpoint"}
        for task, info in model.items()
    }


def _check_resumable(recorded: dict, current: dict, out: str) -> None:
    """A resume continues the same run: same INPUT, models and output options, else a UserError."""
    for key in OUTPUT_OPTIONS:
        was, now = recorded.get(key), current.get(key)
        if key == "model":
            was, now = _model_identity(was or {}), _model_identity(now or {})
        if was != now:
            what = {
                "input": "INPUT",
                "input_kind": "INPUT's kind",
                "mode": "detect mode",
                "model": "models",
                "jsonl": "--jsonl",
                "annotate_dir": "--annotate",
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


def _write_listing(spec: LabelInput, fs: pafs.FileSystem, out: str, progress: bool) -> dict:
    """Stream the input listing into OUT/_work/inputs-NNNNN.parquet (a bounded chunk in memory at a
    time), then OUT/_work/listing.json (it is complete). A resume reuses a complete listing."""
    listing = read_json(fs, f"{out}/{LISTING_FILE}")
    if listing is not None:
        return listing
    work = f"{out}/{WORK_DIR}"
    if fs.get_file_info(work).type == pafs.FileType.Directory:
        fs.delete_dir(work)  # an interrupted listing: list again
    fs.create_dir(work, recursive=True)
    counts, files = ListingCounts(), []
    schema = FILE_WORK_SCHEMA if spec.kind == "images" else CROP_WORK_SCHEMA
    for i, table in enumerate(iter_work_tables(spec, counts)):
        name = f"{work}/inputs-{i:05d}.parquet"

        def write(stream: Any, table: pa.Table = table) -> None:
            pq.write_table(table.cast(schema), stream)

        write_file(name, write, fs=fs)
        files.append(name)
        if progress and i and i % 10 == 0:
            print(f"label: listed {counts.inputs:,} inputs", file=sys.stderr, flush=True)
    listing = {"files": files, "total": counts.inputs, "skipped_files": counts.skipped_files}
    write_json(fs, f"{out}/{LISTING_FILE}", listing)
    return listing


def _work_dataset(spec: LabelInput, listing: dict, fs: pafs.FileSystem, rows_per_block: int):
    """The Ray Dataset of work rows (lazy; image bytes are not read here), in blocks of
    `rows_per_block` rows (one stage-A call and, further on, one part file each)."""
    import ray.data

    if spec.kind == "dataset":
        ds = ray.data.read_parquet(spec.split_dirs, filesystem=spec.filesystem).select_columns(DATASET_COLUMNS)
    else:
        ds = ray.data.read_parquet(listing["files"], filesystem=fs)
    return ds.repartition(target_num_rows_per_block=rows_per_block)  # streaming: no shuffle, no barrier


def _stream(pipeline, total: int, resumed: int, progress: bool) -> tuple[float, int, int]:
    """Follow the parts as they are written (one small row each), with a progress line every
    PROGRESS_EVERY_S seconds. Returns (seconds to the first part, images in it, images written)."""
    started = last = time.perf_counter()
    first, images, faces, errors = None, 0, 0, 0
    for table in pipeline.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=4):
        arrived = time.perf_counter()
        images += int(pc.sum(table["images"]).as_py() or 0)
        faces += int(pc.sum(table["faces"]).as_py() or 0)
        errors += int(pc.sum(table["errors"]).as_py() or 0)
        if first is None and images:
            first = (arrived - started, images)
        if progress and arrived - last >= PROGRESS_EVERY_S:
            last = arrived
            print(
                f"label: {resumed + images:,}/{total:,} images, {faces:,} faces, {errors:,} errors, "
                f"{images / (arrived - started):,.1f} images/s",
                file=sys.stderr,
                flush=True,
            )
    first = first if first is not None else (time.perf_counter() - started, images)
    return first[0], first[1], images


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
    detector: Any = None,
    resume: bool = False,
    stages: str = "split",
    trust_torchscript: bool = False,
    backend: str = "auto",
) -> LabelSummary:
    """Label every face of INPUT with the Predictor in Ray Data stages; see the module docstring.

    out, annotate_dir: a local path or a URI (s3://, gs://, file://, ...): written by the workers.
    detect: how faces are found in image files: "auto" (a square image of at most 128 px is one face
    crop, others are searched; without OpenCV those become error rows), "crop" (each image is one
    face) or "detect" (always search; needs OpenCV). Data set and CSV rows are crops unless "detect".
    concurrency: network actors (int), (min, max) for an autoscaling pool, or None: fill the machine
    or cluster (`_auto_concurrency`). num_cpus: CPUs reserved per actor; threads: torch threads per
    actor (None: Ray's default, one per reserved CPU). use_gpu: one GPU per actor (None: when the
    cluster has GPUs). detector: an object with `detect(grey) -> [(x, y, w, h)...]` (largest first)
    used instead of OpenCV's; it is pickled to every task. resume: finish the unfinished run in OUT
    (see the module docstring). stages: "split" (A | B | C) or "single" (A+B in the actors | C).
    """
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
        min_actors, max_actors = _actor_range(concurrency)  # bad values fail before Ray starts
    # OUT first: an unwritable destination or a folder we must not touch fails before any model loads.
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
    try:
        check_writable(out_fs, out_path, "--out")
        if ann_fs is not None and ann_path is not None:  # annotate_dir given
            check_writable(ann_fs, ann_path, "--annotate")
        spec: LabelInput = resolve_input(input)
        mode = "crop" if spec.crop_mode and detect == "auto" else detect
        use_detector = _detector_available(mode, detector)
        metadata = {
            **_model_metadata(keypoints, emotion, trust_torchscript, backend),
            "input": spec.identity,
            "input_kind": spec.kind,
            "mode": mode,
            "jsonl": jsonl,
            "annotate_dir": (annotate_dir if "://" in annotate_dir else ann_path) if annotate_dir else None,
        }
        recorded = (
            read_json(out_fs, f"{out_path}/{RUN_FILE}") if resume and state in ("unfinished", "complete") else None
        )
        if recorded is not None:
            _check_resumable(recorded, metadata, out)

        from emokp_ray.ray_utils import init_ray

        init_ray()
        task_cpus = WRITE_CPUS + (PREPARE_CPUS if stages == "split" else 0.0)  # one task of each task stage
        if concurrency is None:
            concurrency = _auto_concurrency(use_gpu, num_cpus, task_cpus)
            min_actors, max_actors = _actor_range(concurrency)
        gpu = _check_resources(use_gpu, min_actors, num_cpus, task_cpus)
    except BaseException:
        for fs, path in made:  # refused before anything was written: leave no empty folder behind
            try:
                if not fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                    fs.delete_dir(path)
            except OSError:  # it was never created (e.g. a file where its parent folder should be)
                pass
        raise
    if state == "complete":
        if resume:
            recorded_summary = read_json(out_fs, f"{out_path}/{SUMMARY_FILE}")
            if recorded_summary is None:  # folder_state found it a moment ago
                raise UserError(f"--out {out}: {SUMMARY_FILE} disappeared while resuming; run again")
            finished = LabelSummary.from_dict(recorded_summary)
            if progress:
                print(f"label: {out} is already complete; nothing to resume", file=sys.stderr, flush=True)
            return finished
        clear_output(out_fs, out_path)  # an earlier finished output of ours is replaced
    if recorded is None:
        if ann_fs is not None and ann_fs.get_file_info(f"{ann_path}/{ANNOTATIONS_FILE}").type == pafs.FileType.File:
            ann_fs.delete_dir_contents(ann_path)  # an earlier run's annotations are replaced too
        write_json(out_fs, f"{out_path}/{RUN_FILE}", metadata)
    elif remove_unfinished_parts(out_fs, out_path) and progress:
        print("label: removed the unfinished parts of the interrupted run", file=sys.stderr, flush=True)
    for folder in (PARQUET_DIR, JSONL_DIR if jsonl else None):
        if folder:
            out_fs.create_dir(f"{out_path}/{folder}", recursive=True)
    listing = (
        _write_listing(spec, out_fs, out_path, progress)
        if spec.kind != "dataset"
        else {"total": spec.total, "skipped_files": 0}
    )
    total = listing["total"]
    if progress:
        skipped = f", {listing['skipped_files']:,} other files skipped" if listing["skipped_files"] else ""
        print(f"label: {input}: {total:,} inputs ({spec.detail}{skipped})", file=sys.stderr, flush=True)
        if mode == "auto" and not use_detector and not spec.crop_mode:
            print(
                "label: OpenCV is not installed: images that are not face crops become error rows "
                "(pip install 'emokp-ray[detect]', or detect='crop')",
                file=sys.stderr,
                flush=True,
            )
    done = done_hashes(out_fs, out_path) if recorded is not None else None
    resumed = 0 if done is None else len(done)
    if progress and resumed:
        print(f"label: resuming: {resumed:,} of {total:,} inputs are already written", file=sys.stderr, flush=True)

    import ray.data

    compute = ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors)
    actors = (
        f"{min_actors}" if min_actors == max_actors else f"{min_actors}-{max_actors}"
    ) + f" actor{'s' if max_actors > 1 else ''}"
    actors += f" x {num_cpus:g} CPU{' + 1 GPU' if gpu else ''}, " + (
        f"{threads} torch threads" if threads else "default threads"
    )
    schema = OUTPUT_SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    sizes = sorted({info["input_size"] for info in metadata["model"].values() if info})
    pixels = annotate_dir is not None
    device = "cuda" if gpu else "cpu"
    started = time.perf_counter()
    startup, done_at_startup, written = 0.0, 0, 0
    if resumed < total:
        rows_per_block = max(1, min(batch_size * ROWS_PER_CALL_BATCHES, -(-(total - resumed) // (2 * max_actors))))
        done_ref = ray.put(done) if done is not None and len(done) else None
        with parquet_footer_readers(1):
            ds = _work_dataset(spec, listing, out_fs, rows_per_block)
            prepare_kwargs = dict(
                filesystem=spec.filesystem, mode=mode, detector=detector, pixels=pixels, done=done_ref
            )
            if stages == "split":
                prepared = ds.map_batches(
                    prepare_block,
                    fn_kwargs=dict(sizes=sizes, **prepare_kwargs),
                    batch_size=None,
                    batch_format="pyarrow",
                    zero_copy_batch=True,
                    num_cpus=PREPARE_CPUS,
                    ray_remote_args_fn=_own_stage,
                )
                labeled = prepared.map_batches(
                    FaceNetworks,
                    fn_constructor_kwargs=dict(
                        keypoints=keypoints,
                        emotion=emotion,
                        device=device,
                        threads=threads,
                        batch_size=batch_size,
                        trust_torchscript=trust_torchscript,
                        backend=backend,
                    ),
                    batch_size=None,
                    batch_format="pyarrow",
                    zero_copy_batch=True,
                    compute=compute,
                    num_cpus=num_cpus,
                    num_gpus=1 if gpu else 0,
                )
            else:
                labeled = ds.map_batches(
                    BatchLabeler,
                    fn_constructor_kwargs=dict(
                        keypoints=keypoints,
                        emotion=emotion,
                        device=device,
                        threads=threads,
                        batch_size=batch_size,
                        trust_torchscript=trust_torchscript,
                        backend=backend,
                        **prepare_kwargs,
                    ),
                    batch_size=None,
                    batch_format="pyarrow",
                    zero_copy_batch=True,
                    compute=compute,
                    num_cpus=num_cpus,
                    num_gpus=1 if gpu else 0,
                )
            written_parts = labeled.map_batches(
                write_block,
                fn_kwargs=dict(
                    filesystem=out_fs,
                    out=out_path,
                    schema=schema,
                    jsonl=jsonl,
                    annotate_fs=ann_fs,
                    annotate_dir=ann_path,
                    class_names=metadata["emotion_classes"],
                ),
                batch_size=None,
                batch_format="pyarrow",
                zero_copy_batch=True,
                num_cpus=WRITE_CPUS,
            )
            startup, done_at_startup, written = _stream(written_parts, total, resumed, progress)
    seconds = time.perf_counter() - started

    counts = summarize(out_fs, out_path, metadata["emotion_classes"])  # from what was written
    if counts["images"] != total:
        raise RuntimeError(
            f"{out}: {counts['images']:,} images written for {total:,} inputs: rows were lost or duplicated"
        )
    steady = (
        (written - done_at_startup) / (seconds - startup) if seconds > startup and written > done_at_startup else 0.0
    )
    location = out.rstrip("/")
    summary = LabelSummary(
        input=spec.location,
        input_kind=spec.kind,
        images=counts["images"],
        faces=counts["faces"],
        no_face=counts["no_face"],
        errors=counts["errors"],
        skipped_files=listing["skipped_files"],
        seconds=round(seconds, 3),
        images_per_s=round(written / seconds, 2) if seconds > 0 else 0.0,
        startup_s=round(startup, 3),
        steady_images_per_s=round(steady, 2),
        parquet=f"{location}/{PARQUET_DIR}",
        jsonl=f"{location}/{JSONL_DIR}" if jsonl else None,
        annotate_dir=annotate_dir,
        actors=actors,
        stages=stages,
        resumed=resumed,
        emotions=counts["emotions"],
    )
    options = dict(
        batch_size=batch_size,
        concurrency=list(concurrency) if isinstance(concurrency, tuple) else concurrency,
        use_gpu=gpu,
        detect=detect,
        num_cpus=num_cpus,
        threads=threads,
        stages=stages,
    )
    if annotate_dir:
        write_json(ann_fs, f"{ann_path}/{ANNOTATIONS_FILE}", {"input": spec.location, "labels": summary.parquet})
    write_json(
        out_fs,
        f"{out_path}/{SUMMARY_FILE}",
        {**summary.to_dict(), **metadata, "rows": counts["rows"], "options": options},
    )
    return summary
