"""Faces in photos with known truth: real TEST-split faces pasted into scenes
(evaluation/photo_scenes.py), run end to end through the predictor with the builtin models, one
detector after another: haar, mtcnn (the `detector` branch's default, merged here) and yunet (where
the `yuface` package is installed: a benchmark-only candidate, never a dependency; its five landmarks
align the crops as MTCNN's do).

    emokp data prepare ../shared/data/facial-keypoints/training.csv.gz --out /tmp/kp
    emokp data prepare ../shared/data/fer2013/fer2013.csv.gz --out /tmp/fer --scheme fer7
    python benchmarks/photo_faces.py --keypoint-data /tmp/kp --emotion-data /tmp/fer --scenes 120

Per detector and condition (rotation bin, size bin, all): recall (photo_scenes.match_faces: the
detection's centre inside the truth box and IoU > 0.3), false positives per scene, keypoint RMSE in
the face's 96-px units against the same faces' crop-level RMSE (predict_crops on the original crop),
emotion accuracy (fer7 model, FER faces) against the same faces' crop-level accuracy, median time per
photo; the detect + crop time of a ~1 M-pixel photo; the bundled photos turned by 0, ±15, ±30, ±45.
Then the detector targets (recall, false positives, alignment cost, time) as pass/fail.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import add_out_argument, median_ms, save

DETECTORS = ("haar", "mtcnn", "yunet")
PHOTO_ANGLES = (-45, -30, -15, 0, 15, 30, 45)
ONE_MP = (1155, 866)  # (width, height): 1.0 M pixels, 4:3
YUNET_MAX_SIDE = 960  # yuface warns above this side; larger photos are searched downscaled


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keypoint-data", required=True, help="prepared keypoint data set (its test split is used)")
    parser.add_argument("--emotion-data", required=True, help="prepared FER data set, --scheme fer7 (test split)")
    parser.add_argument("--scenes", type=int, default=120, help="scenes (default 120)")
    parser.add_argument(
        "--faces", type=int, default=4, help="faces tried per scene (default 4; fewer when they do not fit)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated; missing ones are skipped")
    parser.add_argument("--keypoints", default="builtin:keypoints")
    parser.add_argument("--emotion", default="builtin:emotion-fer7")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the 1 M-pixel photo (median)")
    add_out_argument(parser, "photo_faces")
    return parser


# --------------------------------------------------------------------------------------------------
# Detectors: the project's where it has them, yunet through an adapter
# --------------------------------------------------------------------------------------------------


class YuNet:
    """yuface (libfacedetection's YuNet) behind the predictor's detector interface. Photos longer
    than YUNET_MAX_SIDE are searched at that side and boxes scaled back."""

    def __init__(self, conf: float = 0.5):
        import yuface

        self._detect, self.conf = yuface.detect, conf

    def boxes(self, image: np.ndarray) -> list[tuple[tuple[int, int, int, int], float, np.ndarray]]:
        from PIL import Image

        grey = image if image.ndim == 2 else np.asarray(Image.fromarray(image).convert("L"))
        height, width = grey.shape
        scale = min(1.0, YUNET_MAX_SIDE / max(height, width))
        if scale < 1.0:
            grey = np.asarray(
                Image.fromarray(grey).resize((round(width * scale), round(height * scale)), Image.Resampling.BOX)
            )
        bgr = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        confs, boxes, landmarks = self._detect(bgr, conf=self.conf)
        out = []
        for c, b, lm in zip(confs, boxes, landmarks):
            box = tuple(round(float(v) / scale) for v in b)
            # yuface's landmarks: image-left eye, image-right eye, nose, image-left and image-right
            # mouth corner -> the subject's side first, as Detection.landmarks (detect.LANDMARK_NAMES).
            points = lm.astype(np.float64).reshape(5, 2)[[1, 0, 2, 4, 3]] / scale
            out.append((box, float(c) / 100.0, points))
        return sorted(out, key=lambda d: -d[0][2] * d[0][3])

    def detect(self, image: np.ndarray) -> list:
        """Detections with landmarks: the predictor aligns the crops from them, as for MTCNN."""
        from emokp_ray.inference.detect import Detection

        return [Detection(box=box, score=score, landmarks=lm) for box, score, lm in self.boxes(image)]


def make_detectors(names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """{name: detector} for the names that can be built here, {name: why not} for the others."""
    from emokp_ray.inference import detect as D

    built: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            built[name] = YuNet() if name == "yunet" else D.make_detector(name)
        except Exception as err:  # ImportError, UserError: a missing optional package
            skipped[name] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
    return built, skipped


def make_predictor(keypoints: Any, emotion: Any, detector: Any) -> Any:
    from emokp_ray.inference.predictor import Predictor

    return Predictor(keypoints, emotion, device="cpu", detector=detector)


def one_mp_ms(predictor: Any, image: np.ndarray, repeats: int) -> float:
    """Median ms of detect + crop (predictor.prepare, no networks) on one photo, after one warm-up."""
    return round(median_ms(lambda: predictor.prepare([image], mode="detect"), repeats), 1)


def bundled_photos(predictor: Any) -> dict[str, dict[str, int]]:
    """Faces found in each bundled photo turned by PHOTO_ANGLES (one face in each)."""
    from PIL import Image

    from emokp_ray.inference.images import decode_image, to_grey

    out: dict[str, dict[str, int]] = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "emokp_ray" / "photos").glob("*.jpg")):
        grey = Image.fromarray(to_grey(decode_image(path.read_bytes(), source=path.name)))
        fill = int(np.median(np.asarray(grey)))
        out[path.name] = {}
        for angle in PHOTO_ANGLES:
            turned = np.asarray(grey.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=fill))
            out[path.name][str(angle)] = predictor.prepare([turned], mode="detect").counts[0]
    return out


# --------------------------------------------------------------------------------------------------
# Targets and the table
# --------------------------------------------------------------------------------------------------


def targets(report: dict) -> dict[str, dict[str, bool | None]]:
    """The targets per detector: pass (True), fail (False), or None where not measurable."""
    detectors = report["detectors"]
    haar = detectors.get("haar")
    out: dict[str, dict[str, bool | None]] = {}
    for name, r in detectors.items():
        recalls = [b["recall"] for b in r["rotation_min40"].values() if b["recall"] is not None]
        at30 = r["rotation"]["±30"]
        rmse_ok = acc_ok = None
        if "rmse_96" in at30:
            rmse_ok = at30["rmse_96"] <= 1.15 * at30["crop_rmse_96"]
        if "accuracy" in at30:
            acc_ok = at30["accuracy"] >= at30["crop_accuracy"] - 0.02
        out[name] = {
            "recall>=95%_every_rotation_40px+": bool(recalls) and min(recalls) >= 0.95,
            "false_positives<=haar": None
            if haar is None
            else r["false_positives_per_scene"] <= haar["false_positives_per_scene"],
            "rmse_at_30_within_15%_of_crop": rmse_ok,
            "accuracy_at_30_within_2pt_of_crop": acc_ok,
            "1MP_detect_align<=1.5x_haar": None
            if haar is None
            else r["one_mp_detect_ms"] <= 1.5 * haar["one_mp_detect_ms"],
        }
    return out


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value}"


def print_table(report: dict) -> None:
    header = f"{'detector':9} {'condition':14} {'faces':>5} {'recall%':>7} {'rmse96':>7} {'crop':>6} {'acc%':>6} {'crop%':>6}"
    print(header)
    for name, r in report["detectors"].items():
        rows = [("all", r["all"])] + [(f"rot {k}", v) for k, v in r["rotation"].items()]
        rows += [(f"rot {k} 40+", v) for k, v in r["rotation_min40"].items()]
        rows += [(f"{k} px", v) for k, v in r["size"].items()]
        rows += [(f"{k} faces", v) for k, v in r["kind"].items()]
        for label, f in rows:
            print(
                f"{name:9} {label:14} {f['faces']:5} {_fmt(f['recall'], True):>7} {_fmt(f.get('rmse_96')):>7} "
                f"{_fmt(f.get('crop_rmse_96')):>6} {_fmt(f.get('accuracy'), True):>6} {_fmt(f.get('crop_accuracy'), True):>6}"
            )
        print(
            f"{name:9} false positives/scene {r['false_positives_per_scene']}, {r['ms_per_photo_median']} ms/photo "
            f"(median), 1 MP detect+crop {r['one_mp_detect_ms']} ms; bundled photos (faces per angle): "
            + "; ".join(f"{p}: {counts}" for p, counts in r["bundled_photos"].items())
        )
    for name, checks in report["targets"].items():
        print(
            f"targets {name}: "
            + ", ".join(f"{k} {'-' if v is None else 'PASS' if v else 'FAIL'}" for k, v in checks.items())
        )


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    from emokp_ray.artifacts.export import load_model
    from emokp_ray.evaluation.photo_scenes import compose_scene, compose_scenes, crop_level, load_pool, score

    pools = {
        "keypoints": load_pool(args.keypoint_data, "keypoints"),
        "emotion": load_pool(args.emotion_data, "emotion"),
    }
    scenes = compose_scenes(list(pools.values()), args.scenes, seed=args.seed, faces=args.faces)
    used: dict[str, set[int]] = {"keypoints": set(), "emotion": set()}
    for scene in scenes:
        for face in scene.faces:
            used[face.kind].add(face.index)
    big = compose_scene(list(pools.values()), np.random.default_rng(args.seed + 1), faces=4, scene_size=ONE_MP)
    keypoints, emotion = load_model(args.keypoints), load_model(args.emotion)
    model_scheme = emotion.meta.label_scheme or "fer7"
    built, skipped = make_detectors([n.strip() for n in args.detectors.split(",") if n.strip()])
    report: dict[str, Any] = {
        "models": {"keypoints": args.keypoints, "emotion": args.emotion},
        "scenes": len(scenes),
        "faces": sum(len(s.faces) for s in scenes),
        "pools": {k: len(p.crops) for k, p in pools.items()},
        "skipped_detectors": skipped,
        "detectors": {},
    }
    crops = None
    for name, detector in built.items():
        predictor = make_predictor(keypoints, emotion, detector)
        if crops is None:
            crops = crop_level(predictor, pools, used, model_scheme)
        figures = score(predictor, scenes, pools, crops, model_scheme)
        figures["one_mp_detect_ms"] = one_mp_ms(predictor, big.image, args.repeats)
        figures["bundled_photos"] = bundled_photos(predictor)
        report["detectors"][name] = figures
        print(f"{name}: done", flush=True)
    report["targets"] = targets(report)
    print_table(report)
    return save(report, args.out)


if __name__ == "__main__":
    main()
