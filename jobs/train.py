"""Ray Job entrypoint: train the keypoint model, the emotion model, or both one after the other.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/train.py both --keypoints-data /mnt/emokp/data/keypoints \\
            --emotion-data /mnt/emokp/data/fer --out /mnt/emokp/runs/r1 --workers 4 --gpu --evaluate val

    TASK keypoints|emotion   `emokp train TASK --data DATA --out OUT [FLAGS]`
    TASK both                keypoints into OUT/keypoints, then emotion into OUT/emotion; stops at the
                             first failure. --keypoints-data / --emotion-data default to --data
    --evaluate SPLIT         then `emokp evaluate` of each run's best checkpoint on SPLIT of its data
                             set, into RUN_DIR/eval-SPLIT (report.json and figures)

Every other flag is `emokp train`'s (`emokp train --help`) and is passed on unchanged: --workers,
--gpu, --epochs, --batch-size (global: each worker gets batch-size / workers), --lr, --resume,
--cpus-per-worker, --max-steps-per-epoch, ... The driver runs on the head node and joins the
cluster through RAY_ADDRESS, which Ray Jobs sets.

Where things live (job_common.py): --data is read by Ray Data tasks on every node and by the driver
through pyarrow filesystems, so it is a path all nodes see or a URI (s3://, gs://); --out may be a URI (trained into a local
folder on the head, uploaded at the end, also after a failure, so `--resume` continues from any node);
--storage (Ray Train's checkpoints, default RUN_DIR/ray) must be a path all nodes see as soon as the
workers span several nodes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from job_common import JOB_PROG, JobParser, require_path, run_job, staged_output

from emokp_ray import cli
from emokp_ray.errors import UserError
from emokp_ray.tasks import TASKS as TASK_ORDER


def build_parser() -> JobParser:
    parser = JobParser(
        prog="jobs/train.py",
        description="Train keypoints, emotion or both on a Ray cluster.",
        epilog="Any other flag is passed to `emokp train` unchanged (see `emokp train --help`).",
    )
    parser.add_argument("task", choices=[*TASK_ORDER, "both"])
    parser.add_argument("--data", metavar="DIR", help="prepared data set, a path every node sees")
    parser.add_argument("--keypoints-data", metavar="DIR", help="data set of the keypoints run (default --data)")
    parser.add_argument("--emotion-data", metavar="DIR", help="data set of the emotion run (default --data)")
    parser.add_argument(
        "--out",
        required=True,
        metavar="RUN_DIR",
        help="run folder (path or URI); with `both`, OUT/keypoints and OUT/emotion",
    )
    parser.add_argument(
        "--storage", metavar="DIR", help="Ray Train checkpoints (default RUN_DIR/ray), a path every node sees"
    )
    parser.add_argument(
        "--evaluate",
        metavar="SPLIT",
        choices=["train", "val", "test"],
        help="evaluate each best checkpoint on this split into RUN_DIR/eval-SPLIT",
    )
    return parser


def plan_runs(
    task: str, out: str, data: str | None, keypoints_data: str | None = None, emotion_data: str | None = None
) -> list[tuple[str, str, str]]:
    """(task, data, run folder) of each training, in order."""
    runs = []
    for name in TASK_ORDER if task == "both" else (task,):
        task_data = {"keypoints": keypoints_data, "emotion": emotion_data}[name] or data
        if not task_data:
            raise UserError(f"give --data or --{name}-data: the {name} run has no data set")
        runs.append((name, task_data, f"{out.rstrip('/')}/{name}" if task == "both" else out))
    return runs


def train(argv: Sequence[str] | None = None) -> int:
    args, train_flags = build_parser().parse_known_args(argv)
    runs = plan_runs(args.task, args.out, args.data, args.keypoints_data, args.emotion_data)
    storage = []
    if args.storage:
        require_path(
            args.storage,
            "--storage",
            "RUN_DIR/best is copied out of Ray's checkpoint folder with local file functions (training/train.py)",
        )
        storage = ["--storage", args.storage]
    for task, data, out in runs:
        with staged_output(out) as run_dir:
            command = ["train", task, "--data", data, "--out", run_dir, *storage, *train_flags]
            print(f"{JOB_PROG}: emokp {' '.join(command)}", flush=True)
            code = cli.main(command)
            if code == 0 and args.evaluate:
                command = [
                    "evaluate",
                    "--checkpoint",
                    f"{run_dir}/best",
                    "--data",
                    data,
                    "--split",
                    args.evaluate,
                    "--out",
                    f"{run_dir}/eval-{args.evaluate}",
                ]
                print(f"{JOB_PROG}: emokp {' '.join(command)}", flush=True)
                code = cli.main(command)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_job(train))
