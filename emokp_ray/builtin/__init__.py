"""The release models shipped inside the package: `builtin:NAME` wherever a checkpoint is accepted.

    builtin:keypoints      15 facial keypoints (Kaggle order) from a 96x96 grey face
    builtin:emotion-fer7   FER2013's 7 classes (anger, disgust, fear, happiness, sad, surprise,
                           neutral), 48x48 input: the default emotion model
    builtin:emotion        the course's 5 (seed5: anger, disgust, sad, happiness, surprise), 48x48;
                           no neutral or fear, so a calm face gets one of the five (opt in by name)

Each is one exported, self-describing checkpoint file (`NAME.pt`, weights stored in fp16 and loaded
as fp32, meta with the recipe, the splits, test metrics and the emotion temperature) written by
scripts/build_release_models.py, with MODEL_CARD.md (data, recipe, test metrics per class,
calibration, limits, terms of use), release.json (the figures `emokp models` prints) and the training
logs beside them (results/release/).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emokp_ray.errors import UserError

PREFIX = "builtin:"
FOLDER = Path(__file__).resolve().parent
NAMES = ("keypoints", "emotion", "emotion-fer7")
DEFAULT_KEYPOINTS = PREFIX + "keypoints"
# The default knows "neutral": of FER's neutral test faces seed5 calls 77% an emotion with calibrated
# probability >= 0.5, fer7 15% (MODEL_CARD.md); real photos are full of calm faces.
DEFAULT_EMOTION = PREFIX + "emotion-fer7"
RELEASE_FILE = "release.json"


def is_builtin(location: object) -> bool:
    return isinstance(location, str) and location.startswith(PREFIX)


def builtin_path(location: str) -> Path:
    """`builtin:NAME` -> the shipped file; an unknown name lists the known ones, a missing file says so."""
    name = location[len(PREFIX) :]
    if name not in NAMES:
        raise UserError(f"unknown builtin model {location!r} (known: {', '.join(PREFIX + n for n in NAMES)})")
    path = FOLDER / f"{name}.pt"
    if not path.is_file():
        raise UserError(
            f"builtin model {location} is not in this installation ({path} is missing); "
            f"reinstall emokp-ray or regenerate it with scripts/build_release_models.py"
        )
    return path


def release_info() -> dict[str, Any]:
    """release.json: per builtin model its architecture, recipe, splits and test figures ({} if absent)."""
    path = FOLDER / RELEASE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None
