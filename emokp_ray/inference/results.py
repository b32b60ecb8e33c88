"""What the predictor answers: the faces of one image, as plain dataclasses.

Kept apart from predictor.py (which imports torch) so that processes that only carry or show results
never import torch: the Serve ingress unpickles these from the model replica (importing this module),
and render.py draws them. Importing torch there would add ~870 modules and ~160,000 long-lived objects
to a process that never runs a network, and every full garbage collection walks them (measured in the
ingress under load: ~0.1 s of CPU per collection, every few seconds). For the same reason
`ImageResult.to_pandas` imports pandas and `ImageResult.annotate` Pillow only when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas and Pillow load only when a table or a drawing is asked for
    import pandas as pd
    from PIL import Image

Box = tuple[float, float, float, float]  # (x, y, w, h) in the input image's pixels (corner coordinates)
AUTO_CROP_MAX_SIDE = 128  # mode "auto": a square image up to this side is taken as one face crop


def is_face_crop(mode: str, height: int, width: int) -> bool:
    """Whether the predictor takes a whole image as one face crop (mode "crop", or "auto" on a square
    image of at most AUTO_CROP_MAX_SIDE px) rather than searching it; here, not in predictor.py, so
    that the Serve ingress can tell without importing torch."""
    return mode == "crop" or (mode == "auto" and height == width and height <= AUTO_CROP_MAX_SIDE)


@dataclass
class Face:
    """One face: its box and what each model says about it (None where that model is absent)."""

    box: Box
    keypoints: dict[str, tuple[float, float]] | None  # Kaggle names -> (x, y) input-image pixels
    emotion: str | None  # the most probable class
    probabilities: dict[str, float] | None  # every class -> probability (sums to 1)
    # The learned detector's confidence and its 5 landmarks (detect.LANDMARK_NAMES -> (x, y) input-image
    # pixels); None for Haar boxes, caller boxes and whole crops.
    score: float | None = None
    landmarks: dict[str, tuple[float, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: coordinates rounded to 0.001 px, probabilities and scores to 1e-6."""
        return {
            "box": [round(float(v), 3) for v in self.box],
            "score": None if self.score is None else round(float(self.score), 6),
            "landmarks": None
            if self.landmarks is None
            else {k: [round(x, 3), round(y, 3)] for k, (x, y) in self.landmarks.items()},
            "keypoints": None
            if self.keypoints is None
            else {k: [round(x, 3), round(y, 3)] for k, (x, y) in self.keypoints.items()},
            "emotion": self.emotion,
            "probabilities": None
            if self.probabilities is None
            else {k: round(p, 6) for k, p in self.probabilities.items()},
        }


@dataclass
class ImageResult:
    """The faces of one input image (in the order found: caller's boxes in order, detections largest first).

    The Python API (`emokp_ray.FaceAnalyzer`) also fills the fields below `faces`: where the image
    came from, the image as the caller gave it (so `annotate()` needs no argument) and the models'
    label names (so `to_pandas()` has its columns even without a face). They are not part of
    `to_dict()` nor of equality; results from the CLI, batch labeling and Serve leave them None.
    """

    width: int
    height: int
    faces: list[Face]
    faces_dropped: int = 0  # detections past the caller's max_faces (the smallest), not analysed
    source: str | None = field(default=None, compare=False)  # e.g. the path; None for bytes, arrays, PIL images
    image: Any = field(default=None, compare=False, repr=False)  # what the caller passed (path, bytes, array, PIL)
    keypoint_names: tuple[str, ...] | None = field(default=None, compare=False, repr=False)  # the keypoint model's
    class_names: tuple[str, ...] | None = field(default=None, compare=False, repr=False)  # the emotion model's
    # A video frame's index in its stream (0-based) and time (seconds from the stream's start,
    # inference/video.py); None for photos.
    frame_index: int | None = None
    timestamp: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a video frame's result also has `frame_index` and `timestamp` (seconds, 1e-6),
        an image whose faces past max_faces_per_image were dropped says how many (`faces_dropped`)."""
        out: dict[str, Any] = {"width": self.width, "height": self.height}
        if self.frame_index is not None:
            out["frame_index"] = self.frame_index
            out["timestamp"] = None if self.timestamp is None else round(float(self.timestamp), 6)
        out["faces"] = [f.to_dict() for f in self.faces]
        if self.faces_dropped:
            out["faces_dropped"] = self.faces_dropped
        return out

    def to_pandas(self, image_index: int = 0) -> pd.DataFrame:
        """One row per face (none for an image without faces, the columns still there): `image`
        (image_index), `source`, for video frames `frame_index` and `timestamp` (seconds), `face` (its index), the box `x`, `y`, `w`, `h`, the detector's `score`
        (NaN for caller boxes, crops and Haar), then with an emotion
        model `emotion` and `p_<class>` per class, with a keypoint model `<keypoint>_x`, `<keypoint>_y`
        per keypoint (Kaggle's column names), coordinates in the input image's pixels."""
        return to_pandas([self], first_index=image_index)

    def annotate(self, image: Any = None) -> Image.Image:
        """An RGB PIL image of the input with each face's box, keypoints and emotion drawn on
        (inference/render.py). `image`: the input again (a path, bytes, array or PIL image); by
        default the one this result was computed from, where it kept it (the Python API's results do)."""
        from emokp_ray.errors import UserError
        from emokp_ray.inference.images import image_array
        from emokp_ray.inference.render import annotate

        image = self.image if image is None else image
        if image is None:
            raise UserError("this result does not keep its image: pass it, result.annotate(image)")
        pixels = image_array(image, source=self.source or "image")
        if pixels.shape[:2] != (self.height, self.width):
            raise UserError(
                f"annotate: the image is {pixels.shape[1]}x{pixels.shape[0]}, the result is for a "
                f"{self.width}x{self.height} image"
            )
        return annotate(pixels, self)


BOX_COLUMNS = ("x", "y", "w", "h")


def _names(results: Sequence[ImageResult], attribute: str, from_face: str) -> list[str]:
    """Keypoint or class names in model order: from the results' label names, else from their faces."""
    names: dict[str, None] = {}  # ordered set
    for result in results:
        given = getattr(result, attribute)
        found = given if given is not None else [n for f in result.faces for n in getattr(f, from_face) or {}]
        names.update(dict.fromkeys(found))
    return list(names)


def to_pandas(results: Sequence[ImageResult], first_index: int = 0) -> pd.DataFrame:
    """A pandas DataFrame of the faces of many images, one row per face, columns as
    `ImageResult.to_pandas` (`image` is the result's position in `results`, plus first_index)."""
    import pandas as pd

    results = list(results)
    classes = _names(results, "class_names", "probabilities")
    keypoints = _names(results, "keypoint_names", "keypoints")
    has_emotion = bool(classes) or any(f.emotion is not None for r in results for f in r.faces)
    video = any(r.frame_index is not None for r in results)
    rows = []
    for i, result in enumerate(results):
        for j, face in enumerate(result.faces):
            row: dict[str, Any] = {"image": first_index + i, "source": result.source}
            if video:
                row["frame_index"] = -1 if result.frame_index is None else result.frame_index
                row["timestamp"] = float("nan") if result.timestamp is None else float(result.timestamp)
            row["face"] = j
            row |= dict(zip(BOX_COLUMNS, (float(v) for v in face.box)))
            row["score"] = float("nan") if face.score is None else float(face.score)
            if has_emotion:
                row["emotion"] = face.emotion
            probabilities = face.probabilities or {}
            row |= {f"p_{c}": probabilities.get(c, float("nan")) for c in classes}
            points = face.keypoints or {}
            for name in keypoints:
                x, y = points.get(name, (float("nan"), float("nan")))
                row |= {f"{name}_x": x, f"{name}_y": y}
            rows.append(row)
    frames = ["frame_index", "timestamp"] if video else []
    columns = ["image", "source", *frames, "face", *BOX_COLUMNS, "score", *(["emotion"] if has_emotion else [])]
    columns += [f"p_{c}" for c in classes] + [f"{n}_{axis}" for n in keypoints for axis in ("x", "y")]
    frame = pd.DataFrame(rows, columns=columns)
    ints = ["image", "face", *frames[:1]]  # a photo among video frames: frame_index -1, timestamp NaN
    floats = [c for c in columns if c not in (*ints, "source", "emotion")]
    return frame.astype({**dict.fromkeys(ints, "int64"), **dict.fromkeys(floats, "float64")})
