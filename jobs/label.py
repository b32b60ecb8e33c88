"""Ray Job entrypoint: batch labeling (`emokp_ray.inference.label.run_label`) on a Ray cluster.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/label.py s3://bucket/photos/ --keypoints /mnt/emokp/runs/r1/keypoints/best \\
            --emotion /mnt/emokp/runs/r1/emotion/best --out s3://bucket/labels/photos --concurrency 2-8 --gpu

INPUT (image folder, glob or file, videos among them, sampled at --fps; prepared data set; Kaggle
CSV; a Parquet or CSV listing of image paths, optionally with the faces' `boxes`, label_inputs.py) may be a URI: the labeling tasks read it
through pyarrow. --out and --annotate may be URIs (or paths every node sees): the Ray Data
workers write their part files and PNGs there directly, nothing goes through the driver, and
summary.json is written last. A job that was killed (driver, node, cluster) is finished by submitting
it again with --resume. Every actor loads the checkpoints itself, so --keypoints and --emotion are
paths every node sees (job_common.py). Flags left out take run_label's defaults.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence

from job_common import JOB_PROG, JobParser, require_path, run_job

from emokp_ray.errors import UserError
from emokp_ray.inference.detect import DETECTORS
from emokp_ray.inference.label import MODES, STAGES, run_label

_DEFAULTS = {name: p.default for name, p in inspect.signature(run_label).parameters.items()}


def _concurrency(text: str) -> int | tuple[int, int]:
    """`N` actors, or `MIN-MAX` for an autoscaling pool."""
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-", 1))
            return (low, high)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None


def _fps(text: str) -> float | None:
    """Video frames sampled per second, or `all` (every frame); checked by run_label."""
    if text.strip().lower() == "all":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frames per second or 'all', got {text!r}") from None


def build_parser() -> JobParser:
    parser = JobParser(
        prog="jobs/label.py",
        description="Label every face of INPUT with both models in a Ray Data actor pool.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="image folder, glob or file; prepared data set; Kaggle CSV; listing with path [and boxes] (path or URI)",
    )
    parser.add_argument(
        "--keypoints",
        metavar="CKPT",
        help="keypoint checkpoint, a path every node sees, or builtin:NAME "
        "(default with neither flag: builtin:keypoints)",
    )
    parser.add_argument(
        "--emotion",
        metavar="CKPT",
        help="emotion checkpoint, a path every node sees, or builtin:NAME (default with neither flag: builtin:emotion-fer7)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (path or URI), written by the workers"
    )
    parser.add_argument(
        "--resume", action="store_true", help="finish the unfinished run in --out (label only what is missing)"
    )
    parser.add_argument(
        "--max-error-fraction",
        type=float,
        metavar="F",
        help="fail when more than this share of inputs are errors (default: only when none was labelled)",
    )
    parser.add_argument("--stages", choices=STAGES, help=f"pipeline shape (default {_DEFAULTS['stages']})")
    parser.add_argument("--jsonl", action="store_true", help="also write labels.jsonl")
    parser.add_argument(
        "--annotate", dest="annotate_dir", metavar="DIR", help="annotated PNGs (path every node sees, or URI)"
    )
    parser.add_argument("--batch-size", type=int, help=f"images per model batch (default {_DEFAULTS['batch_size']})")
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        metavar="N|MIN-MAX",
        default=None,
        help="actors, or an autoscaling range (default: one per GPU, else 1 to cluster CPUs / --num-cpus)",
    )
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument(
        "--gpu", dest="use_gpu", action="store_true", help="one GPU per actor (default: when the cluster has GPUs)"
    )
    gpu.add_argument("--no-gpu", dest="use_gpu", action="store_false", help="CPU actors even on a GPU cluster")
    parser.add_argument(
        "--detect", choices=MODES, help=f"how faces are found in image files (default {_DEFAULTS['detect']})"
    )
    parser.add_argument(
        "--detector", choices=DETECTORS, help=f"face detector for photos (default {_DEFAULTS['detector']})"
    )
    parser.add_argument(
        "--detector-threshold",
        type=float,
        metavar="F",
        help="MTCNN's final score threshold in (0, 1) (default 0.7; checked by run_label)",
    )
    parser.add_argument("--num-cpus", type=float, help=f"CPUs reserved per actor (default {_DEFAULTS['num_cpus']})")
    parser.add_argument("--threads", type=int, help="torch threads per actor (default: one per reserved CPU)")
    parser.add_argument(
        "--fps", type=_fps, metavar="F|all", help=f"video frames sampled per second (default {_DEFAULTS['fps']:g})"
    )
    parser.add_argument(
        "--frames-per-range",
        type=int,
        help=f"sampled frames per video range, the unit labelled in parallel (default {_DEFAULTS['frames_per_range']})",
    )
    return parser


def label(argv: Sequence[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    for flag, name in (("--keypoints", "keypoints"), ("--emotion", "emotion")):
        if name in options:
            require_path(options[name], flag, "every labeling actor opens it on its own node")
    source, out = options.pop("input"), options.pop("out")
    keypoints, emotion = options.pop("keypoints", None), options.pop("emotion", None)
    if keypoints is None and emotion is None:  # as `emokp label`: the release models shipped in the package
        from emokp_ray.builtin import DEFAULT_EMOTION, DEFAULT_KEYPOINTS

        keypoints, emotion = DEFAULT_KEYPOINTS, DEFAULT_EMOTION
    max_error_fraction = options.pop("max_error_fraction", None)
    print(f"{JOB_PROG}: labeling {source} into {out}", flush=True)
    summary = run_label(source, keypoints, emotion, out, **options)
    print(summary, flush=True)
    failure = summary.failure(max_error_fraction)
    if failure:
        raise UserError(failure)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(label))
