"""The one resize (data/resize.py): what training, validation, evaluation and the predictor all call,
so a face reaches a network with the same pixels whichever path brought it there."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from emokp_ray.data.pipeline import BatchPreprocessor
from emokp_ray.data.resize import rescale_keypoints, resize_batch, resize_image, resize_images
from emokp_ray.inference.predictor import crop_face


def blob(size: int, x: float, y: float, sigma: float) -> np.ndarray:
    """uint8 [size, size]: a Gaussian dot centred at (x, y) (pixel-centre coordinates)."""
    grid = np.arange(size, dtype=np.float64)
    image = np.exp(-((grid[None, :] - x) ** 2 + (grid[:, None] - y) ** 2) / (2 * sigma**2))
    return np.round(255 * image).astype(np.uint8)


def centroid(image: np.ndarray) -> tuple[float, float]:
    grid = np.arange(image.shape[0], dtype=np.float64)
    w = image.astype(np.float64)
    return float((w.sum(0) * grid).sum() / w.sum()), float((w.sum(1) * grid).sum() / w.sum())


@pytest.mark.parametrize("src,dst", [(96, 48), (48, 96), (96, 60)])
def test_keypoints_rescale_with_the_pixels(src, dst):
    x, y = 0.41 * src, 0.63 * src
    image = resize_image(blob(src, x, y, sigma=src / 12), dst)
    assert image.shape == (dst, dst) and image.dtype == np.uint8
    [[kx, ky]] = rescale_keypoints(np.array([[x, y]]), np.array([dst / src]))
    cx, cy = centroid(image)
    assert abs(cx - kx) < 0.05 and abs(cy - ky) < 0.05  # px on the output


def test_same_size_is_the_image_itself_and_a_constant_stays_constant():
    image = np.full((96, 96), 77, np.uint8)
    assert resize_image(image, 96) is image
    batch = image[None]
    assert resize_images(batch, 96) is batch
    assert (resize_image(image, 48) == 77).all() and (resize_image(image, (30, 40)) == 77).all()
    assert resize_image(image, (30, 40)).shape == (30, 40)
    assert resize_images(np.zeros((0, 48, 48), np.uint8), 96).shape == (0, 96, 96)


def test_a_box_resizes_that_region_as_a_whole_image_resize_would():
    image = np.random.default_rng(0).integers(0, 256, (80, 100), dtype=np.uint8)
    whole = resize_image(image, 48)
    assert np.array_equal(resize_image(image, 48, box=(0.0, 0.0, 100.0, 80.0)), whole)
    # The filter reads the pixels just past the box (within its support, 40/24 px here), like the
    # same pixels of a whole-image resize; what lies farther out does not matter.
    crop = resize_image(image, 24, box=(20, 10, 60, 50))
    outside = image.copy()
    outside[:8], outside[52:], outside[:, :18], outside[:, 62:] = 0, 0, 0, 0
    assert np.array_equal(resize_image(outside, 24, box=(20, 10, 60, 50)), crop)
    assert not np.array_equal(resize_image(image[10:50, 20:60], 24), crop)  # the border pixels differ


def test_training_evaluation_and_inference_give_a_face_the_same_pixels():
    """One 48x48 FER-like face at a 96-pixel model: BatchPreprocessor (training and validation),
    resize_batch (`emokp evaluate` on a CSV) and the predictor's crop of the whole image agree."""
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 256, (3, 48, 48), dtype=np.uint8)
    keypoints = rng.uniform(0, 47, (3, 30)).astype(np.float32)
    table = pa.table(
        {
            "image": [f.tobytes() for f in faces],
            "height": np.full(3, 48, np.int32),
            "width": np.full(3, 48, np.int32),
            "keypoints": pa.array([k.tolist() for k in keypoints], pa.list_(pa.float32(), 30)),
            "label": np.full(3, -1, np.int64),
        }
    )
    trained = BatchPreprocessor(task="keypoints", input_size=96)(table)
    evaluated = resize_batch({"image": faces, "keypoints": keypoints, "row": np.arange(3)}, 96)
    predicted = np.stack([crop_face(f, (0.0, 0.0, 48.0, 48.0), 96) for f in faces])
    assert np.array_equal(trained["image"], evaluated["image"])
    assert np.array_equal(trained["image"], predicted)
    assert np.allclose(trained["keypoints"], evaluated["keypoints"]) and evaluated["keypoints"].dtype == np.float32
    assert np.allclose(evaluated["keypoints"], (keypoints + 0.5) * 2 - 0.5)
    assert evaluated["row"] is not None and resize_batch(evaluated, 96) is evaluated
