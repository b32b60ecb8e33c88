"""Ray Train edge: `RaySession` (the loop's view of a Train worker) and the `TorchTrainer` builder.

The loop itself is `loop.fit`; this file adds only what Ray provides: dataset shards fed by Ray
Data, the device and DDP from `ray.train.torch`, all-reduce over the worker group, checkpoints
reported with `ray.train.report` (kept best-K by the validation metric), restarts from the last
checkpoint after a worker dies (`FailureConfig`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

from emokp_ray.artifacts.checkpoint import LoadedCheckpoint, load_checkpoint
from emokp_ray.data.pipeline import BatchPreprocessor
from emokp_ray.data.ray_data import build_dataset, train_shuffle_buffer
from emokp_ray.training.batches import SHUFFLE, stream_seed
from emokp_ray.training.config import TrainConfig
from emokp_ray.training.facts import RunInfo
from emokp_ray.training.loop import fit


def torch_threads(cpus_per_worker: float, local_workers: int, node_cores: int) -> int:
    """A CPU worker's torch threads: the CPUs it reserved, or with --cpus-per-worker 0 (the default)
    its share of the node's cores. Ray's OMP_NUM_THREADS default is the reservation, which at the
    1-CPU default would leave a 2-core machine's second core idle (0.6x the speed)."""
    if cpus_per_worker > 0:
        return max(1, int(cpus_per_worker))
    return max(1, node_cores // max(1, local_workers))


class RaySession:
    def __init__(self, cfg: TrainConfig, run: RunInfo):
        ctx = ray.train.get_context()
        self.cfg = cfg
        self.run = run
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.per_worker_batch = max(1, cfg.batch_size // self.world_size)
        if self.device.type == "cpu":
            torch.set_num_threads(torch_threads(cfg.cpus_per_worker, ctx.get_local_world_size(), os.cpu_count() or 1))

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def train_batches(self, epoch: int) -> Iterable[dict]:
        # numpy batches: the loop augments them (training/batches.py) before they become tensors
        shard = ray.train.get_dataset_shard("train")
        return shard.iter_batches(
            batch_size=self.per_worker_batch,
            batch_format="numpy",
            local_shuffle_buffer_size=train_shuffle_buffer(self.per_worker_batch),
            local_shuffle_seed=stream_seed(self.cfg.seed, SHUFFLE, epoch, self.rank),
            drop_last=True,
        )

    def val_batches(self) -> Iterable[dict]:
        return ray.train.get_dataset_shard("val").iter_batches(batch_size=self.per_worker_batch, batch_format="numpy")

    def all_reduce(self, values: np.ndarray) -> np.ndarray:
        if self.world_size == 1 or not dist.is_initialized():
            return values
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.as_tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()

    def restore(self) -> LoadedCheckpoint | None:
        checkpoint = ray.train.get_checkpoint()  # set after a worker-group restart
        if checkpoint is not None:
            with checkpoint.as_directory() as path:
                return load_checkpoint(path)
        return load_checkpoint(self.run.resume_from) if self.run.resume_from else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if self.rank == 0:
            if self.run.metrics_path:  # the driver tails this for its console lines, and rewrites it at the end
                try:
                    with open(self.run.metrics_path, "a") as fh:
                        fh.write(json.dumps(metrics, sort_keys=True) + "\n")
                except OSError:
                    pass  # another node's path: the driver's final copy is authoritative
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of each Train worker: rebuild the typed config and run the plain loop."""
    cfg = TrainConfig.from_dict(config["cfg"])
    fit(cfg, RaySession(cfg, config["run"]), config["run"])


def build_trainer(cfg: TrainConfig, run: RunInfo, storage_path: str) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer reading the prepared data set through Ray Data.

    Ingest keeps the blocks' order (preserve_order): with the seeded block order and the workers'
    seeded shuffle buffers, the same seed and worker count feed every rank the same rows each run.
    """
    preprocess = BatchPreprocessor(cfg.task, cfg.resolved_input_size, cfg.drop_incomplete)
    datasets: dict[str, ray.data.Dataset | Callable[[], ray.data.Dataset]] = {
        "train": build_dataset(cfg.data, "train", preprocess, shuffle_seed=cfg.seed, limit_rows=cfg.limit_rows),
        "val": build_dataset(cfg.data, "val", preprocess, limit_rows=cfg.limit_rows),
    }
    # Train's default ingest options are the driver's Ray Data options; a copy of them, not
    # DataConfig.default_ingest_options(), which passes the deprecated exclude_resources on and
    # so prints Ray's deprecation warning at every run (Ray 2.60).
    ingest = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    ingest.preserve_order = True
    use_gpu = run.use_gpu
    metric, order = cfg.metric
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run": run},
        scaling_config=ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker or 1.0, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run.run_id,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute=metric,
                checkpoint_score_order=order,
            ),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train", "val"], execution_options=ingest),
    )


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
