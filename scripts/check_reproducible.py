"""Check that training is reproducible at a given worker count: the same synthetic data, --seed and
--workers twice give identical metrics.jsonl (every metric but the wall-clock train/images_per_s),
and another seed gives different ones. The test suite checks 1 worker
(tests/test_train_ray.py::test_same_seed_and_workers_give_the_same_metrics); this is the check for
more workers, too slow for the suite (three Ray Train runs per task, ~40 s each on 2 cores).

    python scripts/check_reproducible.py                      # 2 workers, both tasks
    python scripts/check_reproducible.py --workers 4 --tasks emotion

Each run is `emokp train TASK --workers W --epochs 2 --model small --random-erasing 0.5` (dropout
and erasing on, so every random stream is exercised) in its own process, as a user runs it. Exits 1
and prints the first differing epoch's metrics when a same-seed pair differs. The result is saved
to results/reproducible_<W>workers.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emokp_ray.training.loop import WALL_CLOCK_METRICS

REPO = Path(__file__).resolve().parents[1]


def emokp(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "emokp_ray.cli", *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def metrics(run_dir: Path) -> list[dict]:
    """RUN_DIR/metrics.jsonl without the wall-clock metrics, one dict per epoch."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK_METRICS} for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--tasks", nargs="+", default=["keypoints", "emotion"], choices=["keypoints", "emotion"])
    parser.add_argument("--faces", type=int, default=160, help="synthetic faces, 10%% of them validation (default 160)")
    args = parser.parse_args(argv)

    report: dict = {"workers": args.workers, "faces": args.faces, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    ok = True
    with tempfile.TemporaryDirectory(prefix="emokp-repro-") as tmp_name:
        tmp = Path(tmp_name)
        emokp("data", "synth", "--out", str(tmp / "data"), "--n", str(args.faces), "--seed", "0")
        for task in args.tasks:
            runs = {}
            for name, seed in (("a", 5), ("b", 5), ("c", 6)):
                out = tmp / f"{task}-{name}"
                started = time.monotonic()
                emokp(
                    "train", task, "--data", str(tmp / "data"), "--out", str(out), "--workers", str(args.workers),
                    "--cpus-per-worker", "1", "--epochs", "2", "--batch-size", "16", "--model", "small",
                    "--random-erasing", "0.5", "--seed", str(seed),
                )  # fmt: skip
                runs[name] = metrics(out)
                print(f"{task} run {name} (seed {seed}): {time.monotonic() - started:.0f} s", flush=True)
            same, differs = runs["a"] == runs["b"], runs["a"] != runs["c"]
            report[task] = {"same_seed_identical": same, "other_seed_differs": differs, "epochs": len(runs["a"])}
            print(f"{task}, {args.workers} workers: same seed identical {same}; another seed differs {differs}")
            if not same:
                for row_a, row_b in zip(runs["a"], runs["b"]):
                    diff = {
                        k: (row_a.get(k), row_b.get(k))
                        for k in row_a.keys() | row_b.keys()
                        if row_a.get(k) != row_b.get(k)
                    }
                    if diff:
                        print(f"  first difference, epoch {row_a.get('epoch')}: {diff}")
                        break
            ok = ok and same and differs
    out = REPO / "results" / f"reproducible_{args.workers}workers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"saved {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
