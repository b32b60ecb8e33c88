"""`LocalSession`: the training loop in one process, without Ray (`emokp train --no-ray`).

Used for debugging, for unit tests, and on GPU boxes where Ray is not installed: it needs only
torch, numpy and pyarrow. Checkpoints go to RUN_DIR/checkpoints/epoch-NNN; the best K by the
validation metric and the latest are kept.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emokp_ray.artifacts.checkpoint import LoadedCheckpoint, load_checkpoint
from emokp_ray.data.pipeline import BatchPreprocessor, local_batches, read_split_table, task_columns
from emokp_ray.training.batches import SHUFFLE, stream_seed
from emokp_ray.training.config import TrainConfig
from emokp_ray.training.facts import RunInfo
from emokp_ray.training.loop import format_epoch_line


class LocalSession:
    rank = 0
    world_size = 1

    def __init__(
        self,
        cfg: TrainConfig,
        run: RunInfo,
        run_dir: Path,
        device: torch.device | None = None,
        log=print,
    ):
        self.cfg = cfg
        self.run = run
        self.run_dir = run_dir
        if device is None:
            want_gpu = cfg.use_gpu if cfg.use_gpu is not None else torch.cuda.is_available()
            device = torch.device("cuda" if want_gpu else "cpu")
        self.device = device
        self.log = log
        columns = task_columns(cfg.task)
        self.train_table = read_split_table(cfg.data, "train", cfg.limit_rows, columns)
        self.val_table = read_split_table(cfg.data, "val", cfg.limit_rows, columns)
        self.preprocess = BatchPreprocessor(cfg.task, cfg.resolved_input_size, cfg.drop_incomplete)
        self.saved: list[tuple[float, Path]] = []
        if run.resume_from:
            self.saved = self._kept_checkpoints()

    def _kept_checkpoints(self) -> list[tuple[float, Path]]:
        """The checkpoints an interrupted run kept (RUN_DIR/checkpoints/epoch-NNN), scored like
        `report` scores them, so a resumed run's RUN_DIR/best is the best of ALL its epochs."""
        from emokp_ray.artifacts.checkpoint import read_meta
        from emokp_ray.errors import UserError

        name, order = self.cfg.metric
        kept = []
        for path in sorted((self.run_dir / "checkpoints").glob("epoch-*")):
            try:
                value = read_meta(path).metrics.get(name)
            except UserError:
                continue  # a checkpoint cut short by the interruption
            if value is not None:
                kept.append((float(value) if order == "min" else -float(value), path))
        return kept

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def train_batches(self, epoch: int) -> Iterable[dict]:
        batches = local_batches(
            self.train_table,
            self.preprocess,
            self.cfg.batch_size,
            shuffle_seed=stream_seed(self.cfg.seed, SHUFFLE, epoch),
            drop_last=True,
        )
        return prefetch(batches) if self.device.type == "cuda" else batches

    def val_batches(self) -> Iterable[dict]:
        return local_batches(self.val_table, self.preprocess, self.cfg.batch_size)

    def all_reduce(self, values: np.ndarray) -> np.ndarray:
        return values

    def restore(self) -> LoadedCheckpoint | None:
        return load_checkpoint(self.run.resume_from) if self.run.resume_from else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.log(format_epoch_line(metrics, self.cfg.task, self.cfg.epochs))
        with open(self.run_dir / "metrics.jsonl", "a") as fh:  # live; the driver rewrites it at the end
            fh.write(json.dumps(metrics, sort_keys=True) + "\n")
        if checkpoint_dir is None:
            return
        dest = self.run_dir / "checkpoints" / f"epoch-{metrics['epoch']:03d}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(checkpoint_dir, dest)
        name, order = self.cfg.metric
        score = float(metrics[name])
        self.saved.append((score if order == "min" else -score, dest))
        # keep the best K plus the latest (the latest is what --resume continues from)
        keep = {
            p for _, p in sorted(self.saved, key=lambda t: np.nan_to_num(t[0], nan=np.inf))[: self.cfg.keep_checkpoints]
        }
        keep.add(dest)
        for _, path in self.saved:
            if path not in keep and path.exists():
                shutil.rmtree(path)
        self.saved = [(s, p) for s, p in self.saved if p in keep]


def prefetch(batches: Iterable[dict], depth: int = 4) -> Iterator[dict]:
    """Prepare the next `depth` batches in a background thread while the GPU trains on this one
    (decoding is numpy and pyarrow, which release the GIL for most of their work)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                q.put(batch)
        except BaseException as err:  # surfaced in the consumer
            q.put(err)
        q.put(done)

    threading.Thread(target=produce, name="emokp-prefetch", daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
