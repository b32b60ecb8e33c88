"""The one resize: every image that reaches a network (training and validation batches, `emokp
evaluate`, the predictor's face crops, int8 calibration) goes through `resize_image`, Pillow's
bilinear filter, which widens to a triangle filter over the whole footprint (antialiasing) when it
shrinks. The shipped models were trained on its output, so inference resizes the same way.

Coordinates: labels.py's pixel-centre convention. Resizing the source span [x0, x1] (corner
coordinates: pixel column c spans [c, c + 1]) to n output pixels puts output pixel i's centre at
source x0 + (i + 0.5) (x1 - x0) / n, i.e. a keypoint x_out on the output lies at

    x_source = x0 + (x_out + 0.5) (x1 - x0) / n - 0.5        (same in y)

so a whole-image resize by a factor s = n / W maps x_source -> (x_source + 0.5) s - 0.5
(`rescale_keypoints`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) source region, corner coordinates


def resize_image(image: np.ndarray, size: int | tuple[int, int], box: Box | None = None) -> np.ndarray:
    """Grey uint8 [H, W] -> uint8 [h, w] (size: (h, w), or one side for a square), Pillow bilinear.

    box: the source region (x0, y0, x1, y1) in corner coordinates, floats allowed, inside the
    image; None is the whole image. The filter reads the pixels just past the box's edges (within
    its support) as a whole-image resize would. The whole image at its own size comes back as it is.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if box is None and image.shape == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR, box=box))


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """A batch of grey images uint8 [N, H, W] -> uint8 [N, size, size] by `resize_image` (the batch
    itself when it is already at `size`)."""
    if images.shape[1:] == (size, size):
        return images
    if not len(images):
        return np.zeros((0, size, size), np.uint8)
    return np.stack([resize_image(image, size) for image in images])


def rescale_keypoints(keypoints: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Keypoints [N, 2K] (pixels, NaN = missing) through a whole-image resize by `scale` [N]
    (output side / input side) -> float32 [N, 2K] on the resized images (pixel-centre convention)."""
    return ((keypoints + 0.5) * scale[:, None] - 0.5).astype(np.float32)


def resize_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """A batch {"image": uint8 [N, H, W], "keypoints": [N, 2K] (optional), ...} -> a new dict with
    the images at [N, size, size] and the keypoints moved with them; other keys pass through. The
    batch itself when it is already at `size`."""
    images = batch["image"]
    if images.shape[1:] == (size, size):
        return batch
    out = dict(batch, image=resize_images(images, size))
    if "keypoints" in batch:
        scale = np.full(len(images), size / images.shape[2], np.float32)
        out["keypoints"] = rescale_keypoints(batch["keypoints"], scale)
    return out
