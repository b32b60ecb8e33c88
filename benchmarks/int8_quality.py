"""Does int8 keep the quality? Test-split RMSE (keypoints) or accuracy (emotion) of one checkpoint's
network on torch fp32, ONNX Runtime fp32 and ONNX Runtime int8, side by side, with the change and
the verdict against the issue's bounds (at most 0.05 px RMSE, at most 0.5 points of accuracy).

    python benchmarks/int8_quality.py --checkpoint builtin:keypoints --data prepared/kp --split test
    python benchmarks/int8_quality.py --checkpoint runs/fer/best --data prepared/fer --calibration both

The networks alone, on the split's crops at the model's input size (no flip TTA, no temperature:
both are the same on every backend, so they do not change the comparison). int8 is the backend's
recipe (artifacts/onnx.py quantize_int8: static QDQ, per-channel int8 weights) calibrated on synthetic faces
(what `--backend onnx-int8` does) and, with --calibration train|both, on the data set's own train
split too. Results go to benchmarks/results/int8_quality_<task>.json (--out to change).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import result_path, save

MAX_RMSE_CHANGE_PX = 0.05
MAX_ACCURACY_CHANGE_POINTS = 0.5


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint dir, RUN_DIR, exported .pt or builtin:NAME")
    parser.add_argument("--data", required=True, help="prepared data set directory (emokp data prepare)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument(
        "--calibration",
        default="synthetic",
        choices=["synthetic", "train", "both"],
        help="int8 activation ranges from synthetic faces (the backend's), the train split, or both",
    )
    parser.add_argument("--calibration-faces", type=int, default=128)
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N rows (0: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def split_crops(data: str, split: str, task: str, size: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 crops [N, S, S] and targets (keypoints [N, 30] with NaN, or labels [N]) of a split."""
    from emokp_ray.evaluation.evaluate import _dataset_batches

    images, targets, n = [], [], 0
    for batch in _dataset_batches(data, split, task, size, 256):
        image = batch["image"].reshape(len(batch["image"]), size, size)
        images.append(image)
        targets.append(batch["keypoints"] if task == "keypoints" else batch["label"])
        n += len(image)
        if limit and n >= limit:
            break
    images_all, targets_all = np.concatenate(images), np.concatenate(targets)
    return (images_all[:limit], targets_all[:limit]) if limit else (images_all, targets_all)


def score(task: str, outputs: np.ndarray, targets: np.ndarray, num_classes: int) -> float:
    """Keypoints: RMSE in pixels over the present coordinates; emotion: accuracy in percent."""
    if task == "keypoints":
        present = ~np.isnan(targets)
        return float(np.sqrt(np.mean((outputs[present] - targets[present]) ** 2)))
    return float(100.0 * np.mean(outputs.argmax(axis=1) == targets))


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    import torch

    from emokp_ray.artifacts.export import load_model
    from emokp_ray.artifacts.onnx import OnnxModel, OnnxRunner, calibration_crops, onnx_bytes, quantize_int8
    from emokp_ray.inference.backends import make_runner, run_model

    loaded = load_model(args.checkpoint, map_location="cpu")
    meta, task, size = loaded.meta, loaded.meta.task, loaded.meta.input_size
    crops, targets = split_crops(args.data, args.split, task, size, args.limit)
    torch_fp32 = make_runner(loaded, "torch", torch.device("cpu"))  # the predictor's: eval, channels-last
    fp32 = onnx_bytes(loaded.model, meta)
    runners = {"torch_fp32": torch_fp32, "onnx_fp32": OnnxRunner(OnnxModel(fp32, version=""))}
    calibrations = {"synthetic": calibration_crops(size, n=args.calibration_faces)}
    if args.calibration in ("train", "both"):
        calibrations["train"] = split_crops(args.data, "train", task, size, args.calibration_faces)[0]
    if args.calibration == "train":
        del calibrations["synthetic"]
    for name, calib in calibrations.items():
        runners[f"onnx_int8_{name}"] = OnnxRunner(
            OnnxModel(quantize_int8(fp32, meta, calibration=calib), version="", int8=True)
        )

    unit = "rmse_px" if task == "keypoints" else "accuracy_percent"
    figures: dict[str, dict] = {}
    for name, runner in runners.items():
        started = time.perf_counter()
        outputs = run_model(runner, crops, args.batch_size)
        figures[name] = {
            unit: round(score(task, outputs, targets, len(meta.class_names)), 4),
            "seconds": round(time.perf_counter() - started, 2),
        }
    base = figures["torch_fp32"][unit]
    bound = MAX_RMSE_CHANGE_PX if task == "keypoints" else MAX_ACCURACY_CHANGE_POINTS
    for row in figures.values():
        # RMSE: a rise is the loss; accuracy: a fall is. Improvements always pass.
        loss = (row[unit] - base) if task == "keypoints" else (base - row[unit])
        row["change"] = round(row[unit] - base, 4)
        row["within_bound"] = bool(loss <= bound)
    report = {
        "checkpoint": args.checkpoint,
        "run_id": meta.run_id,
        "task": task,
        "input_size": size,
        "model": meta.model_config.to_dict(),
        "data": str(Path(args.data).resolve()),
        "split": args.split,
        "n": len(crops),
        "metric": unit,
        "bound": bound,
        "results": figures,
    }
    print(json.dumps(report | {"model": "..."}, indent=1))
    return save(report, args.out or result_path(f"int8_quality_{task}"))


if __name__ == "__main__":
    main()
