"""The model deployment: one Predictor per replica; each call is a batch of images, one forward pass.

The ingress gathers concurrent requests' images with `@serve.batch` (app.py) and sends each batch as
ONE call (a list of `FaceJob`s); `run_jobs` turns it into ONE `Predictor.predict` call, so all faces
of all images go through each network in one batched forward pass. Results travel back as
`Outcome`s, so a user's mistake in one image (a UserError from the predictor) fails that image
alone, not its batch-mates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from emokp_ray.errors import UserError
from emokp_ray.inference.detect import INSTALL_HINT, detector_installed
from emokp_ray.inference.results import Box, is_face_crop
from emokp_ray.serving.process import (
    MemoryTrimmer,
    fix_mmap_threshold,
    freeze_startup_heap,
    idle_cpu_priority,
    lower_cpu_priority,
)
from emokp_ray.serving.schemas import AppArgs

if TYPE_CHECKING:
    from emokp_ray.inference.predictor import Predictor
    from emokp_ray.inference.results import ImageResult

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class FaceJob:
    """One image for the model: grey uint8 [H, W], or RGB [H, W, 3] for a photo MTCNN searches (it
    uses colour; the ingress sends grey otherwise); mode "auto" | "detect" | "crop"; the caller's
    boxes (x, y, w, h) in image pixels, which override the mode, or None; when the ingress queued it
    for batching (time.perf_counter() there, for the queue-wait metric)."""

    image: np.ndarray
    mode: str = "auto"
    boxes: tuple[Box, ...] | None = None
    submitted_s: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """The model's answer to one FaceJob: a result, or a user-facing error with its HTTP status."""

    result: ImageResult | None = None
    error: str | None = None
    status: int = 200


def job_boxes(job: FaceJob) -> list[Box] | None:
    """The job as per-image boxes for one `predict(..., mode="detect")` call: the caller's boxes;
    the whole image for a crop (mode "crop", or "auto" on a small square image, by the predictor's
    own AUTO_CROP_MAX_SIDE rule); None where faces must be detected."""
    if job.boxes is not None:
        return list(job.boxes)
    height, width = job.image.shape[:2]
    if is_face_crop(job.mode, height, width):
        return [(0.0, 0.0, float(width), float(height))]
    return None


def run_jobs(predictor: Predictor, jobs: Sequence[FaceJob], max_faces: int | None = None) -> list[Outcome]:
    """Predict every job in ONE `predictor.predict` call, so all faces of all images go through each
    network in one batched forward pass, whatever mix of modes and boxes the batch holds. A
    UserError (e.g. detection without OpenCV) fails only the jobs that cause it: the batch is then
    retried one job at a time. max_faces (AppArgs.max_faces_per_image): a searched photo keeps its
    largest faces only, so a crowd costs the networks no more than that many crops."""
    try:
        results = predictor.predict(
            [job.image for job in jobs], mode="detect", boxes=[job_boxes(job) for job in jobs], max_faces=max_faces
        )
    except UserError as err:
        if len(jobs) == 1:
            return [Outcome(error=str(err).splitlines()[0], status=422)]
        return [outcome for job in jobs for outcome in run_jobs(predictor, [job], max_faces)]
    return [Outcome(result=r) for r in results]


@serve.deployment(
    name="FaceModel",
    ray_actor_options={"num_cpus": 0.5},
    # Counted in CALLS, each a batch of up to max_batch_size images: two may run at once (one forward
    # each, in threads; the ingress sends two at once, AppArgs.max_concurrent_batches); past
    # max_queued_requests waiting calls the ingress's handle raises
    # BackPressureError at once, which the ingress answers with 503.
    max_ongoing_requests=2,
    max_queued_requests=4,
    # A busy ingress keeps AppArgs.max_concurrent_batches (2) calls in flight, so a saturated model
    # replica has ~2 ongoing and a lone client's ~1: a target of 1.5 adds a replica only for the first.
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1.5},
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class FaceModel:
    """Loads the checkpoints once; answers batches of FaceJobs, one forward pass per batch."""

    def __init__(self, args: AppArgs):
        import torch

        from emokp_ray.inference.predictor import Predictor

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        detect = args.detect and detector_installed(args.detector)
        if args.detect and not detect:
            logger.warning(
                "face detection is off: OpenCV is not installed (%s); crops and caller boxes still work", INSTALL_HINT
            )
        self.predictor = Predictor.from_paths(
            args.keypoints,
            args.emotion,
            device=args.device,
            detect=detect,
            trust_torchscript=args.trust_torchscript,
            backend=args.backend,
            overlap_networks=args.overlap_networks,
            detector=args.detector,
            detector_threshold=args.detector_threshold,
        )
        self._info = {"model": self.predictor.model_info(), "labels": self.predictor.labels()}
        self.max_faces = args.max_faces_per_image
        self.trimmer = MemoryTrimmer(args.trim_memory_idle_s)
        if args.trim_memory_idle_s is not None:
            fix_mmap_threshold()
        self.ongoing = 0  # calls in flight
        # Last, so that the threads the loading started are reniced too (AppArgs.model_niceness),
        # and the loaded modules and weights are left out of every later garbage collection.
        if args.model_niceness != "idle":
            lower_cpu_priority(args.model_niceness)
        elif not idle_cpu_priority():
            logger.warning("SCHED_IDLE is not available here: the model replica runs at nice 19 instead")
            lower_cpu_priority(19)
        freeze_startup_heap()

    def info(self) -> dict[str, Any]:
        """{"model": Predictor.model_info(), "labels": Predictor.labels()}."""
        return self._info

    async def predict(self, jobs: list[FaceJob]) -> list[Outcome]:
        """One batch (the ingress's) -> one Outcome per job, in order."""
        # In a worker thread, so the replica keeps answering health checks and info meanwhile.
        self.trimmer.start(lambda: self.ongoing > 0)
        self.ongoing += 1
        self.trimmer.touch()
        try:
            return await asyncio.to_thread(run_jobs, self.predictor, jobs, self.max_faces)
        finally:
            self.ongoing -= 1
            self.trimmer.touch()

    async def check_health(self) -> None:
        """Raises (so Serve restarts the replica) when the networks no longer answer a blank crop."""
        faces = await asyncio.to_thread(self.predictor.predict_crops, np.zeros((1, 96, 96), np.uint8))
        if len(faces) != 1:
            raise RuntimeError(f"health check: {len(faces)} results for one crop")
