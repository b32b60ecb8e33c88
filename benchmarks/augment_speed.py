"""Images per second of the batch augmentations on ONE CPU core (the process is pinned to one core).

    python benchmarks/augment_speed.py [--batch-size 256] [--repeats 15] [--out benchmarks/results/augment_speed.json]

Each case augments the same batch of random uint8 images `repeats` times with a fresh draw each time
(keypoints, where the case has them, sit where faces have them: uniform in the central 60% of the
crop). Reported: the median and best seconds per batch and images/s from the median.
  keypoint_96, keypoint_48     augment_keypoint_batch, KeypointAugment() defaults (flip, rotation,
                               scale, shift, brightness/contrast, in-frame check)
  emotion_48, emotion_96       augment_emotion_batch, EmotionAugment() defaults (Keras-equivalent)
  resize_48_to_96              data/resize.resize_batch alone (the one resize, run before augmenting)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from emokp_ray.data.augment.policies import (
    EmotionAugment,
    KeypointAugment,
    augment_emotion_batch,
    augment_keypoint_batch,
)
from emokp_ray.data.resize import resize_batch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "augment_speed.json"


def make_batch(n: int, size: int, with_keypoints: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        "image": rng.integers(0, 256, (n, size, size), dtype=np.uint8),
        "label": rng.integers(0, 5, n).astype(np.int64),
    }
    if with_keypoints:
        batch["keypoints"] = rng.uniform(0.2 * size, 0.8 * size, (n, 30)).astype(np.float32)
    return batch


def cases(n: int) -> dict:
    """name -> (function of (batch, rng), batch)."""
    return {
        "keypoint_96": (lambda b, r: augment_keypoint_batch(b, KeypointAugment(), r), make_batch(n, 96, True)),
        "keypoint_48": (lambda b, r: augment_keypoint_batch(b, KeypointAugment(), r), make_batch(n, 48, True)),
        "emotion_48": (lambda b, r: augment_emotion_batch(b, EmotionAugment(), r), make_batch(n, 48, False)),
        "emotion_96": (lambda b, r: augment_emotion_batch(b, EmotionAugment(), r), make_batch(n, 96, False)),
        "resize_48_to_96": (lambda b, r: resize_batch(b, 96), make_batch(n, 48, False)),
    }


def measure(fn, batch: dict, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    fn(batch, rng)  # warm-up: allocations, first-touch pages
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(batch, rng)
        times.append(time.perf_counter() - started)
    n = len(batch["image"])
    median = statistics.median(times)
    return {
        "batch_size": n,
        "input_hw": list(batch["image"].shape[1:]),
        "median_s": round(median, 5),
        "best_s": round(min(times), 5),
        "images_per_s": round(n / median),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    pinned = None
    if hasattr(os, "sched_setaffinity"):
        pinned = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {pinned})  # one core, as one Ray Data CPU task gets
    results = {name: measure(fn, batch, args.repeats) for name, (fn, batch) in cases(args.batch_size).items()}
    report = {
        "benchmark": "augment_speed",
        "unit": "images/s on one core",
        "pinned_core": pinned,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "repeats": args.repeats,
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'case':<18} {'input':>7} {'median ms':>10} {'images/s':>9}")
    for name, r in results.items():
        print(f"{name:<18} {'x'.join(map(str, r['input_hw'])):>7} {1000 * r['median_s']:>10.1f} {r['images_per_s']:>9}")
    print(f"saved {args.out}")
    return report


if __name__ == "__main__":
    main()
