"""Regenerate the shipped release models (builtin:keypoints, builtin:emotion, builtin:emotion-fer7)
from the Kaggle files in ../shared/data, with the exact recipe, step by step:

    python scripts/build_release_models.py prepare    # Kaggle CSVs -> prepared/release/{kp,fer,fer7}
    python scripts/build_release_models.py train      # the three `--recipe release` runs, side by side
    python scripts/build_release_models.py finish     # temperature on val, test evaluation, fp16 export,
                                                      # model card -> emokp_ray/builtin/
    python scripts/build_release_models.py all        # the three in order

`train` is resumable: run it again after an interruption and each run continues from its latest
checkpoint (`emokp train --resume`). Runs go to runs/release/NAME (ignored by git); their console
logs and per-epoch metrics are copied to results/release/ (committed beside the models).

Each run is `emokp train TASK --recipe release --no-ray` in its own process with ONE torch thread:
on a 2-core machine, three single-thread processes keep both cores busier than one run at a time
with two threads (whose per-op barriers stall whenever anything else runs), and the plain loop is the
same code that Ray Train runs in each worker. On a GPU box pass `--threads 0` (torch's default) and
the runs use the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PREPARED = REPO / "prepared" / "release"
RUNS = REPO / "runs" / "release"
RESULTS = REPO / "results" / "release"
BUILTIN = REPO / "emokp_ray" / "builtin"

# builtin name -> (task, prepared data set, `emokp data prepare` arguments)
MODELS = {
    "keypoints": ("keypoints", "kp", [str(SHARED / "facial-keypoints" / "training.csv.gz")]),
    "emotion": ("emotion", "fer", [str(SHARED / "fer2013" / "fer2013.csv.gz"), "--scheme", "seed5"]),
    "emotion-fer7": ("emotion", "fer7", [str(SHARED / "fer2013" / "fer2013.csv.gz"), "--scheme", "fer7"]),
}
SPLIT_SEED = 0   # `emokp data prepare --seed`: the val (and keypoint test) shares


def emokp(*args: str) -> list[str]:
    return [sys.executable, "-m", "emokp_ray.cli", *args]


def prepare() -> None:
    for name, (_task, folder, inputs) in MODELS.items():
        out = PREPARED / folder
        if (out / "dataset.json").is_file():
            print(f"prepare: {out} exists, kept")
            continue
        subprocess.run(emokp("data", "prepare", *inputs, "--out", str(out), "--seed", str(SPLIT_SEED)), check=True)


def train(names: list[str], threads: int) -> None:
    """Start every run at once (one process each), wait for all; logs -> results/release/NAME.log."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    procs = {}
    for name in names:
        task, folder, _ = MODELS[name]
        run_dir = RUNS / name
        cmd = emokp("train", task, "--data", str(PREPARED / folder), "--out", str(run_dir), "--recipe", "release", "--no-ray")
        if (run_dir / "config.json").is_file():
            cmd.append("--resume")
        log = open(RESULTS / f"{name}.log", "a")
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd[1:])}\n")
        log.flush()
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO), log)
        print(f"train: {name} started (pid {procs[name][0].pid}), log {RESULTS / (name + '.log')}")
    failed = []
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            failed.append(name)
        log.close()
        if (RUNS / name / "metrics.jsonl").is_file():
            shutil.copy(RUNS / name / "metrics.jsonl", RESULTS / f"{name}.metrics.jsonl")
    if failed:
        raise SystemExit(f"train: {', '.join(failed)} failed; see results/release/*.log, then rerun to resume")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "train", "finish", "all"])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training process (0: torch's default)")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(MODELS)})")
    if not SHARED.is_dir() and args.step in ("prepare", "all"):
        parser.error(f"{SHARED} not found: the Kaggle files are expected there (see its README)")
    if args.step in ("prepare", "all"):
        prepare()
    if args.step in ("train", "all"):
        train(names, args.threads)
    if args.step in ("finish", "all"):
        from emokp_ray.release_build import finish

        finish(names, PREPARED, RUNS, RESULTS, BUILTIN, {n: MODELS[n][:2] for n in names})
    return 0


if __name__ == "__main__":
    sys.exit(main())
