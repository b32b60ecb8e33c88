"""Batch labeling throughput: Ray Data (`run_label`) against a plain in-process loop of the same
Predictor over the same image files, side by side in one run.

    python benchmarks/label_throughput.py                       # 20,000 96x96 PNG crops, 2 rounds
    python benchmarks/label_throughput.py --n 4000 --repeats 3 --out benchmarks/results/label_throughput_4000.json
    python benchmarks/label_throughput.py --kind photos         # 320x240..640x480 photos, one crop each
    python benchmarks/label_throughput.py --kind photos --detect detect --stages split,single --n 600 \
        --out benchmarks/results/label_throughput_photos_detect.json   # Haar detection: split vs single stage

Models: the two course ResNets (18.0 M and 1.2 M parameters), randomly initialized (speed does not
depend on the weights) and saved with save_checkpoint. Inputs: synthetic 96x96 face crops saved as
PNG (--kind crops), or synthetic photos saved as PNG/JPEG and labelled in crop mode (--kind photos:
decoding a photo and resizing it to the model size is part of the work; no OpenCV needed).

Both sides do the same job on batches of --batch-size images: read every file, decode it, find the
faces (--detect detect: OpenCV's Haar detector) or take the image as one crop (--detect crop), run
both networks, build the output rows (label_stages.BatchLabeler) and write Parquet; the Ray side is
`run_label` with --stages: "split" (read + decode + detect + crop in Ray Data CPU tasks, the networks
in the actor pool, the part files written by tasks) and/or "single" (all but the writing in the
actors, the shape before the split). Two figures per side:
images/s end to end (from the start: models loaded, actors started) and steady images/s (after the
first batch's results: the rate a long run tends to). The plain loop runs with each of
--plain-threads torch threads; a Ray config "AxT" is A actors with T torch threads and T logical
CPUs each. Each round runs every variant once, plain first; a Ray ratio is Ray / the best plain loop
of the same round, median over the rounds (the machine is shared, so load drifts between rounds).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.fixtures import course_checkpoints, plain_loop, write_inputs
from benchmarks.harness import add_out_argument, load_average, save


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="image files (default 20000)")
    parser.add_argument(
        "--kind", choices=["crops", "photos"], default="crops", help="96x96 PNG crops or photos (default crops)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images per model batch; a Ray call takes 8 (default 32)"
    )
    parser.add_argument(
        "--configs",
        default="2x1",
        help="Ray configs AxT: A actors x T threads (default 2x1: `emokp label`'s default here)",
    )
    parser.add_argument(
        "--stages", default="split", help="Ray pipeline shapes, each run: split, single or split,single (default split)"
    )
    parser.add_argument(
        "--detect",
        choices=["crop", "detect"],
        default="crop",
        help="each image one crop, or Haar detection (default crop)",
    )
    parser.add_argument(
        "--plain-threads", default="1,2", help="torch threads of the plain loop, each run (default 1,2)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds alternating plain and Ray (default 2)")
    parser.add_argument(
        "--backends",
        default="torch,onnx",
        help="network backends of the Ray runs, each run (default torch,onnx); the plain loop is torch",
    )
    add_out_argument(parser, "label_throughput")
    return parser


def ray_run(
    folder: Path,
    keypoints: str,
    emotion: str,
    batch_size: int,
    actors: int,
    threads: int,
    out: Path,
    mode: str = "crop",
    stages: str = "split",
    backend: str = "torch",
) -> dict:
    from emokp_ray.inference.label import run_label

    wall = time.perf_counter()
    summary = run_label(
        str(folder),
        keypoints,
        emotion,
        str(out),
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=threads,
        threads=threads,
        detect=mode,
        use_gpu=False,
        progress=False,
        stages=stages,
        backend=backend,
    )
    wall = time.perf_counter() - wall
    assert summary.errors == 0
    return {
        "seconds": summary.seconds,
        "images_per_s": summary.images_per_s,
        "startup_s": summary.startup_s,
        "steady_images_per_s": summary.steady_images_per_s,
        "wall_s": round(wall, 3),
        "actors": summary.actors,
        "load_1m": load_average(),
    }


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    plain_threads = [int(t) for t in args.plain_threads.split(",")]
    shapes = args.stages.split(",")
    backends = args.backends.split(",")

    from emokp_ray.ray_utils import init_ray

    plain: dict[str, list[dict]] = {f"{t} threads": [] for t in plain_threads}
    ray: dict[str, list[dict]] = {f"{shape} {a}x{t} {b}": [] for shape in shapes for a, t in configs for b in backends}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_inputs(tmp / "images", args.n, args.kind)
        keypoints, emotion = course_checkpoints(tmp / "ckpt", emotion_input_size=96)
        init_ray()
        for repeat in range(args.repeats):  # alternate, so a change of load hits both sides
            for threads in plain_threads:
                run = plain_loop(
                    tmp / "images", keypoints, emotion, args.batch_size, args.detect, threads, tmp / f"plain-{threads}"
                )
                plain[f"{threads} threads"].append(run)
                print(
                    f"round {repeat}: plain, {threads} torch threads: {run['images_per_s']:.1f} images/s "
                    f"(steady {run['steady_images_per_s']:.1f}; {run['cpu_ms_per_image']:.2f} ms CPU per image; load {run['load_1m']})",
                    flush=True,
                )
            for shape, (actors, threads), backend in itertools.product(shapes, configs, backends):
                run = ray_run(
                    tmp / "images",
                    keypoints,
                    emotion,
                    args.batch_size,
                    actors,
                    threads,
                    tmp / f"out-{shape}-{actors}x{threads}-{backend}",
                    mode=args.detect,
                    stages=shape,
                    backend=backend,
                )
                ray[f"{shape} {actors}x{threads} {backend}"].append(run)
                print(
                    f"round {repeat}: ray {shape} {actors}x{threads} {backend}: {run['images_per_s']:.1f} images/s "
                    f"(steady {run['steady_images_per_s']:.1f}, first part after {run['startup_s']:.1f} s; load {run['load_1m']})",
                    flush=True,
                )

    # Per round, the best plain loop is the baseline; the ratios are medians over rounds (paired).
    base = [max(runs[r]["images_per_s"] for runs in plain.values()) for r in range(args.repeats)]
    base_steady = [max(runs[r]["steady_images_per_s"] for runs in plain.values()) for r in range(args.repeats)]
    result: dict = {
        "n": args.n,
        "kind": args.kind,
        "detect": args.detect,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "plain": {
            name: {
                "median_images_per_s": _median([r["images_per_s"] for r in runs]),
                "median_steady_images_per_s": _median([r["steady_images_per_s"] for r in runs]),
                "median_cpu_ms_per_image": _median([r["cpu_ms_per_image"] for r in runs]),
                "runs": runs,
            }
            for name, runs in plain.items()
        },
        "ray": {},
    }
    for name, runs in ray.items():
        result["ray"][name] = {
            "actors": runs[0]["actors"],
            "median_images_per_s": _median([r["images_per_s"] for r in runs]),
            "median_steady_images_per_s": _median([r["steady_images_per_s"] for r in runs]),
            "median_startup_s": _median([r["startup_s"] for r in runs]),
            "ratio": _median([r["images_per_s"] / b for r, b in zip(runs, base)]),
            "steady_ratio": _median([r["steady_images_per_s"] / b for r, b in zip(runs, base_steady)]),
            "runs": runs,
        }
    result["load_1m_median"] = _median([r["load_1m"] for runs in plain.values() for r in runs])
    for name, r in result["plain"].items():
        print(
            f"plain loop, {name}: {r['median_images_per_s']:.1f} images/s end to end, {r['median_steady_images_per_s']:.1f} steady, "
            f"{r['median_cpu_ms_per_image']:.2f} ms CPU per image (medians)"
        )
    for name, r in result["ray"].items():
        print(
            f"ray {name}: {r['median_images_per_s']:.1f} images/s end to end, ratio {r['ratio']:.2f}; "
            f"{r['median_steady_images_per_s']:.1f} steady, ratio {r['steady_ratio']:.2f}; "
            f"first results after {r['median_startup_s']:.1f} s ({r['actors']})"
        )
    print(
        f"(ratios: Ray / the best plain loop of the same round, median over {args.repeats} rounds; "
        f"load average {result['load_1m_median']} on {os.cpu_count()} CPUs)"
    )
    return save(result, args.out)


if __name__ == "__main__":
    main()
