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
import os
import sys
from pathlib import Path

import numpy as np

from emokp_ray.data.augment.policies import (
    EmotionAugment,
    KeypointAugment,
    augment_emotion_batch,
    augment_keypoint_batch,
)
from emokp_ray.data.resize import resize_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import add_out_argument, save, summary, timings


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
    # a fresh draw each call; the warm-up call pays allocations and first-touch pages
    timed = summary(timings(lambda: fn(batch, rng), repeats))
    n = len(batch["image"])
    return {
        "batch_size": n,
        "input_hw": list(batch["image"].shape[1:]),
        **timed,
        "images_per_s": round(n / timed["median_s"]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    add_out_argument(parser, "augment_speed")
    args = parser.parse_args(argv)

    pinned = None
    if hasattr(os, "sched_setaffinity"):
        pinned = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {pinned})  # one core, as one Ray Data CPU task gets
    results = {name: measure(fn, batch, args.repeats) for name, (fn, batch) in cases(args.batch_size).items()}
    print(f"{'case':<18} {'input':>7} {'median ms':>10} {'images/s':>9}")
    for name, r in results.items():
        print(f"{name:<18} {'x'.join(map(str, r['input_hw'])):>7} {1000 * r['median_s']:>10.1f} {r['images_per_s']:>9}")
    report = {"unit": "images/s on one core", "pinned_core": pinned, "repeats": args.repeats, "cases": results}
    return save(report, args.out)


if __name__ == "__main__":
    main()
