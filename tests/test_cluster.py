"""A real two-node Ray cluster on this machine, driven the way a user drives one: `ray start` twice,
then Ray Jobs (`jobs/train.py`, `jobs/label.py`) submitted over HTTP with jobs/runtime_env.yaml.

The cluster is emokp_ray.local_cluster.TwoNodeCluster: each node its own raylet with its own custom
resource (node_a, node_b) on loopback, in a private temporary folder, on free ports, with its own
auth token (RAY_AUTH_MODE=token). Not the shared in-process `ray_cluster` fixture: that one is a
single node. The cluster is stopped whatever happens by killing exactly the processes it started.

Placement: 3 logical CPUs per node and 2 CPUs per Train worker, so the two workers cannot share a
node, and each node keeps one CPU for Ray Data's read and preprocessing tasks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from emokp_ray.artifacts.checkpoint import load_checkpoint
from emokp_ray.local_cluster import TwoNodeCluster
from tests.helpers import write_random_dataset, write_tiny_checkpoints

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds its processes in /proc"),
]

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
CPUS_PER_NODE = 3
CPUS_PER_TRAIN_WORKER = 2  # > CPUS_PER_NODE / 2: one Train worker per node
JOB_TIMEOUT_S = 300


@pytest.fixture
def cluster():
    two = TwoNodeCluster(cpus_per_node=CPUS_PER_NODE)
    started = time.monotonic()
    try:
        two.start()
        print(f"cluster of 2 nodes up in {time.monotonic() - started:.0f} s")
        yield two
    finally:
        started = time.monotonic()
        two.stop()
        print(f"cluster stopped in {time.monotonic() - started:.0f} s")
    assert not two.our_processes(), "processes of the test cluster outlived it"


def _runtime_env() -> dict:
    """jobs/runtime_env.yaml as `ray job submit --working-dir . --runtime-env ...` sends it."""
    env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    return {**env, "working_dir": str(REPO)}


def _run_job(client, entrypoint: str) -> tuple[str, str]:
    """Submit, wait until the job ends (stopping it after JOB_TIMEOUT_S); returns (status, logs)."""
    started = time.monotonic()
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=_runtime_env())
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(1.0)
        status = client.get_job_status(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    logs = client.get_job_logs(job_id)
    print(f"job {entrypoint.split()[1]}: {status.value} in {time.monotonic() - started:.0f} s")
    return status.value, logs


def _train_worker_nodes(cluster: TwoNodeCluster) -> list[str]:
    """Custom resource (node_a / node_b) of the node each Ray Train worker actor ran on."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    state = StateApiClient(cluster.dashboard, headers=cluster.headers)
    nodes = state.list(StateResource.NODES, options=ListApiOptions(detail=True), raise_on_missing_output=False)
    name_of = {n.node_id: next(k for k in n.resources_total if k.startswith("node_")) for n in nodes}
    assert sorted(name_of.values()) == ["node_a", "node_b"]
    actors = state.list(
        StateResource.ACTORS,
        options=ListApiOptions(detail=True, filters=[("class_name", "=", "RayTrainWorker")]),
        raise_on_missing_output=False,
    )
    return sorted(name_of[a.node_id] for a in actors)


def test_jobs_train_on_two_nodes_then_label(cluster, tmp_path):
    from ray.job_submission import JobSubmissionClient

    data = write_random_dataset(tmp_path / "data", n_train=64, n_val=32, size=48)
    run = tmp_path / "run"
    client = JobSubmissionClient(cluster.dashboard, headers=cluster.headers)
    python = sys.executable  # the entrypoint runs through the head node's shell (RAY_NOTES)

    # 2 workers x 8 images (global batch 16), 2 steps, then the evaluation of RUN_DIR/best on val.
    status, logs = _run_job(
        client,
        f"{python} jobs/train.py emotion --data {data} --out {run} --workers 2 "
        f"--cpus-per-worker {CPUS_PER_TRAIN_WORKER} --no-gpu --epochs 1 --batch-size 16 "
        f"--max-steps-per-epoch 2 --evaluate val",
    )
    assert status == "SUCCEEDED", logs[-4000:]
    assert _train_worker_nodes(cluster) == ["node_a", "node_b"]

    best = load_checkpoint(run / "best")
    assert best.meta.task == "emotion" and best.meta.epoch == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert rows[0]["train/images"] == 2 * 16  # 2 steps of the global batch, both workers counted
    assert rows[0]["val/n"] == 32  # every val row once, reduced across the 2 workers
    report = json.loads((run / "eval-val" / "report.json").read_text())
    assert report["task"] == "emotion" and report["n"] == 32

    # The labeling job goes through the documented command itself: `ray job submit` from the checkout.
    keypoints, _ = write_tiny_checkpoints(tmp_path / "tiny")
    labels = tmp_path / "labels"
    submit = subprocess.run(
        [
            str(RAY),
            "job",
            "submit",
            "--address",
            cluster.dashboard,
            "--working-dir",
            ".",
            "--runtime-env",
            "jobs/runtime_env.yaml",
            "--",
            python,
            "jobs/label.py",
            str(data),
            "--keypoints",
            str(keypoints),
            "--emotion",
            str(run / "best"),
            "--out",
            labels.as_uri(),
            "--concurrency",
            "2",
            "--cpus-per-actor",
            "1",
            "--no-gpu",
            "--batch-size",
            "16",
        ],
        cwd=REPO,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert submit.returncode == 0 and "succeeded" in submit.stdout, (submit.stdout + submit.stderr)[-4000:]
    assert "labelled 96 images" in submit.stdout  # the job's own summary line, streamed back
    table = pq.read_table(labels / "labels.parquet")
    assert table.num_rows == 96 and set(table["status"].to_pylist()) == {"ok"}
    assert set(table["emotion"].to_pylist()) <= set(best.meta.class_names)
    summary = json.loads((labels / "summary.json").read_text())
    assert summary["images"] == 96 and summary["faces"] == 96
    # the workers wrote the part files through the file:// URI (nothing staged by the driver), summary last
    assert len(list((labels / "labels.parquet").glob("part-*.parquet"))) >= 2 and summary["rows"] == 96
