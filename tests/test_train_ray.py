"""Ray Train fed by Ray Data: a 2-worker run, a worker killed mid-run (FailureConfig restart), and a
run repeated with the same seed."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from emokp_ray.artifacts.checkpoint import load_checkpoint
from emokp_ray.errors import UserError
from emokp_ray.training import ray_trainer
from emokp_ray.training.config import TrainConfig
from emokp_ray.training.train import run_training
from tests.helpers import metrics_without_wall_clock, write_random_dataset

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def random_data(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("data") / "random", n_train=64, n_val=32)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_workers_train_from_ray_data_and_leave_best(ray_cluster, random_data, tmp_path):
    out = tmp_path / "run"
    # the data set as a URI: Ray Data and the driver read it through pyarrow filesystems
    cfg = TrainConfig(
        task="emotion",
        data=f"file://{random_data}",
        out=str(out),
        epochs=2,
        batch_size=16,
        workers=2,
        cpus_per_worker=0.5,
        use_gpu=False,
    )
    sigint_before = signal.getsignal(signal.SIGINT)
    outcome = run_training(cfg, log=lambda *_: None)
    assert signal.getsignal(signal.SIGINT) is sigint_before  # Ray Train's own handler is not left behind
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    # 64 train rows split over 2 workers, 8 per worker batch, drop_last: 4 steps x 16 images per epoch
    assert rows[0]["train/images"] == 64
    # validation metrics are reduced across both workers: every val row counted once
    assert rows[0]["val/n"] == 32
    best = load_checkpoint(outcome.best_checkpoint)
    assert best.meta.task == "emotion" and best.meta.epoch in (1, 2)
    assert (out / "ray").is_dir()


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_last_checkpoint(ray_cluster, random_data, tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"

    def dying_train_loop(config):
        """The production loop, with a session that kills its worker process (SIGKILL: a real process
        death, not an exception) once, at the start of epoch 3. Defined here, so Ray ships it by value."""
        import os
        import signal

        from emokp_ray.training.config import TrainConfig
        from emokp_ray.training.loop import fit
        from emokp_ray.training.ray_trainer import RaySession

        class DyingSession(RaySession):
            def train_batches(self, epoch):
                if epoch == 2 and self.rank == 0 and not marker.exists():
                    marker.write_text("failed once\n")
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().train_batches(epoch)

        cfg = TrainConfig.from_dict(config["cfg"])
        fit(cfg, DyingSession(cfg, config["run"]), config["run"])

    monkeypatch.setattr(ray_trainer, "train_loop_per_worker", dying_train_loop)  # what build_trainer hands Ray
    out = tmp_path / "run"
    cfg = TrainConfig(
        task="keypoints",
        data=str(random_data),
        out=str(out),
        epochs=3,
        batch_size=16,
        workers=1,
        cpus_per_worker=1,
        use_gpu=False,
        max_failures=1,
        max_steps_per_epoch=2,
    )
    run_training(cfg, log=lambda *_: None)
    assert marker.exists()  # the worker process really died at the start of epoch 3
    rows = _rows(out)
    # finished from the epoch-2 checkpoint: epochs 1..3 each exactly once in the history
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert load_checkpoint(out / "best").meta.task == "keypoints"


@pytest.mark.slow
def test_same_seed_and_workers_give_the_same_metrics(ray_cluster, random_data, tmp_path):
    """Ray Data ingest, the seeded shuffles, the workers' augmentation (with erasing) and dropout:
    two runs agree on every metric but the wall-clock ones (that another seed changes them is
    test_training's no-Ray test: the loop and its random streams are the same code)."""

    def metrics(name, seed):
        out = tmp_path / name
        cfg = TrainConfig(
            task="keypoints",
            data=str(random_data),
            out=str(out),
            epochs=2,
            batch_size=16,
            workers=1,
            cpus_per_worker=1,
            use_gpu=False,
            seed=seed,
            model="small",  # still has dropout; a fraction of the course net's CPU time
            random_erasing=0.5,
            max_steps_per_epoch=2,
        )
        run_training(cfg, log=lambda *_: None)
        return metrics_without_wall_clock(out)

    first = metrics("a", seed=5)
    assert [r["epoch"] for r in first] == [1, 2]
    assert metrics("b", seed=5) == first


def test_worker_torch_threads_follow_the_reservation_or_share_the_node():
    from emokp_ray.training.ray_trainer import torch_threads

    assert torch_threads(0.0, local_workers=1, node_cores=2) == 2  # default: the whole 2-core machine
    assert torch_threads(0.0, local_workers=2, node_cores=8) == 4  # two workers share a node
    assert torch_threads(0.0, local_workers=4, node_cores=2) == 1  # never below one thread
    assert torch_threads(3.0, local_workers=1, node_cores=16) == 3  # an explicit reservation wins
    assert torch_threads(0.5, local_workers=2, node_cores=2) == 1
    with pytest.raises(UserError, match="--cpus-per-worker must be >= 0"):
        TrainConfig(task="keypoints", data="d", out="o", cpus_per_worker=-1)
