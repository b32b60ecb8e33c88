"""Synthetic photos: several faces on a textured background, with their true boxes, keypoints and
emotions (for detection, labeling and the end-to-end demo)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emokp_ray.data.synth.geometry import apply_pose, canonical_keypoints, pose_matrices, sample_faces
from emokp_ray.data.synth.render import degrade, render_faces
from emokp_ray.errors import UserError
from emokp_ray.labels import KEYPOINT_NAMES, NUM_KEYPOINTS, SEED5
from emokp_ray.storage import atomic_dir

PHOTO_SIZES = ((320, 240), (480, 360), (640, 480), (240, 320), (360, 480))  # (width, height)
FACE_SIZE_RANGE = (60, 200)  # side of a face's box (its Kaggle-style crop), photo px


@dataclass(frozen=True)
class SynthPhoto:
    """A photo with its faces: image uint8 [H, W, 3] (or [H, W] grey); boxes int32 [F, 4] (x, y, w, h:
    the square whose crop, resized to 96, frames the face like a Kaggle crop); keypoints float32
    [F, 30] in photo pixels (pixel-centre convention); labels int64 [F] (seed5)."""

    image: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray
    labels: np.ndarray


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A background: smooth random blobs at two scales, a few flat rectangles, fine grain. [H, W] float32."""
    out = np.zeros((height, width), np.float32)
    for cells, amp in ((4, 70.0), (16, 25.0)):
        low = rng.uniform(-amp, amp, (cells, cells)).astype(np.float32)
        out += np.asarray(Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC))
    out += rng.uniform(60.0, 190.0)
    for _ in range(rng.integers(2, 7)):  # furniture: flat rectangles of another grey
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        out[y0 : y0 + rng.integers(10, height // 2), x0 : x0 + rng.integers(10, width // 2)] = rng.uniform(20, 235)
    out += rng.uniform(-6.0, 6.0, (height, width)).astype(np.float32)
    return out


def _place_boxes(rng: np.random.Generator, count: int, width: int, height: int) -> list[tuple[int, int, int]]:
    """Up to count non-overlapping squares (x, y, side) inside the photo, with room for hair and chin."""
    boxes: list[tuple[int, int, int]] = []
    for _ in range(count * 30):
        if len(boxes) == count:
            break
        side = int(rng.integers(FACE_SIZE_RANGE[0], min(FACE_SIZE_RANGE[1], int(0.8 * min(width, height))) + 1))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        pad = side // 8
        if all(
            x + side + pad <= bx or bx + bs + pad <= x or y + side + pad <= by or by + bs + pad <= y
            for bx, by, bs in boxes
        ):
            boxes.append((x, y, side))
    return boxes


def _photo(rng: np.random.Generator, color: bool, max_rotation_deg: float) -> SynthPhoto:
    width, height = PHOTO_SIZES[rng.integers(len(PHOTO_SIZES))]
    grey = _texture(rng, height, width)
    placed = _place_boxes(rng, int(rng.integers(1, 4)), width, height)
    labels = rng.integers(0, SEED5.num_classes, len(placed)).astype(np.int64)
    p = sample_faces(rng, labels)
    face_mask = np.zeros((height, width), np.float32)
    keypoints = np.zeros((len(placed), 2 * NUM_KEYPOINTS), np.float32)
    for i, (x, y, side) in enumerate(placed):
        face = {k: v[i : i + 1] for k, v in p.items()}
        # Render on the box grown by a quarter on every side (chin and hair spill out of a Kaggle
        # crop), clipped to the photo; the pose maps canonical points to that canvas.
        x0, y0 = max(x - side // 4, 0), max(y - side // 4, 0)
        x1, y1 = min(x + side + side // 4, width), min(y + side + side // 4, height)
        angle = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 1))
        m = pose_matrices(np.ones(1), angle, np.zeros((1, 2)), side, offset=np.array([x - x0, y - y0], float))
        canvas, alpha = render_faces(face, m, y1 - y0, x1 - x0, with_alpha=True)
        assert alpha is not None  # with_alpha=True returns the coverage
        view = grey[y0:y1, x0:x1]
        view += alpha[0] * (canvas[0] - view)
        face_mask[y0:y1, x0:x1] = np.maximum(face_mask[y0:y1, x0:x1], alpha[0])
        keypoints[i] = (apply_pose(canonical_keypoints(face), m)[0] + [x0, y0]).reshape(-1)
    # Photo-wide light blur and grain; JPEG, if chosen on save, adds its own artefacts.
    image = degrade(
        grey[None], np.array([rng.uniform(0.0, 1.0)], np.float32), np.array([rng.uniform(1.0, 4.0)], np.float32), rng
    )[0]
    if color:
        bg_tint = rng.uniform(0.8, 1.2, 3).astype(np.float32)
        skin_tint = np.array([1.1, 0.95, 0.82], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
        tint = bg_tint + face_mask[..., None] * (skin_tint - bg_tint)  # [H, W, 3]
        image = np.clip(image[..., None] * tint + 0.5, 0, 255).astype(np.uint8)
    boxes = np.array([[x, y, s, s] for x, y, s in placed], np.int32).reshape(-1, 4)
    return SynthPhoto(image, boxes, keypoints, labels)


def synthesize_photos(
    n_photos: int, seed: int = 0, color: bool = True, max_rotation_deg: float = 10.0
) -> list[SynthPhoto]:
    """n_photos photos (320x240 .. 640x480, landscape or portrait) with 1-3 faces each of 60-200 px,
    on a textured background, with their true boxes, keypoints and emotions."""
    return [_photo(np.random.default_rng([seed, 0xF0, i]), color, max_rotation_deg) for i in range(n_photos)]


CORRUPT_KINDS = ("truncated JPEG", "text file named .jpg")


def write_synth_photos(
    out_dir: str | os.PathLike, n: int = 8, seed: int = 0, n_corrupt: int = 2, color: bool = True
) -> dict[str, Any]:
    """Save n synthetic photos (PNG and JPEG alternately), n_corrupt broken files (truncated JPEG, a
    text file named .jpg) and truth.json (per photo: file, size, faces with box, keypoints by name,
    emotion). The folder appears atomically and replaces an existing one. Returns the truth dict."""
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    with atomic_dir(out) as tmp:
        truth: dict[str, Any] = {
            "scheme": SEED5.name,
            "classes": list(SEED5.classes),
            "keypoint_names": list(KEYPOINT_NAMES),
            "photos": [],
            "corrupt": [],
        }
        for i, photo in enumerate(synthesize_photos(n, seed, color=color)):
            name = f"photo_{i:03d}.{'png' if i % 2 == 0 else 'jpg'}"
            options: dict[str, Any] = {"quality": 90} if name.endswith(".jpg") else {}
            Image.fromarray(photo.image).save(tmp / name, **options)
            faces = [
                {
                    "box": [int(v) for v in box],
                    "keypoints": {
                        k: [round(float(kp[2 * j]), 3), round(float(kp[2 * j + 1]), 3)]
                        for j, k in enumerate(KEYPOINT_NAMES)
                    },
                    "emotion": SEED5.classes[int(label)],
                    "label": int(label),
                }
                for box, kp, label in zip(photo.boxes, photo.keypoints, photo.labels)
            ]
            truth["photos"].append(
                {"file": name, "width": photo.image.shape[1], "height": photo.image.shape[0], "faces": faces}
            )
        rng = np.random.default_rng([seed, 0xBAD])
        for j in range(n_corrupt):
            kind = CORRUPT_KINDS[j % len(CORRUPT_KINDS)]
            name = f"corrupt_{j:03d}.jpg"
            if kind == "truncated JPEG":
                img = (rng.random((120, 160)) * 255).astype(np.uint8)
                path = tmp / name
                Image.fromarray(img).save(path, quality=90)
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 3])  # header intact, scan data cut short
            else:
                (tmp / name).write_text("this is not an image, only text with a .jpg name\n")
            truth["corrupt"].append({"file": name, "kind": kind})
        (tmp / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth
