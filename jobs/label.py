"""Ray Job entrypoint: `emokp label` on a Ray cluster, with the same flags (`emokp label --help`).

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/label.py s3://bucket/photos/ --keypoints /mnt/emokp/runs/r1/keypoints/best \\
            --emotion /mnt/emokp/runs/r1/emotion/best --out s3://bucket/labels/photos --concurrency 2-8 --gpu

INPUT (image folder, glob or file, videos among them, sampled at --fps; prepared data set; Kaggle
CSV; a Parquet or CSV listing of image paths, optionally with the faces' `boxes`, label_inputs.py) may be a URI: the labeling tasks read it
through pyarrow. --out and --annotate may be URIs (or paths every node sees): the Ray Data
workers write their part files and PNGs there directly, nothing goes through the driver, and
summary.json is written last. A job that was killed (driver, node, cluster) is finished by submitting
it again with --resume. Every actor loads the checkpoints itself, so --keypoints and --emotion are
paths every node sees, or builtin:NAME (job_common.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from job_common import JOB_PROG, require_path, run_job

from emokp_ray import cli


def label(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = cli.build_parser().parse_args(["label", *argv])  # emokp label's flags, checked as it checks them
    for flag, value in (("--keypoints", args.keypoints), ("--emotion", args.emotion)):
        if value is not None:
            require_path(value, flag, "every labeling actor opens it on its own node")
    print(f"{JOB_PROG}: emokp label {' '.join(argv)}", flush=True)
    args.func(args)  # what `emokp label` runs: run_label, its summary printed, --max-error-fraction checked
    return 0


if __name__ == "__main__":
    sys.exit(run_job(label))
