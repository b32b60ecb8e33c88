"""Names and label schemes shared by every stage: keypoints in Kaggle order, the flip permutation,
and the emotion schemes.

Coordinate convention (used by the readers, the synthetic faces, the augmentations and the
predictor): keypoints are (x, y) in pixels of the 96x96 crop, origin at the CENTRE of the top-left
pixel, so pixel column c spans [c - 0.5, c + 0.5]. A horizontal flip of an image W pixels wide maps
x to (W - 1) - x. "left" is the subject's left, which appears on the image's right (larger x).
NaN marks a missing keypoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# The 15 keypoints in the column order of Kaggle's training.csv (each has an _x and a _y column).
KEYPOINT_NAMES: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "left_eye_inner_corner",
    "left_eye_outer_corner",
    "right_eye_inner_corner",
    "right_eye_outer_corner",
    "left_eyebrow_inner_end",
    "left_eyebrow_outer_end",
    "right_eyebrow_inner_end",
    "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner",
    "mouth_right_corner",
    "mouth_center_top_lip",
    "mouth_center_bottom_lip",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)  # 15
# The 30 coordinate columns, x then y per keypoint: left_eye_center_x, left_eye_center_y, ...
KEYPOINT_COLUMNS: tuple[str, ...] = tuple(f"{name}_{axis}" for name in KEYPOINT_NAMES for axis in "xy")

# The four keypoints that Kaggle's file often carries alone (the other 11 are NaN in those rows).
SPARSE_KEYPOINTS: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "nose_tip",
    "mouth_center_bottom_lip",
)

KEYPOINT_IMAGE_SIZE = 96  # the keypoint data set's crops are 96x96 grey


def _mirror_name(name: str) -> str:
    if name.startswith("left_"):
        return "right_" + name[len("left_") :]
    if name.startswith("right_"):
        return "left_" + name[len("right_") :]
    if name.startswith("mouth_left_"):
        return "mouth_right_" + name[len("mouth_left_") :]
    if name.startswith("mouth_right_"):
        return "mouth_left_" + name[len("mouth_right_") :]
    return name  # nose_tip, mouth_center_*: on the midline


# FLIP_PERMUTATION[i] is the index of the keypoint that keypoint i becomes after a horizontal flip:
# flipped[:, i] = mirrored(original[:, FLIP_PERMUTATION[i]]). It is its own inverse.
FLIP_PERMUTATION: tuple[int, ...] = tuple(KEYPOINT_NAMES.index(_mirror_name(n)) for n in KEYPOINT_NAMES)


def flip_keypoints(keypoints: np.ndarray, width: int) -> np.ndarray:
    """Mirror keypoints for a horizontal flip of an image `width` pixels wide.

    keypoints: [..., 15, 2] (x, y) pixels, NaN allowed. Returns a new array: x -> (width - 1) - x and
    every left_* swapped with its right_* counterpart, so names stay true after the flip.
    """
    flipped = keypoints[..., FLIP_PERMUTATION, :].copy()
    flipped[..., 0] = (width - 1) - flipped[..., 0]
    return flipped


@dataclass(frozen=True)
class EmotionScheme:
    """A set of emotion classes and how FER2013's 7 labels map onto it."""

    name: str
    classes: tuple[str, ...]
    # fer7 label -> this scheme's label; FER labels absent from the map are dropped at ingest.
    from_fer7: dict[int, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# One name per emotion in every output, whatever the scheme: the seed's words where it has them.
EMOTION_NAMES: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sad", "surprise", "neutral")
# Names that earlier fer7 checkpoints, data sets and outputs used for the same emotions (FER's own
# words): read everywhere, never written.
LEGACY_EMOTION_NAMES: dict[str, str] = {"angry": "anger", "happy": "happiness"}


def canonical_emotion_name(name: str) -> str:
    """An emotion's one name: FER's "angry" / "happy" -> "anger" / "happiness"; others unchanged."""
    return LEGACY_EMOTION_NAMES.get(name, name)


def canonical_emotion_names(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(canonical_emotion_name(n) for n in names)


# FER2013's own 7 classes, in FER's label order: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad,
# 5 Surprise, 6 Neutral.
FER7 = EmotionScheme(
    name="fer7",
    classes=("anger", "disgust", "fear", "happiness", "sad", "surprise", "neutral"),
    from_fer7={i: i for i in range(7)},
)

# The course's 5 classes: fear (2) and neutral (6) dropped, the rest renumbered.
SEED5 = EmotionScheme(
    name="seed5",
    classes=("anger", "disgust", "sad", "happiness", "surprise"),
    from_fer7={0: 0, 1: 1, 4: 2, 3: 3, 5: 4},
)

EMOTION_SCHEMES: dict[str, EmotionScheme] = {s.name: s for s in (SEED5, FER7)}
DEFAULT_SCHEME = "seed5"
# A user's own class set (`emokp data prepare --classes a,b,c`) is a scheme named by its classes, so
# the name alone rebuilds it wherever a scheme name travels (dataset.json, checkpoints, outputs).
CUSTOM_PREFIX = "custom:"
_CLASS_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def custom_scheme_name(classes: list[str] | tuple[str, ...]) -> str:
    """The scheme name of a declared class set ("custom:calm,excited"); names are lower-cased, known
    emotions get their one name (FER's "happy" -> "happiness"); a bad set is a `UserError`."""
    from emokp_ray.errors import UserError

    names = [canonical_emotion_name(c.strip().lower().replace(" ", "_").replace("-", "_")) for c in classes]
    bad = [n for n in names if not _CLASS_NAME.match(n)]
    if bad:
        raise UserError(
            f"--classes: {bad[0]!r} is not a class name (letters, digits and _, starting with a letter or digit)"
        )
    if len(set(names)) != len(names):
        raise UserError(f"--classes: {', '.join(sorted({n for n in names if names.count(n) > 1}))} given twice")
    if len(names) < 2:
        raise UserError(f"--classes: at least 2 classes are needed, got {len(names)}")
    return CUSTOM_PREFIX + ",".join(names)


def emotion_scheme(name: str) -> EmotionScheme:
    """Look a scheme up by name (or rebuild a custom one from its name); an unknown name is a
    `UserError` listing the known ones."""
    from emokp_ray.errors import UserError

    if name.startswith(CUSTOM_PREFIX):
        classes = tuple(name[len(CUSTOM_PREFIX) :].split(","))
        if custom_scheme_name(classes) != name:
            raise UserError(f"invalid custom emotion scheme {name!r}")
        # FER's labels whose emotion the set names keep their meaning (a FER CSV can feed it too)
        from_fer7 = {i: classes.index(c) for i, c in enumerate(FER7.classes) if c in classes}
        return EmotionScheme(name=name, classes=classes, from_fer7=from_fer7)
    try:
        return EMOTION_SCHEMES[name]
    except KeyError:
        raise UserError(f"unknown emotion scheme {name!r}; known: {', '.join(EMOTION_SCHEMES)}") from None
