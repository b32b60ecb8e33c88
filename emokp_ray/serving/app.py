"""The Serve application: a FastAPI ingress in front of the model deployment.

    POST /v1/predict         one image -> {"width", "height", "faces": [...], "model": {...}}
    POST /v1/predict/batch   several images -> {"results": [one per image, in order], "model": {...}}
    GET  /v1/labels          keypoint names, emotion classes, label scheme
    GET  /healthz            {"status": "ok", ...} once the model answers
    GET  /                   the demo page

Every request is admitted first, before its body is read (at most max_pending_requests images in
flight per ingress replica, and only while the work admitted ahead would be answered within
max_queue_wait_s, else an immediate 503), so overload costs the service nothing. Then the
ingress reads the body (size cap, timeout), checks the cheap limits (JSON nesting, image and box
counts) before validating the rest, reads every image's size from its header and refuses a request
whose pixels pass max_request_pixels (413) or whose large images would take the replica past
max_replica_pixels decoded pixels (503; crops never wait for large images), decodes (in a worker thread unless the image is small, by pixels and bytes),
admits the request's own work (images, faces, searched pixels: batching.WaitBudget) against the
expected-wait budget, batches the grey pixels of concurrent requests with `@serve.batch` into one
call to `FaceModel` (one forward pass) and, on request, draws the annotated image (scaled down,
PNG or JPEG within max_annotation_bytes). Errors are JSON {"error": "..."} with
400/408/413/415/422/503 (http_input.py says which); a 500 means a bug.

`build_app` is the typed builder named by serve/config.yaml; `compose` also takes deployment
options, for tests and benchmarks.
"""

# No `from __future__ import annotations` here: FastAPI must see real classes (Request) in the
# route signatures of the class-based ingress, which Serve rewrites.

import asyncio
import base64
import dataclasses
import importlib
import io
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from emokp_ray import __version__
from emokp_ray.builtin import is_builtin
from emokp_ray.inference.results import is_face_crop
from emokp_ray.serving import metrics as serve_metrics
from emokp_ray.serving.batching import Admission, BatchWindow, WaitBudget, job_units
from emokp_ray.serving.http_input import (
    ApiError,
    ImageInput,
    batch_request,
    check_boxes,
    decode,
    options_from_fields,
    predict_request,
    probe,
    read_body,
)
from emokp_ray.serving.model import FaceJob, FaceModel, Outcome, job_boxes
from emokp_ray.serving.process import MemoryTrimmer, fix_mmap_threshold, freeze_startup_heap
from emokp_ray.serving.schemas import (
    DETECT_TO_MODE,
    MAX_CONCURRENT_BATCHES,
    AppArgs,
    BatchResponse,
    LabelsResponse,
    NoOptions,
    PredictResponse,
)

logger = logging.getLogger("ray.serve")
# An image is decoded on the event loop only when it is small in bytes AND in pixels (a 96x96 crop:
# ~0.1 ms); anything larger, whatever its compressed size (a flat 20000x1000 PNG is 60 KB), goes to
# a worker thread, so no decode stalls the other requests.
INLINE_DECODE_BYTES = 64 * 1024
INLINE_DECODE_PIXELS = 256 * 256
OVERLOADED = "the service is overloaded; retry later"
TOO_LONG = "the service's queue would keep this request past max_queue_wait_s; retry later"
# What the request path imports on first use (decoding, drawing, the model's result classes): imported
# by the constructor instead, so that freeze_startup_heap leaves them out of later collections. None
# of them imports torch: the ingress never runs a network.
REQUEST_PATH_MODULES = ("emokp_ray.inference.images", "emokp_ray.inference.render", "emokp_ray.inference.results")
RETRY_AFTER_S = 1  # seconds, in the Retry-After header of every 503

# Swagger/ReDoc pages load scripts from a CDN: off. /openapi.json stays.
api = FastAPI(title="emokp-ray", version=__version__, docs_url=None, redoc_url=None)
api.add_middleware(serve_metrics.RequestMetrics)  # emokp_requests_total{route, status} (metrics.py)


def _error(status: int, message: str) -> JSONResponse:
    # A 503 (overload, busy decoding) says when to come back: well-behaved clients wait that long
    # instead of resending at once, which keeps a full service's refusals cheap.
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return _error(err.status, err.message)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    # 404 unknown route, 405 wrong method: same JSON shape as every other error.
    return _error(err.status_code, str(err.detail))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    return _error(422, f"invalid request: {err.errors()}")


@api.exception_handler(Exception)
async def _internal_error(request: Request, err: Exception) -> JSONResponse:
    # A bug, not a user's mistake: logged with its traceback (Starlette re-raises it after this).
    logger.error("internal error on %s %s: %r", request.method, request.url.path, err)
    return _error(500, "internal server error (logged on the server)")


# An annotated image up to this many pixels is sent as PNG (exact, and small at this size); a larger
# one as JPEG, which takes a tenth of PNG's bytes on a photo (a 24 M-pixel photo's PNG was 72 MB).
PNG_MAX_PIXELS = 512 * 512
JPEG_QUALITIES = (85, 70, 50)
MIN_ANNOTATED_SIDE = 64


def _scaled_result(result: Any, scale: float) -> Any:
    """`result` with every box, keypoint and landmark multiplied by `scale` (for a resized image)."""

    def points(named: dict | None) -> dict | None:
        return None if named is None else {k: (x * scale, y * scale) for k, (x, y) in named.items()}

    faces = [
        dataclasses.replace(
            face,
            box=tuple(v * scale for v in face.box),
            keypoints=points(face.keypoints),
            landmarks=points(face.landmarks),
        )
        for face in result.faces
    ]
    return dataclasses.replace(
        result, width=round(result.width * scale), height=round(result.height * scale), faces=faces
    )


def annotated_image(pixels: Any, result: Any, max_side: int, max_bytes: int) -> tuple[bytes, str]:
    """The image with boxes, keypoints and emotion labels drawn (render.annotate), at most `max_side`
    pixels on its longer side and `max_bytes` encoded: (bytes, media type). Drawn after scaling
    down (drawing on 24 M pixels, then encoding them, took seconds and 96 MB of base64); PNG up to
    PNG_MAX_PIXELS, else JPEG at falling quality, then at halving sides, until it fits."""
    from PIL import Image

    from emokp_ray.inference.render import annotate

    height, width = pixels.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    image = Image.fromarray(pixels)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        result = _scaled_result(result, scale)
    canvas = annotate(np.asarray(image), result)
    del image
    while True:
        if canvas.width * canvas.height <= PNG_MAX_PIXELS:
            data = _encoded(canvas, "PNG")
            if len(data) <= max_bytes:
                return data, "image/png"
        for quality in JPEG_QUALITIES:
            data = _encoded(canvas, "JPEG", quality=quality)
            if len(data) <= max_bytes:
                return data, "image/jpeg"
        if min(canvas.size) <= MIN_ANNOTATED_SIDE:
            return data, "image/jpeg"  # a 64 px JPEG: a few KB, under any max_bytes AppArgs allows
        canvas = canvas.resize((max(1, canvas.width // 2), max(1, canvas.height // 2)), Image.Resampling.BILINEAR)


def _encoded(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _decode_for_model(image: ImageInput, args: AppArgs) -> tuple[Any, Any]:
    """(pixels as decoded, grey pixels for the model): the grey copy is what crosses to the model
    replica (a third of an RGB image's bytes); the colour one stays here for the annotation."""
    from emokp_ray.inference.images import to_grey

    pixels = decode(image, args.max_image_pixels)
    return pixels, to_grey(pixels)


def _no_query(request: Request) -> None:
    """GET routes take no options: any query parameter is a 422."""
    options_from_fields(request.query_params.multi_items(), NoOptions, "query")


def _check_headers(request: Request, limit: int) -> None:
    """431 when the request's headers (names and values) add up to more than `limit` bytes: Serve's
    proxy (uvicorn with httptools) sets no cap of its own."""
    size = sum(len(name) + len(value) + 4 for name, value in request.headers.raw)
    if size > limit:
        raise ApiError(431, f"request headers of {size} bytes exceed the limit of {limit} bytes")


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.25},
    # Far above AppArgs.max_pending_requests (64): every request goes straight to the ingress, whose
    # admission answers the excess with a JSON 503 before reading its body. A limit near the
    # admission limit queues requests at Serve's proxy instead, and most refusals become its slow
    # plain-text 503s (benchmarks/serve_latency.py --configs overload). The proxy's queue is only a
    # backstop.
    max_ongoing_requests=1024,
    max_queued_requests=128,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
    health_check_period_s=10,
    health_check_timeout_s=30,
)
@serve.ingress(api)
class Ingress:
    """HTTP front: parses and checks requests, calls FaceModel, shapes the JSON answers."""

    # Serve awaits an async constructor; Python's data model, and so mypy, knows none.
    async def __init__(self, model: DeploymentHandle, args: AppArgs):  # type: ignore[misc]
        self.model = model
        self.args = args
        self.page = resources.files("emokp_ray.serving").joinpath("static/index.html").read_text("utf-8")
        # {"model": Predictor.model_info(), "labels": Predictor.labels()}, asked once, before any
        # traffic (asked later, it would queue behind predictions and could meet backpressure).
        self.info: dict[str, Any] = await model.info.remote()
        # @serve.batch adds these setters to the method at runtime; its stub's return type omits them.
        self._predict_jobs.set_max_batch_size(args.max_batch_size)  # type: ignore[attr-defined]
        self._predict_jobs.set_batch_wait_timeout_s(args.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.window = BatchWindow(args.batch_wait_timeout_s, args.busy_batch_wait_max_s)
        # Model calls this replica keeps in flight (AppArgs.max_concurrent_batches); the batcher's
        # own cap, MAX_CONCURRENT_BATCHES, is fixed when the class is defined.
        self.model_calls = asyncio.Semaphore(args.max_concurrent_batches)
        self.admission = Admission(args.max_pending_requests)  # images in flight
        self.pixels = Admission(args.max_replica_pixels)  # decoded pixels held at once
        # Work admitted and unanswered, against the expected-wait budget (max_queue_wait_s).
        self.wait = WaitBudget(args.max_queue_wait_s, args.max_concurrent_batches)
        self.trimmer = MemoryTrimmer(args.trim_memory_idle_s)
        if args.trim_memory_idle_s is not None:
            fix_mmap_threshold()
        self.trimmer.start(lambda: self.admission.pending > 0)
        self.metrics = serve_metrics.get()
        for module in REQUEST_PATH_MODULES:
            importlib.import_module(module)
        # Last: full collections under load then walk only what requests allocate (a refusal waits
        # behind any collection in progress; process.py gives the figures).
        freeze_startup_heap()

    async def in_flight(self) -> int:
        """Images admitted and not yet answered on this replica (`emokp serve` waits for 0 to drain)."""
        return self.admission.pending

    def _admit(self, images: int) -> None:
        """Take `images` admission slots or refuse the request with 503 at once: past
        max_pending_requests images, or when even one crop would wait past max_queue_wait_s."""
        self.trimmer.touch()
        if not self.wait.fits(images * job_units(1)):
            self.metrics.refused.inc(tags={"reason": "wait"})
            raise ApiError(503, TOO_LONG)
        if not self.admission.try_enter(images):
            self.metrics.refused.inc(tags={"reason": "images"})
            raise ApiError(503, OVERLOADED)

    def _work(self, items: list[ImageInput | ApiError], headers: list[Any], detect: str) -> float:
        """The request's expected work units (batching.job_units), from its images' headers: caller
        boxes and crops count their faces; a photo to search, its pixels and the recent faces per
        photo (a detector-less replica searches nothing: such a photo fails at once)."""
        mode = DETECT_TO_MODE[detect]
        units = 0.0
        for item, header in zip(items, headers):
            if isinstance(item, ApiError) or isinstance(header, ApiError):
                continue
            if item.boxes is not None:
                units += job_units(len(item.boxes))
            elif is_face_crop(mode, header.height, header.width):
                units += job_units(1)
            else:
                units += self.wait.estimate(header.pixels)
        return units

    async def _headers(self, items: list[ImageInput | ApiError]) -> list[Any]:
        """Each image's header (size, format) or its ApiError, no pixel decoded; a large upload's
        header is parsed in a thread (a PNG can hold megabytes of chunks before its pixels)."""

        async def one(item: ImageInput | ApiError) -> Any:
            if isinstance(item, ApiError):
                return item
            try:
                if len(item.data) <= INLINE_DECODE_BYTES:
                    return probe(item, self.args.max_image_pixels)
                return await asyncio.to_thread(probe, item, self.args.max_image_pixels)
            except ApiError as err:
                return err

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def _predict_images(self, items: list[ImageInput | ApiError], detect: str, annotate: bool) -> list[Any]:
        """One answer per item, in order: a dict, or the ApiError of that image. The request's total
        pixels (from the headers) are checked against max_request_pixels (413) and reserved from
        the replica's decoded-pixel budget (503 when it is spent) before anything is decoded."""
        headers = await self._headers(items)
        total = sum(h.pixels for h in headers if not isinstance(h, ApiError))
        if total > self.args.max_request_pixels:
            raise ApiError(
                413,
                f"the request's images hold {total:,} pixels; the limit is {self.args.max_request_pixels:,} per request",
            )
        # Only large images draw on the replica's budget: a crop (<= INLINE_DECODE_PIXELS) costs
        # little and is already bounded by the image admission (max_pending_requests x 65,536
        # pixels), so a few large uploads can never starve the crops of everyone else.
        large = sum(h.pixels for h in headers if not isinstance(h, ApiError) and h.pixels > INLINE_DECODE_PIXELS)
        work = self._work(items, headers, detect)
        model_wait_s, admitted_s = self.wait.model_wait_s(work), time.perf_counter()
        if not self.wait.try_enter(work):
            self.metrics.refused.inc(tags={"reason": "wait"})
            raise ApiError(503, TOO_LONG)
        if not self.pixels.try_enter(large):
            self.wait.leave(work)
            self.metrics.refused.inc(tags={"reason": "pixels"})
            raise ApiError(503, "the service is busy decoding other large images; retry later")
        # A batch request shares the annotation budget between its images.
        annotation_bytes = max(16 * 1024, self.args.max_annotation_bytes // max(1, len(items)))
        try:
            answers = list(
                await asyncio.gather(
                    *(
                        self._predict_one(item, header, detect, annotate, annotation_bytes)
                        for item, header in zip(items, headers)
                    ),
                    return_exceptions=True,
                )
            )
            self.wait.answered(model_wait_s, time.perf_counter() - admitted_s)
            return answers
        finally:
            self.pixels.leave(large)
            self.wait.leave(work)

    async def _predict_one(
        self, image: ImageInput | ApiError, header: Any, detect: str, annotate: bool, annotation_bytes: int
    ) -> dict[str, Any]:
        """Decode, check boxes, predict one admitted image; ApiError for this image's problems."""
        if isinstance(image, ApiError):  # a bad item: its header is that same error
            raise image
        if isinstance(header, ApiError):
            raise header
        if len(image.data) <= INLINE_DECODE_BYTES and header.pixels <= INLINE_DECODE_PIXELS:
            pixels, grey = _decode_for_model(image, self.args)  # a crop: no thread hop
        else:
            pixels, grey = await asyncio.to_thread(_decode_for_model, image, self.args)
        height, width = grey.shape
        boxes = check_boxes(image.boxes, width, height, self.args.max_boxes_per_image, image.boxes_where)
        mode = DETECT_TO_MODE[detect]
        # MTCNN searches a photo in colour (as `emokp predict` and `emokp label` do); crops, caller
        # boxes and Haar need only the grey copy, a third of the bytes to the model replica.
        searched = boxes is None and not is_face_crop(mode, height, width) and self.args.detector == "mtcnn"
        model_pixels = pixels if searched and getattr(pixels, "ndim", 2) == 3 else grey
        job = FaceJob(model_pixels, mode, tuple(boxes) if boxes is not None else None, time.perf_counter())
        outcome: Outcome = await self._predict_jobs(job)
        if outcome.error is not None:
            raise ApiError(
                outcome.status, outcome.error if outcome.status == 503 else f"{image.source}: {outcome.error}"
            )
        result = outcome.result
        if result is None:
            raise RuntimeError("the model answered neither a result nor an error")
        out = {**result.to_dict(), "faces_dropped": result.faces_dropped}
        if annotate:
            data, media_type = await asyncio.to_thread(
                annotated_image, pixels, result, self.args.annotate_max_side, annotation_bytes
            )
            out["annotated_image_base64"] = base64.b64encode(data).decode("ascii")
            out["annotated_media_type"] = media_type
        return out

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.001, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _predict_jobs(self, jobs: list[FaceJob]) -> list[Outcome]:
        """Dynamic batching: concurrent requests' images go to the model as ONE call (one forward
        pass there). Batching here, before the hop, also pays the DeploymentHandle round trip once
        per batch instead of once per image (measured at 32 concurrent clients: ~10 ms of CPU per
        request over all processes, against 14-16 ms with @serve.batch in the model replica and one
        call per image). Up to max_concurrent_batches calls run at once, so a model replica's
        threads each get a batch; while all are busy the next batch's window stretches (BatchWindow)."""
        try:
            async with self.model_calls:
                self._set_batch_window()  # this call holds a slot now
                started = time.perf_counter()
                self.metrics.batch_size.observe(len(jobs))
                for job in jobs:
                    self.metrics.queue_wait.observe(started - job.submitted_s)
                call = id(jobs)
                self.wait.call_started(call, sum(self._job_units(job) for job in jobs))
                try:
                    outcomes: list[Outcome] = await self.model.predict.remote(jobs)
                    self.wait.call_done(call, self._measured_units(jobs, outcomes))
                    return outcomes
                except BackPressureError:
                    return [Outcome(error=OVERLOADED, status=503)] * len(jobs)
                except DeploymentUnavailableError as err:
                    return [Outcome(error=f"the model is unavailable: {err.message}", status=503)] * len(jobs)
                finally:
                    self.wait.call_failed(call)  # a no-op once call_done has run
                    self.window.record(time.perf_counter() - started)
                    self.metrics.model_latency.observe(time.perf_counter() - started)
        finally:
            self._set_batch_window()  # its slot is free again

    def _job_units(self, job: FaceJob) -> float:
        """A job's work units before the model runs (a searched photo's faces as the recent average)."""
        boxes = job_boxes(job)
        return self.wait.estimate(job.image.shape[0] * job.image.shape[1]) if boxes is None else job_units(len(boxes))

    def _measured_units(self, jobs: list[FaceJob], outcomes: list[Outcome]) -> float:
        """A call's work units as found (the faces each searched photo yielded, counted for the
        estimate of the photos that follow)."""
        units = 0.0
        for job, outcome in zip(jobs, outcomes):
            searched = job_boxes(job) is None
            faces = len(outcome.result.faces) if outcome.result is not None else 0
            units += job_units(faces, job.image.shape[0] * job.image.shape[1] if searched else 0)
            if searched and outcome.result is not None:
                self.wait.record_faces(faces)
        return units

    def _set_batch_window(self) -> None:
        """The batcher's wait for company: stretched while every model call slot is taken (the next
        batch could not go sooner anyway), short while one is free."""
        full = self.model_calls.locked()
        self._predict_jobs.set_batch_wait_timeout_s(self.window.busy_s() if full else self.window.idle_s)  # type: ignore[attr-defined]

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(self, request: Request) -> HTMLResponse:
        _check_headers(request, self.args.max_header_bytes)
        return HTMLResponse(self.page)

    @api.get("/healthz")
    async def healthz(self, request: Request) -> dict[str, Any]:
        """OK once the whole path answers: proxy -> ingress -> a model replica."""
        _check_headers(request, self.args.max_header_bytes)
        _no_query(request)
        try:
            info = await self.model.info.remote()
        except BackPressureError:
            raise ApiError(503, OVERLOADED) from None
        except DeploymentUnavailableError as err:
            raise ApiError(503, f"the model is unavailable: {err.message}") from None
        return {"status": "ok", "version": __version__, "model": info["model"]}

    @api.get("/v1/labels", response_model=LabelsResponse)
    async def labels(self, request: Request) -> dict[str, Any]:
        _check_headers(request, self.args.max_header_bytes)
        _no_query(request)
        return self.info["labels"]

    @api.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True)
    async def predict(self, request: Request) -> JSONResponse:
        _check_headers(request, self.args.max_header_bytes)
        self._admit(1)  # before the body is read: a refused request costs no reading, parsing or decoding
        try:
            body = await read_body(
                request.headers, request.stream(), self.args.max_body_bytes, self.args.body_timeout_s
            )
            image, options = predict_request(
                request.headers.get("content-type"),
                body,
                request.query_params.multi_items(),
                self.args.max_boxes_per_image,
            )
            del body
            self.metrics.images.observe(1)
            (answer,) = await self._predict_images([image], options.detect, options.annotate)
        finally:
            self.admission.leave(1)
            self.trimmer.touch()
        if isinstance(answer, BaseException):
            raise answer
        self.metrics.faces.observe(len(answer["faces"]))
        # A Response skips FastAPI's re-validation against response_model (which documents the shape).
        return JSONResponse({**answer, "model": self.info["model"]})

    @api.post("/v1/predict/batch", response_model=BatchResponse, response_model_exclude_none=True)
    async def predict_batch(self, request: Request) -> JSONResponse:
        _check_headers(request, self.args.max_header_bytes)
        self._admit(1)  # one slot before the body is read; the rest once the images are counted
        held = 1
        try:
            body = await read_body(
                request.headers, request.stream(), self.args.max_body_bytes, self.args.body_timeout_s
            )
            items, options = batch_request(
                request.headers.get("content-type"),
                body,
                request.query_params.multi_items(),
                self.args.max_images_per_request,
                self.args.max_boxes_per_image,
            )
            del body
            self._admit(len(items) - 1)
            held = len(items)
            self.metrics.images.observe(len(items))
            answers = await self._predict_images(items, options.detect, options.annotate)
        finally:
            self.admission.leave(held)
            self.trimmer.touch()
        results: list[dict[str, Any]] = []
        for answer in answers:
            if isinstance(answer, ApiError) and answer.status == 503:
                raise answer  # overload: the whole request is retried, not some of its images
            if isinstance(answer, ApiError):
                results.append({"error": answer.message, "status": answer.status})
            elif isinstance(answer, BaseException):
                raise answer
            else:
                results.append(answer)
        self.metrics.faces.observe(sum(len(r.get("faces", ())) for r in results))
        return JSONResponse({"results": results, "model": self.info["model"]})


def _absolute(path: str | None) -> str | None:
    # Replicas may run in another working directory: resolve where the builder runs. `builtin:NAME`
    # names a file inside the package, wherever that is installed: kept as it is.
    if not path or is_builtin(path):
        return path
    return str(Path(path).expanduser().resolve())


def compose(
    args: AppArgs, model_options: dict[str, Any] | None = None, ingress_options: dict[str, Any] | None = None
) -> serve.Application:
    """Bind the ingress to the model deployment; `*_options` override the deployments' defaults
    (`Deployment.options`: num_replicas, max_ongoing_requests, max_queued_requests, ...)."""
    args = args.model_copy(update={"keypoints": _absolute(args.keypoints), "emotion": _absolute(args.emotion)})
    ingress, face_model = _deployment(Ingress), _deployment(FaceModel)
    ingress_options = dict(ingress_options or {})
    ongoing = ingress_options.get("max_ongoing_requests", ingress.max_ongoing_requests)
    if ongoing < max(args.max_batch_size, args.max_pending_requests):
        raise ValueError(
            f"Ingress max_ongoing_requests {ongoing} < max_batch_size {args.max_batch_size} or "
            f"max_pending_requests {args.max_pending_requests}: batches could not fill, or excess "
            f"requests would queue at the proxy instead of getting a JSON 503"
        )
    model_options = dict(model_options or {})
    if "ray_actor_options" not in model_options and _wants_gpu(args.device):
        # Ray hides GPUs from actors that ask for none (CUDA_VISIBLE_DEVICES=""): ask for one.
        model_options["ray_actor_options"] = {**(face_model.ray_actor_options or {}), "num_gpus": 1}
    model = face_model.options(**model_options).bind(args)
    return ingress.options(**ingress_options).bind(model, args)


def _deployment(decorated: object) -> serve.Deployment:
    """A class that @serve.deployment turned into a Deployment, typed as one (mypy ignores what a
    class decorator returns and keeps the class)."""
    if not isinstance(decorated, serve.Deployment):
        raise TypeError(f"{decorated!r} is not a Serve deployment")
    return decorated


def _wants_gpu(device: str) -> bool:
    """device "cuda[:N]", or "auto" on a cluster that has a GPU."""
    if device.startswith("cuda"):
        return True
    import ray

    return device == "auto" and ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1


def build_app(args: AppArgs) -> serve.Application:
    """The app builder of serve/config.yaml: `args:` there are validated into AppArgs by Serve."""
    return compose(args)
