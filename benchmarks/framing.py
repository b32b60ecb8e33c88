"""How a Haar face box relates to the training framing, and where the predictor's re-framed crops put
the eyes and the bottom lip (Kaggle crops: eyes near y = 37.7, bottom lip near y = 79.0 of 96).

    python benchmarks/framing.py                     # 40 synthetic photos + 400 Kaggle rows (if present)
    python benchmarks/framing.py --photos 80 --kaggle-rows 0
    emokp data prepare ../shared/data/facial-keypoints/training.csv.gz --out /tmp/kp   # split by person
    python benchmarks/framing.py --mtcnn --rotate-faces 100 --skip-haar --keypoint-data /tmp/kp \
        --out benchmarks/results/framing_mtcnn.json

Two sources with a known true crop box:
  * synthetic photos (`synthesize_photos`): each face's box is the square that frames it like a
    Kaggle crop, with its keypoints in photo pixels;
  * real Kaggle keypoint crops (../shared/data/facial-keypoints/training.csv.gz, rows with all 15
    points), upscaled 3x and pasted onto a canvas padded by 96 px of edge pixels: the true box is the
    pasted crop.
For each face the detector finds, it reports the true side / Haar side and the true centre's shift
(in Haar sides), then crops with the predictor's framing and maps the true keypoints into that crop
(96 px): the mean eye-centre y and bottom-lip y there should match the training means.

MTCNN templates (`--mtcnn`): where MTCNN puts its 5 landmarks on TRAINING faces, in each training
set's own crop frame, so an aligned crop frames a face as the network saw it in training:
  * Kaggle keypoint rows of the TRAIN split of a prepared keypoint data set (`--keypoint-data DIR`,
    `emokp data prepare` of training.csv.gz, which splits by person with training_people.csv beside
    it: no val or test person is used), all 15 keypoints present, in file order, upscaled 3x onto a
    canvas padded by 96 px of edge pixels -> template "kaggle" (96 x 96 frame; the keypoint network);
  * FER2013 rows with Usage == Training, upscaled 3x, padded by 48 px -> template "fer" (48 x 48; the
    emotion networks).
Template point j = the median of landmark j mapped back into the crop frame (pixel centres). On the
Kaggle faces it also reports how far MTCNN's landmarks lie from the true keypoints (eye centres, nose
tip, mouth corners), raw and after removing each landmark's median offset.

Rotation check (`--rotate-faces N`): Kaggle faces of the TEST split of the same prepared data set
(persons neither calibrated on nor trained on), upscaled 3x
onto a padded canvas and rotated by 0, +-15, +-30, +-45 degrees; builtin:keypoints through detect +
align + network + inverse map, RMSE against the rotated true keypoints in the face's 96 px units, next
to the crop-level RMSE (the network on the 96 px crops themselves) over the same faces.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import add_out_argument, save

KAGGLE_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "facial-keypoints" / "training.csv.gz"
FER_CSV = KAGGLE_CSV.parents[1] / "fer2013" / "fer2013.csv.gz"
# The Kaggle keypoints MTCNN's 5 landmarks stand for (LANDMARK_NAMES order; x column index in the 30).
TRUE_COLUMNS = (0, 2, 20, 22, 24)  # left/right eye centre, nose tip, mouth left/right corner
ROTATIONS = (0, 15, -15, 30, -30, 45, -45)
EYE_Y_COLUMNS, LIP_Y_COLUMN = (1, 3), 29  # left/right eye centre y, bottom lip y in the 30 columns


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40, help="synthetic photos (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kaggle-rows", type=int, default=400, help="Kaggle rows read (0: skip; default 400)")
    parser.add_argument(
        "--mtcnn", action="store_true", help="calibrate the MTCNN templates (Kaggle + FER training faces)"
    )
    parser.add_argument("--kaggle-faces", type=int, default=600, help="--mtcnn: Kaggle calibration faces (default 600)")
    parser.add_argument("--fer-faces", type=int, default=600, help="--mtcnn: FER Training faces (default 600)")
    parser.add_argument("--rotate-faces", type=int, default=0, help="rotation check over N held-out Kaggle faces")
    parser.add_argument("--skip-haar", action="store_true", help="skip the Haar measurements")
    parser.add_argument(
        "--keypoint-data",
        type=Path,
        default=None,
        help="prepared keypoint data set (emokp data prepare, split by person): --mtcnn calibrates on its "
        "train split, --rotate-faces checks on its test split (required by both)",
    )
    add_out_argument(parser, "framing")
    return parser


def measure(faces: list[tuple[np.ndarray, tuple[float, float, float], np.ndarray]], detector) -> dict:
    """faces: (grey photo, true box (x, y, side), true keypoints [30] photo px) per face."""
    from emokp_ray.inference.predictor import crop_box_from_detection

    ratios, dxs, dys, eye_y, lip_y, found = [], [], [], [], [], 0
    cache: dict[int, list] = {}
    for grey, (tx, ty, ts), kp in faces:
        detections = [d.box for d in cache.setdefault(id(grey), detector.detect(grey))]
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


def kaggle_rows(data_dir: Path, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n rows (file order) of one split of a prepared keypoint data set with all 15
    keypoints: crops uint8 [n, 96, 96], keypoints [n, 30]."""
    from emokp_ray.data.pipeline import read_split_table
    from emokp_ray.data.schema import images_from_column

    table = read_split_table(str(data_dir), split, columns=["image", "height", "width", "keypoints", "row_id"])
    keypoints = np.asarray(table.column("keypoints").to_pylist(), np.float64).reshape(-1, 30)
    square = (np.asarray(table.column("height")) == 96) & (np.asarray(table.column("width")) == 96)
    ok = np.flatnonzero(~np.isnan(keypoints).any(axis=1) & square)
    ok = ok[np.argsort(np.asarray(table.column("row_id"))[ok], kind="stable")][:n]
    crops = images_from_column(table.column("image").take(ok), 96, 96)
    return crops, keypoints[ok]


def fer_training_rows(n: int) -> np.ndarray:
    """The first n FER2013 Training faces, uint8 [n, 48, 48]."""
    import pandas as pd

    table = pd.read_csv(FER_CSV)
    chosen = table[table["Usage"] == "Training"].head(n)
    return np.stack([np.array(p.split(), np.uint8).reshape(48, 48) for p in chosen["pixels"]])


def on_canvas(crop: np.ndarray, scale: int = 3) -> tuple[np.ndarray, int]:
    """A crop upscaled `scale` times (bilinear) and padded by one crop side of edge pixels: (canvas, pad)."""
    from PIL import Image

    side = crop.shape[0]
    big = np.asarray(Image.fromarray(crop).resize((side * scale,) * 2, Image.Resampling.BILINEAR))
    return np.pad(big, side, mode="edge"), side


def detected_landmarks(crops: np.ndarray, detector, scale: int = 3) -> np.ndarray:
    """MTCNN's landmarks of each crop's face in the crop's own frame (pixel centres) [n, 5, 2], NaN where
    no face covers the crop's centre."""
    out = np.full((len(crops), 5, 2), np.nan)
    for i, crop in enumerate(crops):
        canvas, pad = on_canvas(crop, scale)
        centre = pad + crop.shape[0] * scale / 2
        for found in detector.detect(canvas):
            x, y, w, h = found.box
            if x <= centre <= x + w and y <= centre <= y + h:
                out[i] = (found.landmarks + 0.5 - pad) / scale - 0.5
                break
    return out


def calibrate_mtcnn(data_dir: Path, kaggle_faces: int, fer_faces: int) -> dict:
    """The two templates (medians) and MTCNN's landmarks against the true Kaggle keypoints."""
    from emokp_ray.inference.detect import LANDMARK_NAMES, make_detector

    detector = make_detector("mtcnn")
    report: dict = {}
    crops, keypoints = kaggle_rows(data_dir, "train", kaggle_faces)
    found = detected_landmarks(crops, detector)
    hit = ~np.isnan(found[:, 0, 0])
    true = np.stack([keypoints[:, [c, c + 1]] for c in TRUE_COLUMNS], axis=1)  # [n, 5, 2]
    error = found[hit] - true[hit]
    bias = np.median(error, axis=0)
    report["kaggle"] = {
        "faces": len(crops),
        "split": "train",
        "found": int(hit.sum()),
        "template_96": np.round(np.median(found[hit], axis=0), 2).tolist(),
        "iqr_x_y": np.round(np.subtract(*np.percentile(found[hit], [75, 25], axis=0)), 2).tolist(),
        "landmark_vs_truth": {
            name: {
                "median_offset_px": np.round(bias[j], 2).tolist(),
                "rmse_px": round(float(np.sqrt((error[:, j] ** 2).sum(axis=1).mean())), 2),
                "rmse_px_offset_removed": round(float(np.sqrt(((error[:, j] - bias[j]) ** 2).sum(axis=1).mean())), 2),
            }
            for j, name in enumerate(LANDMARK_NAMES)
        },
    }
    fer = fer_training_rows(fer_faces)
    found = detected_landmarks(fer, detector)
    hit = ~np.isnan(found[:, 0, 0])
    report["fer"] = {
        "faces": len(fer),
        "found": int(hit.sum()),
        "template_48": np.round(np.median(found[hit], axis=0), 2).tolist(),
        "iqr_x_y": np.round(np.subtract(*np.percentile(found[hit], [75, 25], axis=0)), 2).tolist(),
    }
    return report


def rotation_check(data_dir: Path, n_faces: int) -> dict:
    """builtin:keypoints through MTCNN + alignment on rotated held-out Kaggle faces vs on the crops."""
    import cv2

    from emokp_ray.inference.predictor import Predictor

    crops, keypoints = kaggle_rows(data_dir, "test", n_faces)
    predictor = Predictor.from_paths("builtin:keypoints", None, device="cpu", detector="mtcnn")
    names = predictor.labels()["keypoints"]

    def as_array(faces) -> np.ndarray:
        return np.array([[v for name in names for v in f.keypoints[name]] for f in faces])

    crop_pred = as_array(predictor.predict_crops(crops))
    report: dict = {"faces": len(crops), "split": "test", "by_angle": {}}
    for angle in ROTATIONS:
        errors_photo, errors_crop = [], []
        for crop, kp, kp_crop in zip(crops, keypoints, crop_pred):
            canvas, pad = on_canvas(crop)
            height, width = canvas.shape
            rotation = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
            photo = cv2.warpAffine(canvas, rotation, (width, height), borderMode=cv2.BORDER_REPLICATE)
            truth = (pad + (kp.reshape(-1, 2) + 0.5) * 3 - 0.5) @ rotation[:, :2].T + rotation[:, 2]
            faces = predictor.predict([photo], mode="detect")[0].faces
            centre = rotation @ np.array([width / 2, height / 2, 1.0])
            faces = [
                f
                for f in faces
                if f.keypoints and np.hypot(*(np.mean(list(f.keypoints.values()), axis=0) - centre)) < 100
            ]
            if not faces:
                continue
            got = np.array([faces[0].keypoints[name] for name in names])  # type: ignore[index]
            errors_photo.append(((got - truth) / 3) ** 2)  # in the face's 96 px units
            errors_crop.append((kp_crop.reshape(-1, 2) - kp.reshape(-1, 2)) ** 2)
        found = len(errors_photo)
        photo_rmse = float(np.sqrt(np.mean(np.sum(errors_photo, axis=2)))) if found else None
        crop_rmse = float(np.sqrt(np.mean(np.sum(errors_crop, axis=2)))) if found else None
        report["by_angle"][str(angle)] = {
            "found": found,
            "rmse_px": None if photo_rmse is None else round(photo_rmse, 3),
            "crop_rmse_px": None if crop_rmse is None else round(crop_rmse, 3),
            "ratio": None if not found else round(photo_rmse / crop_rmse, 3),  # type: ignore[operator]
        }
    return report


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    from emokp_ray.inference.detect import CASCADE_FILE, require_detector
    from emokp_ray.inference.predictor import FRAMING_MARGIN, FRAMING_SHIFT_Y

    if (args.mtcnn or args.rotate_faces) and args.keypoint_data is None:
        raise SystemExit("--mtcnn and --rotate-faces need --keypoint-data DIR (emokp data prepare training.csv.gz)")
    report: dict = {"cascade": CASCADE_FILE, "margin": FRAMING_MARGIN, "shift_y": FRAMING_SHIFT_Y}
    if args.mtcnn and FER_CSV.is_file():
        report["mtcnn_templates"] = calibrate_mtcnn(args.keypoint_data, args.kaggle_faces, args.fer_faces)
    if args.rotate_faces:
        report["rotation_check"] = rotation_check(args.keypoint_data, args.rotate_faces)
    if args.skip_haar:
        print(json.dumps(report, indent=1))
        return save(report, args.out)
    detector = require_detector("haar")
    report["synthetic"] = measure(synthetic_faces(args.photos, args.seed), detector)
    if args.kaggle_rows and KAGGLE_CSV.is_file():
        faces, training = kaggle_faces(args.kaggle_rows)
        report["kaggle"] = measure(faces, detector)
        report["kaggle_training_frame"] = training
    print(json.dumps(report, indent=1))
    return save(report, args.out)


if __name__ == "__main__":
    main()
