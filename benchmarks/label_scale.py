"""Labeling scale figures on the two-node local cluster of emokp_ray/local_cluster.py, the one
tests/test_cluster.py uses (`ray start` twice on loopback, 3 logical CPUs per node): images/s with
1, 2 and 4 network actors, the driver's CPU share, and the ratio to the plain single-process loop
over the same files, side by side.

    python benchmarks/label_scale.py                          # 2,000 96x96 PNG crops, course nets
    python benchmarks/label_scale.py --n 600 --kind photos --detect detect --out benchmarks/results/label_scale_photos.json

Each Ray run is a fresh driver process joined to the cluster (RAY_ADDRESS, as a Ray Job's driver
is), running `run_label` with the split stages (read + decode + detect + crop in CPU tasks, the
networks in an actor pool of A actors x 1 CPU x 1 torch thread, part files written by tasks). The
driver's CPU share is its process CPU time over its wall time (it only follows the parts' counts).
The plain loop (benchmarks/fixtures.py's) runs first in this process, with 1 and 2 torch
threads; the ratio is Ray / the better plain loop. GPU: no GPU on this machine, so actors per GPU
and the batch size that fills one are untested here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import REPO, add_out_argument, load_average, save

_DRIVER = """
import json, sys, time
wall, cpu = time.perf_counter(), time.process_time()
from emokp_ray.inference.label import run_label
args = json.loads(sys.argv[1])
summary = run_label(**args)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print("RESULT", json.dumps({"summary": summary.to_dict(), "driver_wall_s": wall, "driver_cpu_s": cpu}), flush=True)
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="image files (default 2000)")
    parser.add_argument("--kind", choices=["crops", "photos"], default="crops")
    parser.add_argument("--detect", choices=["crop", "detect"], default="crop")
    parser.add_argument("--actors", default="1,2,4", help="network actors per run (default 1,2,4)")
    parser.add_argument("--batch-size", type=int, default=32)
    add_out_argument(parser, "label_scale")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    from benchmarks.fixtures import course_checkpoints, plain_loop, write_inputs
    from emokp_ray.local_cluster import TwoNodeCluster

    result: dict = {
        "n": args.n,
        "kind": args.kind,
        "detect": args.detect,
        "batch_size": args.batch_size,
        "gpu": "untested: no GPU on this machine",
        "plain": {},
        "ray": {},
    }
    with tempfile.TemporaryDirectory(prefix="emokp-label-scale-") as tmp_name:
        tmp = Path(tmp_name)
        write_inputs(tmp / "images", args.n, args.kind)
        keypoints, emotion = course_checkpoints(tmp / "ckpt", emotion_input_size=96)
        for threads in (1, 2):
            run = plain_loop(
                tmp / "images", keypoints, emotion, args.batch_size, args.detect, threads, tmp / f"plain-{threads}"
            )
            result["plain"][f"{threads} threads"] = run
            print(
                f"plain loop, {threads} torch threads: {run['images_per_s']:.1f} images/s (load {run['load_1m']})",
                flush=True,
            )
        best = max(r["images_per_s"] for r in result["plain"].values())
        cluster = TwoNodeCluster(cpus_per_node=3)
        try:
            started = time.monotonic()
            cluster.start()
            result["cluster_start_s"] = round(time.monotonic() - started, 1)
            env = {**cluster.env, "RAY_ADDRESS": f"127.0.0.1:{cluster.gcs_port}"}
            for actors in (int(a) for a in args.actors.split(",")):
                call = dict(
                    input=str(tmp / "images"),
                    keypoints=keypoints,
                    emotion=emotion,
                    out=str(tmp / f"out-{actors}"),
                    batch_size=args.batch_size,
                    concurrency=actors,
                    num_cpus=1.0,
                    threads=1,
                    use_gpu=False,
                    detect=args.detect,
                    progress=False,
                    stages="split",
                )
                done = subprocess.run(
                    [sys.executable, "-c", _DRIVER, json.dumps(call)], cwd=REPO, env=env, capture_output=True, text=True
                )
                if done.returncode != 0:
                    raise SystemExit(f"{actors} actors: the driver failed:\n{done.stderr[-3000:]}")
                line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
                got = json.loads(line[len("RESULT ") :])
                summary = got["summary"]
                assert summary["images"] == args.n and summary["errors"] == 0
                run = {
                    "images_per_s": summary["images_per_s"],
                    "steady_images_per_s": summary["steady_images_per_s"],
                    "startup_s": summary["startup_s"],
                    "seconds": summary["seconds"],
                    "actors": summary["actors"],
                    "driver_cpu_share": round(got["driver_cpu_s"] / got["driver_wall_s"], 3),
                    "ratio_to_plain": round(summary["images_per_s"] / best, 3),
                    "load_1m": load_average(),
                }
                result["ray"][f"{actors} actors"] = run
                print(
                    f"{actors} actor(s) on 2 nodes: {run['images_per_s']:.1f} images/s ({run['ratio_to_plain']:.2f}x the plain loop; "
                    f"steady {run['steady_images_per_s']:.1f}), driver CPU {run['driver_cpu_share']:.1%} (load {run['load_1m']})",
                    flush=True,
                )
        finally:
            cluster.stop()
    print("GPU path untested: no GPU on this machine")
    return save(result, args.out)


if __name__ == "__main__":
    main()
