"""Ray Job entrypoint: `emokp evaluate` of one checkpoint, with URIs for its checkpoint, data and report.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/evaluate.py --checkpoint s3://bucket/runs/r1/emotion/best \\
            --data /mnt/emokp/data/fer --split test --out s3://bucket/reports/r1-emotion-test

Evaluation runs in the driver process on the head node (no Ray tasks), so every path may be a URI:
--checkpoint and --data are downloaded first, --out is written locally and uploaded (job_common.py).
Every other flag is `emokp evaluate`'s (--split, --scheme, --batch-size, --limit-rows).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from job_common import JOB_PROG, JobParser, run_job, staged_input, staged_output

from emokp_ray import cli


def build_parser() -> JobParser:
    parser = JobParser(
        prog="jobs/evaluate.py",
        description="Evaluate a checkpoint; paths may be URIs.",
        epilog="Any other flag is passed to `emokp evaluate` unchanged (see `emokp evaluate --help`).",
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="CKPT", help="checkpoint folder, RUN_DIR or exported file"
    )
    parser.add_argument("--data", required=True, metavar="DATA", help="prepared data set folder or Kaggle CSV")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder")
    return parser


def evaluate(argv: Sequence[str] | None = None) -> int:
    args, evaluate_flags = build_parser().parse_known_args(argv)
    with staged_input(args.checkpoint) as checkpoint, staged_input(args.data) as data, staged_output(args.out) as out:
        command = ["evaluate", "--checkpoint", checkpoint, "--data", data, "--out", out, *evaluate_flags]
        print(f"{JOB_PROG}: emokp {' '.join(command)}", flush=True)
        return cli.main(command)


if __name__ == "__main__":
    sys.exit(run_job(evaluate))
