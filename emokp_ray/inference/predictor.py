"""One predictor for batch and online inference: face crops or photos in, faces with keypoints and
emotion out. Batch labeling (Ray Data) and Serve both wrap this class; it never imports ray.

Pipeline per call: images -> faces (the whole crop, the caller's boxes, or the detector's: MTCNN by
default, with 5 landmarks; Haar with `--detector haar`) -> one S x S grey crop per face and per
network (meta.input_size: 96 keypoints, 48 or 96 emotion): ALIGNED by the landmarks where the
detector gave them, else axis-aligned -> ONE batched forward pass per model over all faces of all
images -> keypoints mapped back to the input image's pixels, softmax probabilities.

Coordinates: labels.py's pixel-centre convention throughout. A box (x, y, w, h) covers the corner
coordinates [x, x + w] x [y, y + h] (pixel column c spans [c, c + 1] there, so an integer box from a
detector covers columns x .. x + w - 1). A keypoint x_crop on an S x S crop of that box maps back to

    x_image = x + (x_crop + 0.5) * w / S - 0.5        (same in y with h)

which is exactly how the one resize (data/resize.py, Pillow's bilinear with a source `box`) samples:
output pixel centres at x + (i + 0.5) w / S.

Framing (Haar box -> training crop). Training crops are Kaggle-framed: eyes near y = 37.7 and the
bottom lip near y = 79.0 of 96 (means over Kaggle's file); the synthetic faces use the same frame.
Against the Haar (frontalface_alt2) box of the same face, the true crop box is FRAMING_MARGIN = 1.13
Haar sides wide and centred FRAMING_SHIFT_Y = 0.02 Haar sides below the Haar box's centre (medians
over synthetic photos and Kaggle crops, `benchmarks/framing.py`). Crops that reach past the photo's
edge are padded by replicating the edge pixels; the box is never shifted to fit (that would move the
face off the training framing). Caller boxes and Haar boxes take this axis-aligned path.

Aligned crops (MTCNN). Each network gets the crop that puts the 5 landmarks where its own training
set has them: the least-squares similarity (rotation, uniform scale, translation; Umeyama) from the
network's TEMPLATE (5 points in its S x S frame) to the detected landmarks maps crop pixels to photo
pixels; `warp_crop` samples it (bilinear, edge pixels replicated outside the photo; a face larger
than 1.25 photo px per crop px is first shrunk by area averaging, as training crops were), and the
keypoints come back through the same map. The two training sets are framed differently, so each
network has its own template (align.TEMPLATES): the median of each MTCNN landmark mapped back into
the crop frame, over TRAINING faces only (`benchmarks/framing.py --mtcnn`,
benchmarks/results/framing_mtcnn.json). MTCNN's points sit a little up and to the left of Kaggle's;
the templates absorb that offset and the fit averages the rest of the landmarks' noise over five
points. Because the crop is turned upright, a tilted face costs about as much as an upright one
(keypoint RMSE through the photo against the crop's own, up to +-45 degrees:
`benchmarks/framing.py --rotate-faces`, figures in benchmarks/README.md). What the framing itself
costs upright stays: Kaggle's crops normalise the eye-to-bottom-lip distance, which the five
landmarks do not see.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emokp_ray.artifacts.checkpoint import LoadedCheckpoint, weights_version
from emokp_ray.data.resize import resize_image, resize_images
from emokp_ray.errors import UserError
from emokp_ray.inference.align import aligned_to_image, box_to_image, warp_crop
from emokp_ray.inference.backends import make_runner, resolve_backend, run_model
from emokp_ray.inference.boxes import BoxError, check_box
from emokp_ray.inference.calibration import softmax, temperature_of
from emokp_ray.inference.detect import DEFAULT_DETECTOR, LANDMARK_NAMES, Detection, Detector, make_detector
from emokp_ray.inference.images import to_grey
from emokp_ray.inference.results import AUTO_CROP_MAX_SIDE, Box, Face, ImageResult, is_face_crop  # noqa: F401
from emokp_ray.inference.tta import forward_with_flip
from emokp_ray.tasks import EMOTION, KEYPOINTS, task_spec

FRAMING_MARGIN = 1.13  # crop side / Haar box side (measured, see the module docstring)
FRAMING_SHIFT_Y = 0.02  # crop centre below the Haar centre, in Haar sides
MODES = ("auto", "crop", "detect")


# --------------------------------------------------------------------------------------------------
# Geometry: boxes, crops, mapping back
# --------------------------------------------------------------------------------------------------


def crop_box_from_detection(
    detection: Sequence[float], margin: float = FRAMING_MARGIN, shift_y: float = FRAMING_SHIFT_Y
) -> Box:
    """A detector's (x, y, w, h) -> the square crop box framed like a training crop."""
    x, y, w, h = (float(v) for v in detection)
    side = max(w, h)
    cx, cy = x + w / 2.0, y + h / 2.0 + shift_y * side
    side *= margin
    return (cx - side / 2.0, cy - side / 2.0, side, side)


def _inside_range(start: float, extent: float, limit: int, size: int) -> tuple[int, int]:
    """Output pixels [i0, i1) of an S-pixel crop whose input footprint [start + i e/S, start + (i+1) e/S]
    lies inside [0, limit]. Empty (i0 >= i1) when the crop misses the image."""
    step = extent / size
    i0 = max(0, math.ceil(-start / step - 1e-9))
    i1 = min(size, math.floor((limit - start) / step + 1e-9))
    return i0, i1


def crop_face(image: np.ndarray, box: Box, size: int) -> np.ndarray | None:
    """The box of a grey uint8 image [H, W] resized to uint8 [size, size] by the training resize
    (data/resize.py). Output pixels whose footprint leaves the image are filled by replicating the
    nearest inside pixel. None when no output pixel lies inside the image. Memory stays bounded
    whatever the box: only the part inside the image is resampled."""
    x, y, w, h = box
    height, width = image.shape
    i0, i1 = _inside_range(x, w, width, size)
    j0, j1 = _inside_range(y, h, height, size)
    if i0 >= i1 or j0 >= j1:
        return None
    sx, sy = w / size, h / size
    source = (
        max(0.0, x + i0 * sx),
        max(0.0, y + j0 * sy),
        min(float(width), x + i1 * sx),
        min(float(height), y + j1 * sy),
    )
    inner = resize_image(image, (j1 - j0, i1 - i0), box=source)
    if (i0, j0, i1, j1) == (0, 0, size, size):
        return inner
    return np.pad(inner, ((j0, size - j1), (i0, size - i1)), mode="edge")


def keypoints_through(keypoints: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Keypoints [N, 2K] on crops -> image pixels [N, 2K] through each face's crop -> image map [N, 2, 3]."""
    points = keypoints.astype(np.float64).reshape(len(keypoints), -1, 2)
    out = np.einsum("nij,nkj->nki", maps[:, :, :2], points) + maps[:, None, :, 2]
    return out.reshape(len(keypoints), -1)


def keypoints_to_image(keypoints: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Keypoints [N, 2K] (x, y per point) on S x S crops -> input-image pixels, boxes [N, 4] (x, y, w, h)."""
    out = keypoints.astype(np.float64).reshape(len(keypoints), -1, 2)
    scale = boxes[:, None, 2:4] / size  # [N, 1, 2] input px per crop px, x and y
    out = boxes[:, None, 0:2] + (out + 0.5) * scale - 0.5
    return out.reshape(len(keypoints), -1)


def _check_image(image: Any, index: int) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3))
        or image.shape[0] < 1
        or image.shape[1] < 1
    ):
        what = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {index}: expected uint8 [H, W] or [H, W, 3] (decode_image's output), got {what}")


def _check_box(box: Any, where: str) -> Box:
    """A caller's box -> floats, or a UserError naming it (inference/boxes.py: the check every entry shares)."""
    try:
        return check_box(box)
    except BoxError as err:
        raise UserError(f"{where}: {err}") from None


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as torch names it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available")
    return resolved


# --------------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------------


class Predictor:
    """Both models behind one call. Models come in as `LoadedCheckpoint`s (from `load_checkpoint`, an
    exported file, or a test's stand-in module with a real meta); either may be None, not both.

    Every face goes through each network twice, as it is and mirrored (flip_tta, inference/tta.py:
    on the release models keypoint test RMSE 1.618 -> 1.557 px, seed5 accuracy 75.3 -> 75.8%), and
    emotion probabilities are softmax(logits / T) with the checkpoint's calibrated temperature T
    (inference/calibration.py; T = 1 for a checkpoint without one).

    detector: an object with `detect(image) -> list[Detection]` (detect.make_detector's); None builds
    `detector_name` (default MTCNN) on first use (OpenCV needed only when detecting).
    margin / shift_y: the Haar-box -> training-crop framing (see the module docstring).
    overlap_networks: run the emotion pass in a second thread while the keypoint pass runs in the
    caller's (the same outputs; ONNX Runtime and torch release the GIL while they compute), the two
    ONNX sessions with half the intra-op threads each. None (auto): on for CPU with both models and
    at least 2 torch threads (a process that has the cores: `emokp predict`, the quick path); off
    with 1 thread, as in a labeling actor or a Serve replica that has one core's share, where a
    second thread would take another process's core (Serve's `overlap_networks: true` asks for it
    anyway). Measured on 2 cores, release models, flip TTA, 2 threads, a quiet machine
    (benchmarks/inference_backends.py, "predictor"): torch 1.69x at batch 1, 1.24x at batch 32;
    ONNX 1.40x and 1.18x.
    """

    def __init__(
        self,
        keypoints: LoadedCheckpoint | None,
        emotion: LoadedCheckpoint | None,
        device: str = "cpu",
        detector: Detector | None = None,
        margin: float = FRAMING_MARGIN,
        shift_y: float = FRAMING_SHIFT_Y,
        backend: str = "torch",
        flip_tta: bool = True,
        overlap_networks: bool | None = None,
        detector_name: str = DEFAULT_DETECTOR,
        detector_threshold: float | None = None,
    ):
        if keypoints is None and emotion is None:
            raise UserError("a predictor needs at least one checkpoint (keypoints or emotion)")
        for loaded, task in ((keypoints, "keypoints"), (emotion, "emotion")):
            if loaded is not None and loaded.meta.task != task:
                raise UserError(f"{loaded.path} is a {loaded.meta.task} checkpoint, given as the {task} model")
        if not margin > 0:
            raise UserError(f"margin must be positive, got {margin}")
        self.device = resolve_device(device)
        self.keypoints, self.emotion = keypoints, emotion
        # backend: "auto" | "torch" | "onnx" | "onnx-int8" (inference/backends.py).
        self.backend = resolve_backend(backend, self.device)
        if overlap_networks is None:
            overlap_networks = self.device.type == "cpu" and torch.get_num_threads() >= 2
        self.overlap_networks = bool(overlap_networks) and keypoints is not None and emotion is not None
        # One runner per model (a torch model moves to the device, eval mode, channels-last weights),
        # the only thing _outputs runs; an exported .onnx file runs on ONNX Runtime as it is. Two
        # overlapped ONNX sessions share the threads (torch's are process-wide: both passes use them).
        onnx_threads = max(1, torch.get_num_threads() // 2) if self.overlap_networks else None
        self.runners = {
            m.meta.task: make_runner(m, self.backend, self.device, explicit=backend != "auto", threads=onnx_threads)
            for m in (self.keypoints, self.emotion)
            if m is not None
        }
        self.margin, self.shift_y = float(margin), float(shift_y)
        self.flip_tta = bool(flip_tta)  # average each network over the crop and its mirror image (2x the work)
        self._detector = detector
        self._detector_args = (detector_name, detector_threshold)
        self._detector_lock = threading.Lock()  # guards building it; detectors are thread-safe themselves
        # One worker: concurrent calls (Serve's model runs two) queue their emotion passes in order.
        self._second_thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="emokp-emotion") if self.overlap_networks else None
        )

    @classmethod
    def from_paths(
        cls,
        keypoints: str | None,
        emotion: str | None,
        device: str = "auto",
        detect: bool = True,
        trust_torchscript: bool = False,
        backend: str = "torch",
        overlap_networks: bool | None = None,
        detector: str = DEFAULT_DETECTOR,
        detector_threshold: float | None = None,
    ) -> Predictor:
        """Load the checkpoints (a checkpoint dir, a RUN_DIR, an exported .pt, or a TorchScript file
        where `trust_torchscript`: export.load_model says why); detect=True builds the face detector
        (`detector`: "mtcnn" or "haar", detect.make_detector) now, so a missing OpenCV is reported at
        startup; detect=False builds it on first use."""
        from emokp_ray.artifacts.export import load_model

        if keypoints is None and emotion is None:
            raise UserError("a predictor needs at least one checkpoint (--keypoints or --emotion)")
        resolved = resolve_device(device)
        # before the (slower) model loads: fail fast (unknown name, bad threshold, OpenCV missing)
        found = make_detector(detector, detector_threshold) if detect else None
        kp = (
            load_model(keypoints, map_location=resolved, trust_torchscript=trust_torchscript)
            if keypoints is not None
            else None
        )
        em = (
            load_model(emotion, map_location=resolved, trust_torchscript=trust_torchscript)
            if emotion is not None
            else None
        )
        return cls(
            kp,
            em,
            device=str(resolved),
            detector=found,
            backend=backend,
            overlap_networks=overlap_networks,
            detector_name=detector,
            detector_threshold=detector_threshold,
        )

    # ---- what is loaded --------------------------------------------------------------------------

    def model_info(self) -> dict[str, Any]:
        """Which models produce the predictions (for responses and output files): per model its run
        id, epoch, input size and `version`, the first 12 hex digits of the SHA-256 of its weights
        (`weights_version`). No file paths: this goes into HTTP answers, and where the server keeps
        its files is none of a client's business."""

        def info(loaded: LoadedCheckpoint | None) -> dict[str, Any] | None:
            if loaded is None:
                return None
            meta = loaded.meta
            out: dict[str, Any] = {
                "run_id": meta.run_id,
                "epoch": meta.epoch,
                "input_size": meta.input_size,
                "version": weights_version(loaded.model),
            }
            return out | task_spec(meta.task).model_info(meta)

        return {"keypoints": info(self.keypoints), "emotion": info(self.emotion)}

    def labels(self) -> dict[str, Any]:
        """Keypoint names and emotion classes in output order ([] for an absent model)."""
        return {
            "keypoints": KEYPOINTS.output_names(self.keypoints.meta) if self.keypoints else [],
            "emotion": EMOTION.output_names(self.emotion.meta) if self.emotion else [],
            "label_scheme": self.emotion.meta.label_scheme if self.emotion else None,
        }

    @property
    def detector(self) -> Detector:
        with self._detector_lock:
            if self._detector is None:
                self._detector = make_detector(*self._detector_args)
            return self._detector

    # ---- inference -------------------------------------------------------------------------------

    def _outputs(self, loaded: LoadedCheckpoint, crops: np.ndarray) -> np.ndarray:
        """The network's outputs for uint8 crops [N, S, S] through the model's runner (self.backend:
        torch, onnx or onnx-int8) and the one forward loop (backends.run_model), averaged with its
        mirrored view where self.flip_tta (inference/tta.py): keypoints [N, 30] crop pixels, or
        emotion logits [N, K]."""
        runner = self.runners[loaded.meta.task]
        forward = lambda c: run_model(runner, c)  # noqa: E731
        if not self.flip_tta:
            return forward(crops)
        return forward_with_flip(forward, crops, loaded.meta.task, loaded.meta.keypoint_names)

    def _run(self, prepared: PreparedFaces) -> list[Face]:
        """Both models over the prepared faces' crops (one batched pass each)."""
        crops_for, boxes, n = prepared.crops, prepared.boxes, len(prepared.boxes)
        keypoints = emotion = probabilities = None
        emotion_pass = logits_later = None
        if self.emotion is not None:
            emotion_pass = functools.partial(self._outputs, self.emotion, crops_for["emotion"])
            if self._second_thread is not None:  # overlap_networks: it runs while the keypoint pass does
                logits_later = self._second_thread.submit(emotion_pass)
        if self.keypoints is not None:
            raw = self._outputs(self.keypoints, crops_for["keypoints"])
            keypoints = keypoints_through(raw, prepared.keypoint_maps).reshape(n, -1, 2)
        if self.emotion is not None and emotion_pass is not None:  # both or neither
            logits = logits_later.result() if logits_later is not None else emotion_pass()
            probabilities = softmax(logits, temperature_of(self.emotion.meta.calibration))  # calibrated
            emotion = probabilities.argmax(axis=1)
        kp_names = self.keypoints.meta.keypoint_names if self.keypoints else ()
        classes = self.emotion.meta.class_names if self.emotion else ()
        # Python floats (JSON-ready) via tolist(): one conversion per array, not per value.
        box_list = boxes.tolist()
        kp_list = keypoints.tolist() if keypoints is not None else None
        prob_list = probabilities.tolist() if probabilities is not None else None
        label_list = emotion.tolist() if emotion is not None else None
        score_list = prepared.scores.tolist()
        landmark_list = prepared.landmarks.tolist()
        return [
            Face(
                box=tuple(box_list[i]),
                score=None if math.isnan(score_list[i]) else score_list[i],
                landmarks=None
                if math.isnan(landmark_list[i][0][0])
                else {k: (xy[0], xy[1]) for k, xy in zip(LANDMARK_NAMES, landmark_list[i])},
                keypoints=None if kp_list is None else {k: (xy[0], xy[1]) for k, xy in zip(kp_names, kp_list[i])},
                emotion=None if label_list is None else classes[label_list[i]],
                probabilities=None if prob_list is None else dict(zip(classes, prob_list[i])),
            )
            for i in range(n)
        ]

    def _inputs(self) -> dict[str, int]:
        """Each loaded network's task -> its input size S."""
        return {m.meta.task: m.meta.input_size for m in (self.keypoints, self.emotion) if m is not None}

    def predict_crops(self, crops: np.ndarray) -> list[Face]:
        """Face crops uint8 [N, H, W] (grey, framed like the training data, e.g. 96x96) -> one Face each,
        box = the whole crop. Crops already at a model's input size are fed without a copy."""
        if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8 or crops.ndim != 3 or 0 in crops.shape[1:]:
            what = f"{crops.dtype} {list(crops.shape)}" if isinstance(crops, np.ndarray) else type(crops).__name__
            raise ValueError(f"predict_crops expects uint8 [N, H, W] grey crops, got {what}")
        n, height, width = crops.shape
        if not crops.flags.c_contiguous or not crops.flags.writeable:
            crops = crops.copy()  # torch.from_numpy needs a writable, contiguous buffer
        boxes = np.tile(np.array([0.0, 0.0, width, height]), (n, 1))
        inputs = self._inputs()
        prepared = PreparedFaces(
            crops={task: resize_images(crops, size) for task, size in inputs.items()},
            boxes=boxes,
            counts=[1] * n,
            sizes=[(width, height)] * n,
            keypoint_maps=np.tile(box_to_image((0.0, 0.0, width, height), inputs.get("keypoints", 96)), (n, 1, 1)),
            scores=np.full(n, np.nan),
            landmarks=np.full((n, len(LANDMARK_NAMES), 2), np.nan),
        )
        return self._run(prepared) if n else []

    def predict(
        self,
        images: list[np.ndarray],
        mode: str = "auto",
        boxes: list[list[Box] | None] | None = None,
        max_faces: int | None = None,
    ) -> list[ImageResult]:
        """Faces in each image (uint8 [H, W] or [H, W, 3], e.g. from decode_image).

        mode: "crop" takes each image as one face crop (box = whole image); "detect" finds faces with
        the detector (MTCNN faces are aligned by their landmarks onto each network's template, Haar
        boxes re-framed like training crops); "auto" is "crop" for a square image of
        at most 128 px, else "detect". boxes[i], when given (not None), are image i's face boxes
        (x, y, w, h), used exactly as crop boxes (squares framed like a training crop work best; a
        previous result's boxes qualify), overriding mode. All faces of all images go through each
        model in one batched pass. max_faces: at most that many detected faces per image, the largest
        (ImageResult.faces_dropped counts the rest); caller boxes are never dropped.
        """
        return self.predict_prepared(self.prepare(images, mode, boxes, max_faces))

    def prepare(
        self,
        images: list[np.ndarray],
        mode: str = "auto",
        boxes: list[list[Box] | None] | None = None,
        max_faces: int | None = None,
    ) -> PreparedFaces:
        """The CPU half of `predict` (detect and crop, no model runs); see `prepare_faces`."""

        def detect(image: np.ndarray) -> list:
            return self.detector.detect(image)

        return prepare_faces(images, self._inputs(), mode, detect, boxes, self.margin, self.shift_y, max_faces)

    def predict_prepared(self, prepared: PreparedFaces) -> list[ImageResult]:
        """The network half of `predict`: both models over prepared faces, one batched pass each."""
        faces: list[Face] = self._run(prepared) if len(prepared.boxes) else []
        results, start = [], 0
        dropped = prepared.dropped or [0] * len(prepared.counts)
        for (width, height), count, lost in zip(prepared.sizes, prepared.counts, dropped):
            results.append(
                ImageResult(width=width, height=height, faces=faces[start : start + count], faces_dropped=lost)
            )
            start += count
        return results


# --------------------------------------------------------------------------------------------------
# Detect and crop without the models (batch labeling runs this in CPU tasks, the networks elsewhere)
# --------------------------------------------------------------------------------------------------


@dataclass
class PreparedFaces:
    """Images ready for the networks: every face cropped for every network, F faces in all."""

    crops: dict[str, np.ndarray]  # task ("keypoints", "emotion") -> uint8 [F, S, S], that network's crops
    boxes: np.ndarray  # float64 [F, 4] (x, y, w, h) in the input images' pixels (the detector's box)
    counts: list[int]  # faces per image (sum F)
    sizes: list[tuple[int, int]]  # (width, height) per image
    keypoint_maps: np.ndarray  # float64 [F, 2, 3]: keypoint crop pixel -> image pixel (pixel centres)
    scores: np.ndarray  # float64 [F] detector scores, NaN where none (caller boxes, crops)
    landmarks: np.ndarray  # float64 [F, 5, 2] detector landmarks (LANDMARK_NAMES), NaN where none
    dropped: list[int] = field(default_factory=list)  # per image: detections past max_faces; [] = none


def as_detection(found: Any) -> Detection:
    """A detector's answer as a Detection (a plain (x, y, w, h) tuple is taken as a box without landmarks)."""
    if isinstance(found, Detection):
        return found
    return Detection(box=tuple(float(v) for v in found))  # type: ignore[arg-type]


def prepare_faces(
    images: list[np.ndarray],
    inputs: dict[str, int],
    mode: str,
    detect: Any,
    boxes: list[list[Box] | None] | None = None,
    margin: float = FRAMING_MARGIN,
    shift_y: float = FRAMING_SHIFT_Y,
    max_faces: int | None = None,
) -> PreparedFaces:
    """Face boxes and crops for each image, as `Predictor.predict` finds them (see there for mode
    and boxes); detect: uint8 image [H, W] or [H, W, 3] -> Detections, called only where a photo is
    searched. inputs: each network's task -> input size S.

    A detection with landmarks is cropped ALIGNED: per network, the similarity taking the network's
    template (TEMPLATES) onto the landmarks, sampled by `warp_crop`. Anything else (Haar boxes
    re-framed by crop_box_from_detection, caller boxes, whole crops) is cropped axis-aligned by
    `crop_face`. The reported box is the detector's box (re-framed for Haar, as before).
    max_faces: a searched image keeps its max_faces largest detections (by box area); `dropped`
    counts the rest per image, so their crops never reach the networks."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if boxes is not None and len(boxes) != len(images):
        raise UserError(f"boxes: {len(boxes)} lists for {len(images)} images (one list per image, or none)")
    all_boxes: list[Box] = []
    crops: dict[str, list[np.ndarray]] = {task: [] for task in inputs}
    maps: list[np.ndarray] = []
    scores: list[float] = []
    landmarks: list[np.ndarray] = []
    no_landmarks = np.full((len(LANDMARK_NAMES), 2), np.nan)
    kp_size = inputs.get("keypoints", 96)
    counts: list[int] = []
    image_sizes: list[tuple[int, int]] = []
    dropped: list[int] = []
    for index, image in enumerate(images):
        _check_image(image, index)
        grey = to_grey(image)
        height, width = grey.shape
        caller = boxes[index] if boxes is not None else None
        found: list[Detection]
        detected = False  # boxes from a detector (Haar's get re-framed) or given (used as they are)
        if caller is not None:
            found = [Detection(box=_check_box(b, f"image {index} box {j}")) for j, b in enumerate(caller)]
        elif is_face_crop(mode, height, width):
            found = [Detection(box=(0.0, 0.0, float(width), float(height)))]
        else:
            found, detected = [as_detection(d) for d in detect(image)], True
        lost = 0
        if detected and max_faces is not None and len(found) > max_faces:
            lost = len(found) - max_faces
            # Stable: equal areas keep the detector's order.
            found = sorted(found, key=lambda d: d.box[2] * d.box[3], reverse=True)[:max_faces]
        for j, face in enumerate(found):
            if face.landmarks is not None:
                points = np.asarray(face.landmarks, np.float64).reshape(len(LANDMARK_NAMES), 2)
                for task, size in inputs.items():
                    crops[task].append(warp_crop(grey, aligned_to_image(points, task, size), size))
                maps.append(aligned_to_image(points, "keypoints", kp_size))
                all_boxes.append(face.box)
                landmarks.append(points)
            else:
                box = crop_box_from_detection(face.box, margin, shift_y) if detected else face.box
                for task, size in inputs.items():
                    crop = crop_face(grey, box, size)
                    if crop is None:
                        raise UserError(
                            f"image {index} box {j} {[round(v, 2) for v in box]} lies outside the "
                            f"{width}x{height} image"
                        )
                    crops[task].append(crop)
                maps.append(box_to_image(box, kp_size))
                all_boxes.append(box)
                landmarks.append(no_landmarks)
            # a score only with landmarks: Haar's constant 1.0 says nothing (Face.score None there)
            scores.append(float(face.score) if face.landmarks is not None else math.nan)
        counts.append(len(found))
        dropped.append(lost)
        image_sizes.append((int(image.shape[1]), int(image.shape[0])))
    return PreparedFaces(
        crops={t: np.stack(c) if c else np.zeros((0, inputs[t], inputs[t]), np.uint8) for t, c in crops.items()},
        boxes=np.asarray(all_boxes, np.float64).reshape(-1, 4),
        counts=counts,
        sizes=image_sizes,
        keypoint_maps=np.asarray(maps, np.float64).reshape(-1, 2, 3),
        scores=np.asarray(scores, np.float64),
        landmarks=np.asarray(landmarks, np.float64).reshape(-1, len(LANDMARK_NAMES), 2),
        dropped=dropped,
    )
