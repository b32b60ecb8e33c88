"""Training throughput: Ray Train + Ray Data against a plain single-process PyTorch loop.

    python benchmarks/train_throughput.py [--task keypoints] [--model course] [--faces 2400] [--epochs 3]

Same model, global batch size, augmentations and data (a synthetic data set written once), run side
by side in one invocation on this machine:
  plain      the --no-ray loop (LocalSession): one process, torch's default threads
  ray-1      Ray Train, 1 worker with every core (cpus_per_worker = cores; Ray sets its torch threads
             to match), Ray Data reading/decoding/augmenting in its own tasks
  ray-2      Ray Train, 2 workers (1 core each, DDP over gloo), the global batch split between them
Images/s is the steady state: the mean of the per-epoch `train/images_per_s` after the first epoch
(which pays for start-up: Ray's worker group, Ray Data's first blocks, allocator warm-up).
Prints a table with the ratios to the plain loop and saves benchmarks/results/train_throughput.json.
Target (issue 3): ray-1 >= 0.9x plain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emokp_ray.data.synth import write_synth_dataset  # noqa: E402
from emokp_ray.training.config import TrainConfig  # noqa: E402
from emokp_ray.training.train import run_training  # noqa: E402


def steady_rate(history: list[dict]) -> float:
    rows = history[1:] or history
    return sum(r["train/images_per_s"] for r in rows) / len(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="keypoints", choices=["keypoints", "emotion"])
    p.add_argument("--model", default="course", choices=["course", "wide", "small"])
    p.add_argument("--faces", type=int, default=2400)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--modes", default="plain,ray-1,ray-2")
    p.add_argument("--tag", default="", help="suffix of the results file (train_throughput<tag>.json)")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="emokp-throughput-"))
    try:
        data = work / "data"
        write_synth_dataset(data, n=args.faces, seed=0)
        results = {}
        for mode in args.modes.split(","):
            common = dict(task=args.task, data=str(data), out=str(work / mode), model=args.model, epochs=args.epochs,
                          batch_size=args.batch_size, seed=0, use_gpu=False, keep_checkpoints=1)
            if mode == "plain":
                cfg = TrainConfig(no_ray=True, **common)
            elif mode == "ray-1":
                cfg = TrainConfig(workers=1, cpus_per_worker=float(cores), **common)
            elif mode == "ray-2":
                cfg = TrainConfig(workers=2, cpus_per_worker=max(1.0, cores / 2), **common)
            else:
                raise SystemExit(f"unknown mode {mode}")
            started = time.perf_counter()
            outcome = run_training(cfg, log=lambda line: print(f"  {mode}: {line}") if line.startswith("epoch") else None)
            results[mode] = {"images_per_s": round(steady_rate(outcome.history), 2), "wall_s": round(time.perf_counter() - started, 1),
                             "per_epoch_images_per_s": [round(r["train/images_per_s"], 2) for r in outcome.history]}
            print(f"{mode}: {results[mode]['images_per_s']:.1f} images/s (steady), {results[mode]['wall_s']:.0f} s wall", flush=True)
        base = results.get("plain", {}).get("images_per_s")
        print("\n| mode | images/s | ratio to plain | wall s |\n|---|---|---|---|")
        for mode, r in results.items():
            r["ratio_to_plain"] = round(r["images_per_s"] / base, 3) if base else None
            print(f"| {mode} | {r['images_per_s']:.1f} | {r['ratio_to_plain']} | {r['wall_s']:.0f} |")
        out = REPO / "benchmarks" / "results" / f"train_throughput{args.tag}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "task": args.task, "model": args.model, "faces": args.faces, "epochs": args.epochs, "batch_size": args.batch_size,
            "machine": {"cpus": cores, "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                        "load_average_1m_at_end": os.getloadavg()[0]},
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results}, indent=2) + "\n")
        print(f"saved {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
