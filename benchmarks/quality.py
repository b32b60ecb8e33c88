"""Model quality on the real data in ../shared/data: train a recipe, report the validation figures.

    python benchmarks/quality.py keypoints --data PREPARED_KP_DIR [--recipe NAME] [--set key=value ...]
    python benchmarks/quality.py emotion   --data PREPARED_FER_DIR [--recipe NAME] [--set key=value ...]

NAME is one of `emokp train`'s recipes (emokp_ray/training/recipes.py, default `release`); each
--set overrides one TrainConfig field, so a variant under comparison is a recipe plus its changes,
written out in the command that measured it (benchmarks/README.md, benchmarks/gpu_quality.sh).

PREPARED dirs come from `emokp data prepare` (keypoints: training.csv.gz with the default seeded 90/10
split; emotion: fer2013.csv.gz, seed5, Training -> train, PublicTest -> val). Training runs the plain
one-process loop (`--no-ray` path: no Ray needed, so it runs on a GPU box that has only torch), or
Ray Train with --ray. Prints one results-table row and saves benchmarks/results/quality_<task>_<recipe>.json
with validation RMSE / accuracy / macro-F1 / disgust recall, epochs, wall time and the machine
(--out to change).
Targets (issue 3): keypoint RMSE <= 2.0 px; seed5 accuracy >= 80% with disgust recall >= 50%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from emokp_ray.training.recipes import DEFAULT_RECIPE, config_from_recipe, recipe_names
from emokp_ray.training.train import run_training

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import REPO, result_path, save


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def machine_text() -> str:
    """The machine in a few words, for the printed table row."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (1 GPU)"
    return f"{os.cpu_count()} CPU cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["keypoints", "emotion"])
    parser.add_argument("--data", required=True, help="prepared data set directory")
    parser.add_argument(
        "--recipe", default=DEFAULT_RECIPE, help=f"one of emokp train's recipes (default {DEFAULT_RECIPE})"
    )
    parser.add_argument("--run-dir", default=None, help="run directory (default: runs/quality-<task>-<recipe>)")
    parser.add_argument("--ray", action="store_true", help="train with Ray Train (default: the plain loop)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig field")
    parser.add_argument(
        "--out", type=Path, default=None, help="result JSON (default results/quality_<task>_<recipe>.json)"
    )
    args = parser.parse_args(argv)
    if args.recipe not in recipe_names(args.task):
        parser.error(f"unknown recipe {args.recipe!r} for {args.task} (known: {', '.join(recipe_names(args.task))})")

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = _parse_value(value)
    run_dir = args.run_dir or str(REPO / "runs" / f"quality-{args.task}-{args.recipe}")
    cfg = config_from_recipe(args.task, args.data, run_dir, args.recipe, no_ray=not args.ray, **overrides)
    start = time.perf_counter()
    outcome = run_training(cfg)
    wall = time.perf_counter() - start
    best = max(outcome.history, key=lambda r: -r["val/rmse_px"] if args.task == "keypoints" else r["val/macro_f1"])
    last = outcome.history[-1]
    result = {
        "task": args.task,
        "recipe": args.recipe,
        "overrides": overrides,
        "config": cfg.to_dict(),
        "epochs": last["epoch"],
        "wall_s": round(wall, 1),
        "best_epoch": best["epoch"],
        "mean_train_images_per_s": round(
            sum(r["train/images_per_s"] for r in outcome.history) / len(outcome.history), 1
        ),
    }
    if args.task == "keypoints":
        result.update(
            val_rmse_px=best["val/rmse_px"],
            mean_shape_rmse_px=best["val/mean_shape_rmse_px"],
            per_keypoint_rmse_px=best.get("val/per_keypoint_rmse_px"),
            target="rmse_px <= 2.0",
            meets_target=best["val/rmse_px"] <= 2.0,
        )
        row = f"| keypoints | {args.recipe} | RMSE {best['val/rmse_px']:.3f} px (mean shape {best['val/mean_shape_rmse_px']:.3f}) |"
    else:
        recall = best.get("val/per_class_recall") or {}
        result.update(
            val_accuracy=best["val/accuracy"],
            val_macro_f1=best["val/macro_f1"],
            per_class_recall=recall,
            disgust_recall=recall.get("disgust"),
            confusion=best.get("val/confusion"),
            target="accuracy >= 0.80 and disgust recall >= 0.50",
            meets_target=best["val/accuracy"] >= 0.80 and (recall.get("disgust") or 0) >= 0.50,
        )
        row = (
            f"| emotion seed5 | {args.recipe} | acc {best['val/accuracy']:.4f}, macro-F1 {best['val/macro_f1']:.4f}, "
            f"disgust recall {recall.get('disgust', float('nan')):.3f} |"
        )
    row += f" best epoch {best['epoch']}/{last['epoch']} | {wall / 60:.1f} min | {machine_text()} |"
    result["table_row"] = row
    print(row)
    save(result, args.out or result_path(f"quality_{args.task}_{args.recipe}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
