"""How a Haar face box relates to the training framing, and where the predictor's re-framed crops put
the eyes and the bottom lip (Kaggle crops: eyes near y = 37.7, bottom lip near y = 79.0 of 96).

    python benchmarks/framing.py                     # 40 synthetic photos + 400 Kaggle rows (if present)
    python benchmarks/framing.py --photos 80 --kaggle-rows 0

Two sources with a known true crop box:
  * synthetic photos (`synthesize_photos`): each face's box is the square that frames it like a
    Kaggle crop, with its keypoints in photo pixels;
  * real Kaggle keypoint crops (../shared/data/facial-keypoints/training.csv.gz, rows with all 15
    points), upscaled 3x and pasted onto a canvas padded by 96 px of edge pixels: the true box is the
    pasted crop.
For each face the detector finds, it reports the true side / Haar side and the true centre's shift
(in Haar sides), then crops with the predictor's framing and maps the true keypoints into that crop
(96 px): the mean eye-centre y and bottom-lip y there should match the training means.
Results go to benchmarks/results/framing.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "framing.json"
KAGGLE_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "facial-keypoints" / "training.csv.gz"
EYE_Y_COLUMNS, LIP_Y_COLUMN = (1, 3), 29  # left/right eye centre y, bottom lip y in the 30 columns


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40, help="synthetic photos (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kaggle-rows", type=int, default=400, help="Kaggle rows read (0: skip; default 400)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def measure(faces: list[tuple[np.ndarray, tuple[float, float, float], np.ndarray]], detector) -> dict:
    """faces: (grey photo, true box (x, y, side), true keypoints [30] photo px) per face."""
    from emokp_ray.inference.predictor import crop_box_from_detection

    ratios, dxs, dys, eye_y, lip_y, found = [], [], [], [], [], 0
    cache: dict[int, list] = {}
    for grey, (tx, ty, ts), kp in faces:
        detections = cache.setdefault(id(grey), detector.detect(grey))
        inside = [d for d in detections if tx <= d[0] + d[2] / 2 <= tx + ts and ty <= d[1] + d[3] / 2 <= ty + ts]
        if not inside:
            continue
        found += 1
        x, y, w, h = max(inside, key=lambda d: d[2])
        ratios.append(ts / w)
        dxs.append((tx + ts / 2 - (x + w / 2)) / w)
        dys.append((ty + ts / 2 - (y + h / 2)) / w)
        _cx, cy, side, _ = crop_box_from_detection((x, y, w, h))
        # True keypoints in the predictor's 96 px crop (inverse of keypoints_to_image).
        crop_y = (kp[1::2] + 0.5 - cy) * 96 / side - 0.5
        eye_y.append(float(np.mean(crop_y[[c // 2 for c in EYE_Y_COLUMNS]])))
        lip_y.append(float(crop_y[LIP_Y_COLUMN // 2]))

    def q(values: list[float]) -> dict:
        if not values:
            return {}
        p25, p50, p75 = np.percentile(values, [25, 50, 75])
        return {"median": round(float(p50), 3), "p25": round(float(p25), 3), "p75": round(float(p75), 3)}

    return {
        "faces": len(faces),
        "found": found,
        "side_true_over_haar": q(ratios),
        "centre_shift_x_haar_sides": q(dxs),
        "centre_shift_y_haar_sides": q(dys),
        "crop_eye_y_mean": round(statistics.fmean(eye_y), 2) if eye_y else None,
        "crop_bottom_lip_y_mean": round(statistics.fmean(lip_y), 2) if lip_y else None,
    }


def synthetic_faces(n_photos: int, seed: int) -> list:
    from emokp_ray.data.synth.photos import synthesize_photos
    from emokp_ray.inference.images import to_grey

    faces = []
    for photo in synthesize_photos(n_photos, seed=seed):
        grey = to_grey(photo.image)
        for (x, y, s, _), kp in zip(photo.boxes, photo.keypoints):
            faces.append((grey, (float(x), float(y), float(s)), kp))
    return faces


def kaggle_faces(rows: int) -> tuple[list, dict]:
    import pandas as pd
    from PIL import Image

    table = pd.read_csv(KAGGLE_CSV, nrows=rows).dropna()
    keypoints = table.iloc[:, :30].to_numpy(np.float64)
    scale, pad = 3, 96
    faces = []
    for kp, pixels in zip(keypoints, table["Image"]):
        crop = np.array(pixels.split(), np.uint8).reshape(96, 96)
        big = np.asarray(Image.fromarray(crop).resize((96 * scale, 96 * scale), Image.Resampling.BILINEAR))
        canvas = np.pad(big, pad, mode="edge")
        photo_kp = pad + (kp + 0.5) * scale - 0.5
        faces.append((canvas, (float(pad), float(pad), 96.0 * scale), photo_kp))
    training = {
        "eye_y_mean": round(float(keypoints[:, list(EYE_Y_COLUMNS)].mean()), 2),
        "bottom_lip_y_mean": round(float(keypoints[:, LIP_Y_COLUMN].mean()), 2),
    }
    return faces, training


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    from emokp_ray.inference.detect import CASCADE_FILE, require_detector
    from emokp_ray.inference.predictor import FRAMING_MARGIN, FRAMING_SHIFT_Y

    detector = require_detector()
    report: dict = {"cascade": CASCADE_FILE, "margin": FRAMING_MARGIN, "shift_y": FRAMING_SHIFT_Y}
    report["synthetic"] = measure(synthetic_faces(args.photos, args.seed), detector)
    if args.kaggle_rows and KAGGLE_CSV.is_file():
        faces, training = kaggle_faces(args.kaggle_rows)
        report["kaggle"] = measure(faces, detector)
        report["kaggle_training_frame"] = training
    print(json.dumps(report, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
