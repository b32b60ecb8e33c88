"""`emokp predict` speed with the shipped models: start-up plus one photo, then the cost per photo.

    python benchmarks/predict_cli.py [--repeats 3] [--photos N]

1. start-up + one photo: wall time of `emokp predict PHOTO --json` as a fresh process (imports,
   loading builtin:keypoints and builtin:emotion, the detector, one detection and both networks
   with flip TTA), median of --repeats runs;
2. per photo after that: in one process, the median time of Predictor.predict on each bundled photo
   (detection + both networks), with flip TTA (the default) and without, side by side.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import REPO, add_out_argument, save, timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-photo-rounds", type=int, default=10)
    add_out_argument(parser, "predict_cli")
    args = parser.parse_args(argv)

    from emokp_ray.inference.images import load_image_file
    from emokp_ray.inference.predictor import Predictor

    photos = sorted((REPO / "emokp_ray" / "photos").glob("*.jpg"))
    cold = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "emokp_ray.cli", "predict", str(photos[0]), "--json"],
            check=True,
            capture_output=True,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        cold.append(time.perf_counter() - start)

    predictor = Predictor.from_paths("builtin:keypoints", "builtin:emotion", device="cpu")
    images = [load_image_file(p) for p in photos]
    per_photo = {}
    for tta in (True, False):
        predictor.flip_tta = tta
        predictor.predict([images[0]])  # warm-up
        times = [
            second
            for _ in range(args.per_photo_rounds)
            for image in images
            for second in timings(functools.partial(predictor.predict, [image]), repeats=1, warmup=0)
        ]
        per_photo["flip_tta" if tta else "no_tta"] = statistics.median(times)

    result: dict[str, Any] = {
        "photos": [p.name for p in photos],
        "startup_plus_one_photo_s": {"median": statistics.median(cold), "runs": cold},
        "per_photo_s": per_photo,
        "tta_cost_ratio": per_photo["flip_tta"] / per_photo["no_tta"],
    }
    print(
        f"{'emokp predict, fresh process, 1 photo':45s} {result['startup_plus_one_photo_s']['median']:.2f} s (median of {len(cold)})"
    )
    print(f"{'per photo after start-up, flip TTA (default)':45s} {per_photo['flip_tta'] * 1000:.0f} ms")
    print(
        f"{'per photo after start-up, no TTA':45s} {per_photo['no_tta'] * 1000:.0f} ms  (TTA costs {result['tta_cost_ratio']:.2f}x)"
    )
    save(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
