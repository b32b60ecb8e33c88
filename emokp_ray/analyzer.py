"""The Python way in: `FaceAnalyzer()(image)` -> the faces, their keypoints and emotions.

    >>> import emokp_ray
    >>> analyzer = emokp_ray.FaceAnalyzer()                 # the builtin models, loaded once
    >>> result = analyzer("emokp_ray/photos/grace_hopper_us_navy.jpg")  # from the repository root
    >>> len(result.faces), result.faces[0].emotion
    (1, 'neutral')
    >>> x, y = result.faces[0].keypoints["left_eye_center"]  # in the photo's pixels
    >>> result.to_pandas().shape                            # one row per face, 46 columns
    (1, 46)
    >>> result.annotate().size                              # a PIL image with boxes, points, labels
    (512, 600)

A thin layer over the one `Predictor` that `emokp predict`, batch labeling and Serve share: the
same answers (`ImageResult`), the same decoder for paths and bytes (inference/images.py), one
batched predictor call per list of images. Importing this module loads neither torch nor Ray: the
predictor is imported when an analyzer is built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

from emokp_ray.builtin import DEFAULT_EMOTION, DEFAULT_KEYPOINTS
from emokp_ray.errors import UserError
from emokp_ray.inference.detect import DEFAULT_DETECTOR, detector_installed
from emokp_ray.inference.results import Box, ImageResult
from emokp_ray.inference.video import DEFAULT_FPS

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from emokp_ray.inference.predictor import Predictor

    # What one image may be: a path, bytes of an image file, a uint8 numpy array, a PIL image.
    ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | Image.Image


class FaceAnalyzer:
    """Facial keypoints and emotion for photos and face crops, from Python.

    keypoints / emotion: checkpoints as the CLI takes them (`builtin:NAME`, a checkpoint dir, a
    RUN_DIR, an exported .pt or .onnx file); default the builtin pair; None skips that model (not both).
    backend: "auto" | "torch" | "onnx" | "onnx-int8"; device: "cpu", "cuda", "cuda:N" or "auto".
    detector / detector_threshold: the face detector for photos ("mtcnn", the default, or "haar")
    and MTCNN's score threshold in (0, 1) (default 0.7). flip_tta: average each network over the face
    and its mirror image (better keypoints and emotions, twice the network work).

    The models (and, where OpenCV is installed, the face detector) load once, here; `predictor` is
    the `Predictor` underneath (model_info(), labels()).

        analyzer = FaceAnalyzer(emotion=None)          # keypoints only
        result = analyzer("photo.jpg")                  # an ImageResult
        results = analyzer(["a.jpg", "b.png"])          # a list: one batched pass, results in order
        emokp_ray.to_pandas(results)                    # one row per face of every image
    """

    def __init__(
        self,
        keypoints: str | None = DEFAULT_KEYPOINTS,
        emotion: str | None = DEFAULT_EMOTION,
        *,
        backend: str = "auto",
        device: str = "cpu",
        detector: str | None = None,
        detector_threshold: float | None = None,
        flip_tta: bool = True,
    ):
        from emokp_ray.inference.predictor import Predictor

        # Build the detector now where its packages are there (fail fast, load once); without them,
        # crops and caller boxes still work and a photo that needs detection says what to install.
        chosen = detector is not None or detector_threshold is not None
        detect = chosen or detector_installed(detector or DEFAULT_DETECTOR)
        self.predictor: Predictor = Predictor.from_paths(
            keypoints,
            emotion,
            device=device,
            detect=detect,
            backend=backend,
            detector=detector or DEFAULT_DETECTOR,
            detector_threshold=detector_threshold,
        )
        self.predictor.flip_tta = bool(flip_tta)
        labels = self.predictor.labels()
        self._keypoint_names = tuple(labels["keypoints"]) if keypoints is not None else None
        self._class_names = tuple(labels["emotion"]) if emotion is not None else None

    @overload
    def __call__(self, images: ImageInput, mode: str = ..., boxes: Sequence[Box] | None = ...) -> ImageResult: ...
    @overload
    def __call__(
        self,
        images: list[ImageInput] | tuple[ImageInput, ...],
        mode: str = ...,
        boxes: Sequence[Sequence[Box] | None] | None = ...,
    ) -> list[ImageResult]: ...

    def __call__(
        self,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...],
        mode: str = "auto",
        boxes: Any = None,
    ) -> ImageResult | list[ImageResult]:
        """The faces of one image (an ImageResult) or of a list or tuple of images (a list, in order,
        all faces through each network in one batched pass).

        An image is a path (str or pathlib.Path), bytes of a JPEG/PNG/WebP/BMP/GIF/TIFF/PPM file, a
        numpy uint8 array [H, W] (grey) or [H, W, 3] in RGB order (not OpenCV's BGR), or a PIL image
        of any mode. Files, bytes and PIL images are turned as their EXIF orientation says, as
        `emokp predict` does; all coordinates are in that upright image's pixels.

        mode: "detect" finds the faces; "crop" takes the whole image as one face crop; "auto" is
        "crop" for a square image of at most 128 px, else "detect". boxes: face boxes (x, y, w, h) to
        use instead of detecting: for one image a list of boxes, for a list of images one list (or
        None) per image.

        A bad image (a float array, 4 channels, a missing file, bytes that are no image) raises a
        UserError naming which image and what it was.
        """
        from emokp_ray.inference.images import image_array

        batch = isinstance(images, (list, tuple))
        inputs: list[ImageInput] = list(images) if isinstance(images, (list, tuple)) else [images]
        sources = [_source(image) for image in inputs]
        arrays = []
        for index, (image, source) in enumerate(zip(inputs, sources)):
            name = source or (f"image {index}" if batch else "image")
            arrays.append(image_array(image, source=f"{name} ({_kind(image)})" if source is None else name))
        per_image: list[list[Box] | None] | None = None
        if boxes is not None:
            if not batch and len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
                raise UserError(f"boxes: a list of boxes, e.g. [(x, y, w, h)], got one box {list(boxes)}")
            per_image = [None if b is None else list(b) for b in boxes] if batch else [list(boxes)]
        results = self.predictor.predict(arrays, mode=mode, boxes=per_image)
        for result, image, source in zip(results, inputs, sources):
            result.source, result.image = source, image
            result.keypoint_names, result.class_names = self._keypoint_names, self._class_names
        return results if batch else results[0]

    def video(
        self,
        path: str | os.PathLike[str],
        fps: float | None = DEFAULT_FPS,
        mode: str = "auto",
        annotate: str | os.PathLike[str] | None = None,
    ) -> list[ImageResult]:
        """The faces of a video's sampled frames: one ImageResult per frame sampled, in order, each
        with `frame_index` (0-based, in the stream) and `timestamp` (seconds); the frames go through
        the same predictor as photos, a few at a time (never the whole video in memory).

        path: an .mp4, .mov, .webm, .mkv or .avi file (PyAV decodes it: `pip install
        'emokp-ray[video]'`). fps: frames sampled per second (None: every frame). mode: as for
        images. annotate: also write an MP4 of the sampled frames with the faces drawn on, here.
        The results do not keep their frames (`annotate` draws them while they are decoded).

            results = analyzer.video("talk.mp4", fps=2)
            table = emokp_ray.to_pandas(results)     # frame_index, timestamp, one row per face
            table.groupby("timestamp")["emotion"].first()

        An unreadable or unsupported file raises a UserError (a `video.VideoError`) naming it; a
        video without faces gives results without faces.
        """
        from emokp_ray.inference.render import annotate as draw
        from emokp_ray.inference.video import VideoWriter, check_fps, output_rate, predict_video, probe_video

        fps = check_fps(fps)
        source = os.fspath(path)
        info = probe_video(source)
        writer = VideoWriter(annotate, output_rate(fps, info.rate)) if annotate is not None else None
        results = []
        try:
            for frame, result in predict_video(self.predictor, source, fps, mode=mode):
                result.source = source
                result.keypoint_names, result.class_names = self._keypoint_names, self._class_names
                if writer is not None:
                    writer.write(draw(frame.image, result))
                results.append(result)
        finally:
            if writer is not None:
                writer.close()
        return results

    def __repr__(self) -> str:
        info = self.predictor.model_info()
        models = ", ".join(f"{task}={m['run_id']!r}" for task, m in info.items() if m is not None)
        return f"FaceAnalyzer({models}, backend={self.predictor.backend!r}, device={str(self.predictor.device)!r})"


def _source(image: Any) -> str | None:
    """The name an image has for the caller: its path, or None."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else None


def _kind(image: Any) -> str:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"{len(image)} bytes"
    return type(image).__name__  # ndarray, JpegImageFile, ...
