"""The labeling driver's peak memory against the input count: `emokp label` over 10,000 and 100,000
small crops, each run in a fresh process whose own peak RSS (ru_maxrss) is recorded.

    python benchmarks/label_memory.py                         # 10,000 and 100,000 96x96 PNG crops
    python benchmarks/label_memory.py --sizes 2000,20000 --out /tmp/label_memory.json

Inputs: 96x96 synthetic face crops as PNG files, 1,000 per sub-folder (a common layout; the listing
walks one folder at a time, label_inputs.py), written from a pool of 1,000 encoded crops (the
content does not change the driver's work). Models: the shipped builtin:keypoints and builtin:emotion
(what `emokp label` uses by default; the driver's memory does not depend on the networks). The driver is the process
that runs `emokp label` (its Ray worker processes are not counted: they hold no per-input state
of the run). Stated bound: the driver's peak RSS over 100,000 inputs stays within BOUND_MB of the
peak over 10,000 (checked here and recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import REPO, add_out_argument, load_average, save

PER_FOLDER = 1000
BOUND_MB = 64  # peak growth allowed from the smallest to the largest input count
SAMPLE_S = 0.2
STATUS_FIELDS = ("RssAnon", "RssFile", "RssShmem")  # kB, /proc/PID/status (Linux)

# The driver: `emokp label ARGS...`, then its own peak RSS (kB on Linux) as the last line.
_DRIVER = """
import resource, sys
from emokp_ray.cli import main
code = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(code)
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="10000,100000", help="input counts, each a fresh driver (default 10000,100000)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    add_out_argument(parser, "label_memory")
    return parser


def write_crops(folder: Path, n: int) -> None:
    import io

    from PIL import Image

    from emokp_ray.data.synth.crops import synthesize

    pool = []
    for image in synthesize(min(n, 1000), seed=0).images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pool.append(buffer.getvalue())
    for i in range(n):
        sub = folder / f"d{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            sub.mkdir(parents=True)
        (sub / f"crop_{i:06d}.png").write_bytes(pool[i % len(pool)])


def read_status(pid: int) -> dict[str, int]:
    """The STATUS_FIELDS of a live process, in kB ({} once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    values = (line.split() for line in lines)
    return {v[0].rstrip(":"): int(v[1]) for v in values if v and v[0].rstrip(":") in STATUS_FIELDS}


def run_driver(folder: Path, out: Path, keypoints: str, emotion: str, batch_size: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster, like a user's run
    command = [
        sys.executable,
        "-c",
        _DRIVER,
        "label",
        str(folder),
        "--keypoints",
        keypoints,
        "--emotion",
        emotion,
        "--out",
        str(out),
        "--detect",
        "crop",
        "--batch-size",
        str(batch_size),
    ]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr, text=True)
        peaks = dict.fromkeys(STATUS_FIELDS, 0)
        while child.poll() is None:
            for field, kb in read_status(child.pid).items():
                peaks[field] = max(peaks[field], kb)
            time.sleep(SAMPLE_S)
        wall = time.perf_counter() - started
        stdout.seek(0)
        stderr.seek(0)
        out_text, err_text = stdout.read(), stderr.read()
    if child.returncode != 0:
        raise SystemExit(f"emokp label failed ({child.returncode}):\n{err_text[-3000:]}")
    maxrss_kb = int(next(line.split()[1] for line in out_text.splitlines() if line.startswith("MAXRSS_KB")))
    summary = json.loads((out / "summary.json").read_text())
    return {
        "images": summary["images"],
        "driver_peak_rss_mb": round(maxrss_kb / 1024, 1),
        # sampled every SAMPLE_S: the driver's own memory (anonymous pages: Python and native heaps)
        # apart from the pages of mapped files and of Ray's shared-memory object store it touched
        "driver_peak_anon_mb": round(peaks["RssAnon"] / 1024, 1),
        "driver_peak_file_mb": round(peaks["RssFile"] / 1024, 1),
        "driver_peak_shmem_mb": round(peaks["RssShmem"] / 1024, 1),
        "wall_s": round(wall, 1),
        "images_per_s": summary["images_per_s"],
        "actors": summary["actors"],
        "load_1m": load_average(),
    }


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    keypoints, emotion = "builtin:keypoints", "builtin:emotion"
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="emokp-label-memory-") as tmp_name:
        tmp = Path(tmp_name)
        for n in sizes:
            folder = tmp / f"crops-{n}"
            write_crops(folder, n)
            run = run_driver(folder, tmp / f"out-{n}", keypoints, emotion, args.batch_size)
            assert run["images"] == n
            runs.append({"n": n, **run})
            print(
                f"{n:,} crops: driver peak RSS {run['driver_peak_rss_mb']:.1f} MB (anon {run['driver_peak_anon_mb']:.1f}, "
                f"files {run['driver_peak_file_mb']:.1f}, shmem {run['driver_peak_shmem_mb']:.1f}), "
                f"{run['images_per_s']:.1f} images/s, "
                f"{run['wall_s']:.0f} s in all (load {run['load_1m']})",
                flush=True,
            )
            import shutil

            shutil.rmtree(folder)
    growth = runs[-1]["driver_peak_rss_mb"] - runs[0]["driver_peak_rss_mb"]
    anon_growth = runs[-1]["driver_peak_anon_mb"] - runs[0]["driver_peak_anon_mb"]
    result = {
        "runs": runs,
        "growth_mb": round(growth, 1),
        "anon_growth_mb": round(anon_growth, 1),
        "bound_mb": BOUND_MB,
        "within_bound": growth <= BOUND_MB,
        "anon_within_bound": anon_growth <= BOUND_MB,
        "per_folder": PER_FOLDER,
        "batch_size": args.batch_size,
    }
    print(
        f"driver peak RSS grew {growth:+.1f} MB from {sizes[0]:,} to {sizes[-1]:,} inputs "
        f"(bound {BOUND_MB} MB: {'met' if result['within_bound'] else 'NOT met'}); its anonymous memory "
        f"{anon_growth:+.1f} MB ({'met' if result['anon_within_bound'] else 'NOT met'})"
    )
    return save(result, args.out)


if __name__ == "__main__":
    main()
