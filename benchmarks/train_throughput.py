"""Training throughput: Ray Train + Ray Data against a plain single-process PyTorch loop.

    python benchmarks/train_throughput.py [--task keypoints] [--model course] [--faces 2400] [--epochs 6] [--warmup-epochs 2] [--rounds 3]

Same model, global batch size, augmentations and data (a synthetic data set written once), run side
by side in one invocation on this machine:
  plain      the --no-ray loop (LocalSession): one process, torch's default threads
  ray-1      Ray Train, 1 worker with every core (cpus_per_worker = cores; Ray sets its torch threads
             to match), Ray Data reading and decoding the split once into the object store
             (data/ray_data.py), the augmentation in the worker (training/batches.py)
  ray-2      Ray Train, 2 workers (1 core each, DDP over gloo), the global batch split between them
Images/s is the steady state: the mean of the per-epoch `train/images_per_s` after --warmup-epochs
(default 2; Ray's first epochs pay for start-up: the worker group, the worker processes that Ray
Data's tasks start in, the first blocks; the plain loop's epochs are flat). Wall seconds per run,
start-up included, are reported beside it.
Each run is a fresh Python process (a Ray cluster left over from a Ray run costs ~6% of this machine
and would slow the next plain run). The machine is shared and its speed drifts by up to 10-15%
between minutes, so the modes run in --rounds rounds (plain, ray-1, ray-2, plain, ray-1, ...) and a
ratio is the median over rounds of mode / plain of the SAME round. Prints a table.
Target (issue 3): ray-1 >= 0.9x plain.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emokp_ray.data.synth.crops import write_synth_dataset
from emokp_ray.training.config import TrainConfig
from emokp_ray.training.train import run_training

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import add_out_argument, load_average, save


def steady_rate(history: list[dict], warmup_epochs: int) -> float:
    rows = history[warmup_epochs:] or history
    return sum(r["train/images_per_s"] for r in rows) / len(rows)


def mode_config(mode: str, args: argparse.Namespace, data: str, out: str, cores: int) -> TrainConfig:
    common = dict(
        task=args.task,
        data=data,
        out=out,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=0,
        use_gpu=False,
        keep_checkpoints=1,
    )
    if mode == "plain":
        return TrainConfig(no_ray=True, **common)
    if mode == "ray-1":
        return TrainConfig(workers=1, cpus_per_worker=float(cores), **common)
    if mode == "ray-2":
        return TrainConfig(workers=2, cpus_per_worker=max(1.0, cores / 2), **common)
    raise SystemExit(f"unknown mode {mode}")


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--task",
        args.task,
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--warmup-epochs",
        str(args.warmup_epochs),
        "--batch-size",
        str(args.batch_size),
    ]


def run_one(args: argparse.Namespace, cores: int) -> int:
    """One training run of one mode in this (fresh) process; its figures go to --result as JSON."""
    out = Path(tempfile.mkdtemp(prefix=f"emokp-throughput-{args.run_one}-"))
    try:
        cfg = mode_config(args.run_one, args, args.data, str(out / "run"), cores)
        started = time.perf_counter()
        outcome = run_training(
            cfg, log=lambda line: print(f"  {args.run_one}: {line}", flush=True) if line.startswith("epoch") else None
        )
        Path(args.result).write_text(
            json.dumps(
                {
                    "images_per_s": round(steady_rate(outcome.history, args.warmup_epochs), 2),
                    "wall_s": round(time.perf_counter() - started, 1),
                    "per_epoch_images_per_s": [round(r["train/images_per_s"], 2) for r in outcome.history],
                    "load_1m": load_average(),
                }
            )
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)  # 200+ MB of checkpoints per run
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="keypoints", choices=["keypoints", "emotion"])
    p.add_argument("--model", default="course", choices=["course", "wide", "small"])
    p.add_argument("--faces", type=int, default=2400)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--warmup-epochs", type=int, default=2, help="epochs left out of the steady rate")
    p.add_argument("--rounds", type=int, default=3, help="rounds of all modes; ratios are medians over rounds")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--modes", default="plain,ray-1,ray-2")
    add_out_argument(p, "train_throughput")
    p.add_argument("--run-one", help=argparse.SUPPRESS)  # internal: one mode in this process
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    if args.run_one:
        return run_one(args, cores)
    work = Path(tempfile.mkdtemp(prefix="emokp-throughput-"))
    try:
        data = work / "data"
        write_synth_dataset(data, n=args.faces, seed=0)
        modes = args.modes.split(",")
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for round_ in range(args.rounds):
            for mode in modes:
                result = work / f"{mode}-{round_}.json"
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--run-one",
                        mode,
                        "--data",
                        str(data),
                        "--result",
                        str(result),
                        *forwarded(args),
                    ],
                    check=True,
                )
                run = json.loads(result.read_text())
                runs[mode].append(run)
                print(
                    f"round {round_}: {mode}: {run['images_per_s']:.1f} images/s (steady), {run['wall_s']:.0f} s wall",
                    flush=True,
                )
        results = {}
        for mode, mode_runs in runs.items():
            results[mode] = {
                "median_images_per_s": round(statistics.median(r["images_per_s"] for r in mode_runs), 2),
                "runs": mode_runs,
            }
            if "plain" in runs:
                ratios = [r["images_per_s"] / p["images_per_s"] for r, p in zip(mode_runs, runs["plain"])]
                results[mode]["ratios_to_plain"] = [round(x, 3) for x in ratios]
                results[mode]["ratio_to_plain"] = round(statistics.median(ratios), 3)
        print(
            f"\n| mode | images/s (median of {args.rounds}) | ratio to plain (median of paired rounds) | ratios per round |\n|---|---|---|---|"
        )
        for mode, r in results.items():
            print(
                f"| {mode} | {r['median_images_per_s']:.1f} | {r.get('ratio_to_plain')} | {r.get('ratios_to_plain')} |"
            )
        report = {
            "task": args.task,
            "model": args.model,
            "faces": args.faces,
            "epochs": args.epochs,
            "warmup_epochs": args.warmup_epochs,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "results": results,
        }
        save(report, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
