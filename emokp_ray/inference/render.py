"""Draw a prediction on its image for people: boxes, keypoints and "emotion 0.93" labels.

Pillow only (no matplotlib), so it is cheap enough for the Serve demo page. Line widths, dot sizes and
the font scale with the image (a 96 px crop and a 4000 px photo both stay readable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # a type only: results.py imports this module to draw (ImageResult.annotate)
    from emokp_ray.inference.results import ImageResult

BOX_COLOR = (0, 220, 0)  # green
POINT_COLOR = (255, 40, 40)  # red
LANDMARK_COLOR = (120, 200, 255)  # light blue: the detector's 5 landmarks, drawn small under the keypoints
TEXT_COLOR = (255, 255, 255)
LABEL_BACKGROUND = (0, 120, 0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def annotate(image: np.ndarray, result: ImageResult) -> Image.Image:
    """An RGB copy of `image` (uint8 [H, W] or [H, W, 3]) with each face's box, the detector's
    landmarks (small light dots, where it gave them), keypoints (crosses) and its emotion label with
    probability drawn on. The input is not modified."""
    if image.ndim == 2:
        canvas = Image.fromarray(image, "L").convert("RGB")
    else:
        canvas = Image.fromarray(np.ascontiguousarray(image), "RGB").copy()
    draw = ImageDraw.Draw(canvas)
    side = min(canvas.size)
    line = max(1, round(side / 250))  # 1 px up to 375 px, 2 px at 500 px, 16 px at 4000 px
    arm = max(1, round(side / 150))  # half length of a keypoint cross
    font = _font(max(10, round(side / 30)))
    for face in result.faces:
        x, y, w, h = face.box
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=BOX_COLOR, width=line)
        dot = max(1, arm // 2)
        for px, py in (face.landmarks or {}).values():
            draw.ellipse([px - dot, py - dot, px + dot, py + dot], fill=LANDMARK_COLOR)
        for px, py in (face.keypoints or {}).values():
            draw.line([px - arm, py, px + arm, py], fill=POINT_COLOR, width=line)
            draw.line([px, py - arm, px, py + arm], fill=POINT_COLOR, width=line)
        if face.emotion is not None and face.probabilities is not None:
            text = f"{face.emotion} {face.probabilities[face.emotion]:.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th = right - left, bottom - top
            pad = max(1, line)
            # Above the box when there is room, else just inside its top edge.
            ty = y - th - 2 * pad if y - th - 2 * pad >= 0 else y + line
            tx = min(max(x, 0), max(canvas.width - tw - 2 * pad, 0))
            draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=LABEL_BACKGROUND)
            draw.text((tx + pad - left, ty + pad - top), text, fill=TEXT_COLOR, font=font)
    return canvas
