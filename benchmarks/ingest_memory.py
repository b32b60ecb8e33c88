"""Peak memory and speed of `prepare_dataset` (streamed) against a naive whole-file pandas load.

    python benchmarks/ingest_memory.py [--data ../shared/data] [--out FILE]

Each measurement runs in its own child process, so its peak RSS (getrusage ru_maxrss) is its own.
Every child imports the same libraries (numpy, pandas, pyarrow, emokp_ray) before it starts, and
reports that baseline too, so "added" is what the work itself cost.
  prepare       prepare_dataset([fer2013.csv.gz]) into a temporary dir (validates every row, writes Parquet)
  naive_pandas  pd.read_csv(fer2013.csv.gz) then every pixel string -> one uint8 [N, 48, 48] array
  prepare_both  prepare_dataset([fer2013.csv.gz, training.csv.gz]): the full time of both real files
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import REPO, add_out_argument, load_average, save

DEFAULT_DATA = REPO.parent / "shared" / "data"
FER = Path("fer2013") / "fer2013.csv.gz"
KEYPOINTS = Path("facial-keypoints") / "training.csv.gz"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(mode: str, data: Path) -> dict:
    """Run one measurement in this process and return its figures."""
    import numpy as np
    import pandas as pd
    import pyarrow  # noqa: F401  (same imports in every mode: a fair baseline)

    from emokp_ray.data.prepare import prepare_dataset

    baseline = _peak_rss_mb()
    started = time.perf_counter()
    if mode == "naive_pandas":
        frame = pd.read_csv(data / FER)
        images = np.stack([np.array(s.split(), dtype=np.uint8) for s in frame["pixels"]]).reshape(-1, 48, 48)
        rows_read, rows_kept = len(frame), len(images)
    else:
        inputs = [data / FER] + ([data / KEYPOINTS] if mode == "prepare_both" else [])
        with tempfile.TemporaryDirectory() as tmp:
            result = prepare_dataset(inputs, Path(tmp) / "prepared")
        rows_read = sum(r.rows_read for r in result.reports)
        rows_kept = sum(r.rows_kept for r in result.reports)
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    return {
        "mode": mode,
        "seconds": round(seconds, 2),
        "rows_read": rows_read,
        "rows_kept": rows_kept,
        "rows_per_s": round(rows_read / seconds),
        "peak_rss_mb": round(peak, 1),
        "baseline_rss_mb": round(baseline, 1),
        "added_rss_mb": round(peak - baseline, 1),
    }


def run_child(mode: str, data: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--data", str(data)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with fer2013/ and facial-keypoints/")
    add_out_argument(parser, "ingest_memory")
    parser.add_argument("--child", choices=["prepare", "naive_pandas", "prepare_both"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data)))
        return
    if not (args.data / FER).exists():
        sys.exit(f"real data not found: {args.data / FER} (pass --data)")
    load_before = load_average()  # other work on the machine slows the timings
    runs = {mode: run_child(mode, args.data) for mode in ("prepare", "naive_pandas")}
    if (args.data / KEYPOINTS).exists():
        runs["prepare_both"] = run_child("prepare_both", args.data)
    streamed, naive = runs["prepare"], runs["naive_pandas"]
    figures = {
        "file": str(FER),
        "file_mb": round((args.data / FER).stat().st_size / 2**20, 1),
        "load_average_1min_before": load_before,
        "runs": runs,
        "naive_over_streamed": {
            "added_rss": round(naive["added_rss_mb"] / streamed["added_rss_mb"], 1),
            "peak_rss": round(naive["peak_rss_mb"] / streamed["peak_rss_mb"], 1),
            "seconds": round(naive["seconds"] / streamed["seconds"], 2),
        },
    }
    print(f"{'run':<14}{'seconds':>9}{'rows/s':>9}{'peak MB':>9}{'added MB':>10}  rows read -> kept")
    for run in runs.values():
        print(
            f"{run['mode']:<14}{run['seconds']:>9.1f}{run['rows_per_s']:>9,}{run['peak_rss_mb']:>9.0f}"
            f"{run['added_rss_mb']:>10.0f}  {run['rows_read']:,} -> {run['rows_kept']:,}"
        )
    ratio = figures["naive_over_streamed"]
    print(
        f"naive pandas / streamed prepare: {ratio['added_rss']}x added memory, {ratio['peak_rss']}x peak RSS, "
        f"{ratio['seconds']}x time"
    )
    save(figures, args.out)


if __name__ == "__main__":
    main()
