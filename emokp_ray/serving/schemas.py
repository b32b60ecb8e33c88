"""Typed shapes of the Serve app: the app builder's arguments, the request options and bodies, and
the responses. Unknown fields are errors everywhere (`extra="forbid"`): a misspelt option is a 422,
never a silently ignored default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from emokp_ray.inference.boxes import check_box, short_repr

# The `backend` names AppArgs accepts (inference/backends.py BACKENDS).
Backend = Literal["auto", "torch", "onnx", "onnx-int8"]

# AppArgs.model_niceness: a nice increment, or "idle" for Linux's SCHED_IDLE.
ModelNiceness = Annotated[int, Field(ge=0, le=19)] | Literal["idle"]

MiB = 1024 * 1024
# The ingress batcher's own cap on batches in flight (@serve.batch's, fixed when the class is
# defined); AppArgs.max_concurrent_batches, at most this, is the one in force.
MAX_CONCURRENT_BATCHES = 8


class AppArgs(BaseModel):
    """Arguments of the app builder (`serve/config.yaml` `args:`, or `run_serve`). Model paths are as
    `artifacts.export.load_model` accepts them: a checkpoint dir, a RUN_DIR (its `best/`), an exported
    .pt, .onnx or TorchScript file, or `builtin:NAME`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keypoints: str | None = None  # keypoint checkpoint; at least one of the two
    emotion: str | None = None  # emotion checkpoint
    # A TorchScript file is a program (export.load_model): loaded only when this says so.
    trust_torchscript: bool = False
    device: str = "cpu"  # "cpu" | "cuda" | "auto"
    # Where the networks run (inference/backends.py): auto = onnx where the onnx extra is installed
    # and the device is the CPU, else torch.
    backend: Backend = "auto"
    detect: bool = True  # load the face detector (photos need it; crops do not)
    # Which detector finds faces in photos (inference/detect.py): "mtcnn" (aligned crops by its 5
    # landmarks) or "haar"; detector_threshold: MTCNN's final score threshold in (0, 1), None = 0.7.
    detector: Literal["mtcnn", "haar"] = "mtcnn"
    detector_threshold: float | None = Field(default=None, gt=0.0, lt=1.0)
    # Dynamic batching in the ingress: up to max_batch_size images from concurrent requests go to the
    # model as one call, one forward pass; an idle model's batch waits at most batch_wait_timeout_s for
    # company; while a batch runs, the next may wait up to its expected duration, at most
    # busy_batch_wait_max_s (batching.BatchWindow says why; 0 keeps the window fixed).
    max_batch_size: int = Field(default=16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(default=0.001, ge=0.0, le=1.0)
    busy_batch_wait_max_s: float = Field(default=0.05, ge=0.0, le=1.0)
    # Model calls (batches) one ingress replica keeps in flight at once. FaceModel runs up to its
    # max_ongoing_requests (2) calls at a time, each in its own thread on one torch thread (Ray's
    # OMP_NUM_THREADS=1 at num_cpus 0.5): 2 keeps two cores busy under load; 1 sends batches one
    # after another.
    max_concurrent_batches: int = Field(default=2, ge=1, le=MAX_CONCURRENT_BATCHES)
    torch_threads: int | None = Field(default=None, ge=1)  # None: as Ray sets it (OMP_NUM_THREADS: 1 at num_cpus <= 1)
    # The emotion pass in a second thread while the keypoint pass runs (Predictor's overlap_networks):
    # None: the predictor's rule (on with >= 2 torch threads, so off at Ray's 1), true: always.
    overlap_networks: bool | None = None
    # How far the model replica's threads yield the CPU to the proxy and ingress, so that under
    # overload those still admit, refuse (503) and answer at once while the networks take every core;
    # with spare cores it changes nothing. "idle" (default): Linux's SCHED_IDLE, the model runs only
    # on a core nothing else wants (process.idle_cpu_priority; nice 19 where the OS refuses it).
    # 0-19: that much nicer than Ray started them, which still lets a model thread finish its time
    # slice before a waking front end gets the core. It tells most where the other processes run at
    # nice 0, as `emokp serve` starts them (Ray's default for workers is 15). Against 5, "idle"
    # refuses faster under open-loop overload for a few percent fewer answers, but leaves the model
    # far fewer answers under a flood of instant retries and next to nothing beside CPU-heavy work
    # at normal priority: set 5 there (figures: benchmarks/README.md, Serving).
    model_niceness: ModelNiceness = "idle"
    # Input limits: the body is refused past max_body_bytes (Content-Length, then while reading) and
    # when it has not arrived within body_timeout_s (408); an image whose header declares more than
    # max_image_pixels (at most Pillow's own 89 M ceiling), or a request whose images' headers add
    # up to more than max_request_pixels, is refused (413) before any of its images is decoded; an
    # ingress replica holds at most max_replica_pixels decoded pixels of large images (over 256x256)
    # at once (past it: 503); crops are bounded by max_pending_requests instead.
    max_body_bytes: int = Field(default=10 * MiB, ge=1024)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)  # all request headers together; 431 past it
    body_timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)
    max_image_pixels: int = Field(default=24_000_000, ge=64 * 64, le=89_478_485)
    max_request_pixels: int = Field(default=48_000_000, ge=64 * 64)
    max_replica_pixels: int = Field(default=96_000_000, ge=64 * 64)
    max_images_per_request: int = Field(default=32, ge=1)  # /v1/predict/batch
    # Overload: an ingress replica holds at most this many images admitted and unanswered; the next
    # gets 503 at once (keep the Ingress deployment's max_ongoing_requests above it).
    max_pending_requests: int = Field(default=64, ge=1)
    # Admission by expected wait (batching.WaitBudget): a request is admitted only while the work
    # admitted ahead of it plus its own (images, faces and searched pixels, in units whose time the
    # ingress measures on every model call) would be answered within this many seconds; else 503
    # with Retry-After at once. None: images are counted only (max_pending_requests).
    max_queue_wait_s: float | None = Field(default=2.0, gt=0.0, le=600.0)
    max_boxes_per_image: int = Field(default=32, ge=1)
    # Faces a searched photo may yield: the largest are kept, the answer's faces_dropped counts the
    # rest (a tiled image of 200 faces costs the networks 200 crops otherwise). None: no cap.
    max_faces_per_image: int | None = Field(default=32, ge=1, le=10_000)
    # annotate=true: the drawn image is scaled down to at most annotate_max_side pixels on its longer
    # side, encoded as PNG when small and JPEG otherwise, and re-encoded smaller until it fits in
    # max_annotation_bytes (a batch request shares that budget between its images).
    annotate_max_side: int = Field(default=1600, ge=64, le=20_000)
    max_annotation_bytes: int = Field(default=2 * MiB, ge=16 * 1024)
    # Memory returned: a replica that has been idle this long since its last request hands freed
    # heap back to the OS (process.MemoryTrimmer: glibc malloc_trim). None: never.
    trim_memory_idle_s: float | None = Field(default=2.0, gt=0.0, le=3600.0)

    @model_validator(mode="after")
    def _consistent(self) -> AppArgs:
        if not self.keypoints and not self.emotion:
            raise ValueError("give at least one checkpoint: keypoints or emotion")
        if not self.max_image_pixels <= self.max_request_pixels <= self.max_replica_pixels:
            raise ValueError(
                f"need max_image_pixels {self.max_image_pixels:,} <= max_request_pixels {self.max_request_pixels:,} "
                f"<= max_replica_pixels {self.max_replica_pixels:,}: a valid request could never be decoded"
            )
        if self.max_batch_size > self.max_pending_requests:
            raise ValueError(
                f"max_batch_size {self.max_batch_size} > max_pending_requests {self.max_pending_requests}: "
                f"a batch could never fill"
            )
        if self.max_images_per_request > self.max_pending_requests:
            raise ValueError(
                f"max_images_per_request {self.max_images_per_request} > max_pending_requests "
                f"{self.max_pending_requests}: a full batch request could never be admitted"
            )
        return self


# ----------------------------------------------------------------------------- request options

DetectOption = Literal["auto", "true", "false"]
# detect -> Predictor.predict mode: "auto" crops a square image of at most 128 px and detects
# faces in anything else; "true" always detects; "false" treats the whole image as one face crop.
DETECT_TO_MODE = {"auto": "auto", "true": "detect", "false": "crop"}


class BoxIn(BaseModel):
    """A caller's face box (x, y, w, h) in the input image's pixels, sent as [x, y, w, h] (or an
    object with exactly those keys). Its values are checked by inference/boxes.check_box, as the
    labeling listing's and the Python API's are: numbers only (no "1", no true), finite, within
    +-MAX_BOX_VALUE, w and h > 0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: float
    y: float
    w: float = Field(gt=0)
    h: float = Field(gt=0)

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, raw: object) -> object:
        if isinstance(raw, cls):  # already checked (merge_options passes the parsed boxes on)
            return raw
        if isinstance(raw, dict):
            if set(raw) != set("xywh"):
                raise ValueError(f"a box object has exactly the keys x, y, w, h, got {short_repr(list(raw))}")
            raw = [raw[k] for k in "xywh"]
        return dict(zip("xywh", check_box(raw)))

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)


class BatchOptions(BaseModel):
    """Options of POST /v1/predict/batch, from the query string or JSON fields (boxes go per image,
    inside the JSON items)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detect: DetectOption = "auto"
    annotate: bool = False  # also return the annotated image (base64 PNG or JPEG)

    @field_validator("detect", mode="before")
    @classmethod
    def _detect_text(cls, raw: object) -> object:
        # JSON true/false are accepted as well as the strings of the query form.
        if isinstance(raw, bool):
            return "true" if raw else "false"
        return raw.lower() if isinstance(raw, str) else raw


class PredictOptions(BatchOptions):
    """Options of POST /v1/predict, from the query string, form fields or JSON fields."""

    boxes: list[BoxIn] | None = None  # overrides detection; [] means "no faces here"


class NoOptions(BaseModel):
    """Options of the GET routes: none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PredictJson(PredictOptions):
    """JSON body of POST /v1/predict: {"image_base64": ..., "detect"?, "boxes"?, "annotate"?}."""

    image_base64: str


class BatchItemJson(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image_base64: str
    boxes: list[BoxIn] | None = None


class BatchJson(BatchOptions):
    """JSON body of POST /v1/predict/batch: {"images": [{"image_base64", "boxes"?}, ...], "detect"?, "annotate"?}."""

    images: list[BatchItemJson]


# ----------------------------------------------------------------------------- responses


class FaceOut(BaseModel):
    """One face of an answer (results.Face.to_dict). The fields after `landmarks` are the tasks'
    response fields (tasks.py `response_fields`, null where that model is absent): tests check the two
    agree, and validate the service's real answers against these models."""

    model_config = ConfigDict(extra="forbid")

    box: list[float]  # [x, y, w, h], input-image pixels (the detector's box)
    # The learned detector's confidence and 5 landmarks (name -> [x, y], input-image pixels); null for
    # Haar boxes, caller boxes and whole crops.
    score: float | None = None
    landmarks: dict[str, list[float]] | None = None
    keypoints: dict[str, list[float]] | None = None  # name -> [x, y], input-image pixels
    emotion: str | None = None
    probabilities: dict[str, float] | None = None


class ImageOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int
    height: int
    faces: list[FaceOut]
    faces_dropped: int = 0  # faces found past max_faces_per_image (the smallest), not analysed
    # With annotate=true: the drawn image (at most annotate_max_side px per side) and its type,
    # "image/png" or "image/jpeg".
    annotated_image_base64: str | None = None
    annotated_media_type: str | None = None


class ErrorOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str
    status: int | None = None  # in a batch result: the status this image alone would get


class PredictResponse(ImageOut):
    model: dict


class BatchResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    results: list[ImageOut | ErrorOut]
    model: dict


class LabelsResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keypoints: list[str] | None = None
    emotion: list[str] | None = None
    label_scheme: str | None = None
