"""Single-core throughput of the synthetic face generator, in faces per second.

    python benchmarks/synth_speed.py                  # 8,192 faces x 5 repeats, then a Parquet write
    python benchmarks/synth_speed.py --n 2048 --repeats 3 --grid /tmp/synth_grid.png

The process is pinned to one CPU and BLAS/OpenMP pools to one thread before numpy is imported, so the
figure is what ONE core gives (numpy's elementwise work is single-threaded anyway). Reported:
`faces_per_s` (best of the repeats, wall clock: the least disturbed run on a shared machine), the
median, the CPU-time rate, and `write_faces_per_s` for `write_synth_dataset` (render + Parquet).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import add_out_argument, load_average, save

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192, help="faces per timed run (default 8192)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, each with its own seed (default 5)")
    parser.add_argument("--chunk-size", type=int, default=None, help="faces per render (default: SynthConfig's)")
    parser.add_argument("--no-write", action="store_true", help="skip the write_synth_dataset timing")
    parser.add_argument("--grid", type=Path, default=None, help="also save a 5x5 preview grid PNG here")
    add_out_argument(parser, "synth_speed")
    return parser


def pin_to_one_core() -> int | None:
    """Limit this process to one CPU (Linux); returns the CPU or None where affinity is unsupported."""
    for var in THREAD_VARS:
        os.environ[var] = "1"
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return cpu
    return None


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    cpu = pin_to_one_core()
    from PIL import Image  # numpy (imported by these) after the thread limits are set

    from emokp_ray.data.synth.crops import SynthConfig, face_grid, synthesize, write_synth_dataset

    options = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    synthesize(256, seed=12345, **options)  # warm-up: imports, allocator, caches
    walls, cpus = [], []
    for repeat in range(args.repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        batch = synthesize(args.n, seed=repeat, **options)
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
        print(f"run {repeat}: {args.n / walls[-1]:,.0f} faces/s wall, {args.n / cpus[-1]:,.0f} faces/s cpu", flush=True)
    assert batch.images.shape == (args.n, 96, 96)
    result = {
        "faces_per_s": round(args.n / min(walls), 1),
        "faces_per_s_median": round(args.n / statistics.median(walls), 1),
        "cpu_faces_per_s": round(args.n / min(cpus), 1),
        "n": args.n,
        "repeats": args.repeats,
        "chunk_size": options.get("chunk_size", SynthConfig.chunk_size),
        "pinned_cpu": cpu,
        "load_average_1m_at_start": load_average(),
    }
    if not args.no_write:
        with tempfile.TemporaryDirectory() as tmp:
            summary = write_synth_dataset(Path(tmp) / "synth", n=args.n, seed=0, **options)
        result["write_faces_per_s"] = summary["faces_per_s"]
        print(f"write_synth_dataset: {summary['faces_per_s']:,.0f} faces/s (render + Parquet)")
    print(
        f"synth: {result['faces_per_s']:,.0f} faces/s on one core (best of {args.repeats}; median {result['faces_per_s_median']:,.0f}; cpu-time {result['cpu_faces_per_s']:,.0f})"
    )
    result = save(result, args.out)
    if args.grid is not None:
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        grid = face_grid(per_class=5, seed=0)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(args.grid)
        print(f"saved {args.grid}")
    return result


if __name__ == "__main__":
    main()
