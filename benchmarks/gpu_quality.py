"""Run several quality recipes side by side on one GPU within a time budget (no Ray needed).

    python benchmarks/gpu_quality.py --data DIR --task emotion --budget-s 300 --out RESULTS_DIR \
        --run default --run wide --run course

Each run first trains 25 steps to measure its images/s with the others running beside it, then
gets the number of epochs that fits the budget (capped by its recipe), and trains for real. Every
run's metrics.jsonl and result JSON land in RESULTS_DIR, also when the budget's hard stop kills a run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality import RECIPES  # noqa: E402
from emokp_ray.data.schema import read_info  # noqa: E402
from emokp_ray.labels import emotion_scheme  # noqa: E402

PROBE_STEPS = 25
EPOCH_OVERHEAD_S = 1.5  # validation, checkpoint writing, bookkeeping per epoch (measured on CPU, rounded up)


def _launch(task, recipe, data, run_dir, results, extra_sets, log_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "quality.py"), task, "--data", data, "--recipe", recipe,
           "--out", str(run_dir), "--results", str(results)]
    for item in extra_sets:
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=REPO, env=env)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--task", required=True, choices=sorted(RECIPES))
    p.add_argument("--run", action="append", required=True, help="recipe name, optionally NAME:key=value,key=value")
    p.add_argument("--budget-s", type=float, required=True, help="seconds for the real runs (after the probe)")
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=str(REPO / "runs" / "gpu"))
    args = p.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    info = read_info(args.data)
    train = info.counts["train"]
    if args.task == "keypoints":
        n_train = train["keypoints"]
    else:
        n_train = sum(train.get(c, 0) for c in emotion_scheme(info.scheme or "seed5").classes)
    n_val = info.counts["val"]["rows"]

    runs = []
    for spec in args.run:
        name, _, sets = spec.partition(":")
        recipe, _, label = name.partition("@")
        runs.append({"recipe": recipe, "label": label or recipe, "sets": [s for s in sets.split(",") if s]})

    # 1. probe: all runs at once, PROBE_STEPS steps each
    t0 = time.time()
    procs = []
    for r in runs:
        rdir = work / f"probe-{r['label']}"
        procs.append(_launch(args.task, r["recipe"], args.data, rdir, work / "probe-results",
                             r["sets"] + ["epochs=1", f"max_steps_per_epoch={PROBE_STEPS}"], work / f"probe-{r['label']}.log"))
    for proc in procs:
        proc.wait()
    print(f"probe took {time.time() - t0:.0f} s", flush=True)

    # 2. epochs that fit the budget
    for r in runs:
        rows = [json.loads(l) for l in (work / f"probe-{r['label']}" / "metrics.jsonl").read_text().splitlines()]
        ips = rows[-1]["train/images_per_s"]
        recipe_epochs = RECIPES[args.task][r["recipe"]]["epochs"]
        sets = dict(s.split("=", 1) for s in r["sets"])
        recipe_epochs = int(sets.get("epochs", recipe_epochs))
        per_epoch = n_train / ips + n_val / (3 * ips) + EPOCH_OVERHEAD_S
        r["epochs"] = max(1, min(recipe_epochs, math.floor(args.budget_s / per_epoch)))
        r["probe_images_per_s"] = ips
        print(f"{r['label']}: probe {ips:.0f} img/s -> {per_epoch:.1f} s/epoch -> {r['epochs']} epochs", flush=True)

    # 3. the real runs, side by side; a hard stop at 1.25x the budget keeps what was measured
    procs = []
    for r in runs:
        sets = [s for s in r["sets"] if not s.startswith("epochs=")] + [f"epochs={r['epochs']}"]
        r["run_dir"] = work / r["label"]
        procs.append(_launch(args.task, r["recipe"], args.data, r["run_dir"], work / "results", sets,
                             out / f"{args.task}-{r['label']}.log"))
    deadline = time.time() + 1.25 * args.budget_s
    for proc in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
    for r in runs:
        metrics = r["run_dir"] / "metrics.jsonl"
        if metrics.exists():
            shutil.copy(metrics, out / f"{args.task}-{r['label']}-metrics.jsonl")
        result = work / "results" / f"quality_{args.task}_{r['recipe']}.json"
        if result.exists():
            shutil.copy(result, out / f"quality_{args.task}_{r['label']}.json")
    (out / f"{args.task}-plan.json").write_text(json.dumps(
        [{k: str(v) if isinstance(v, Path) else v for k, v in r.items()} for r in runs], indent=2))
    print(f"total {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
