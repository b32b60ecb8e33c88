"""The `emokp train` driver: read the data set's facts, run the loop (Ray Train or one process),
then leave RUN_DIR/best, RUN_DIR/metrics.jsonl and RUN_DIR/config.json behind.

    RUN_DIR/config.json          the resolved TrainConfig
    RUN_DIR/metrics.jsonl        one JSON object per epoch (train/loss, train/images_per_s, val/...)
    RUN_DIR/best/                the best checkpoint by the validation metric (a CKPT for later commands)
    RUN_DIR/ray/<run>/...        Ray Train's checkpoints (or RUN_DIR/checkpoints/ with --no-ray)
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from emokp_ray.artifacts.checkpoint import read_meta
from emokp_ray.errors import UserError
from emokp_ray.storage import atomic_dir
from emokp_ray.training.config import TrainConfig
from emokp_ray.training.facts import RunInfo, read_dataset_facts
from emokp_ray.training.loop import fit, format_epoch_line


@dataclass
class TrainOutcome:
    run_dir: Path
    best_checkpoint: Path
    history: list[dict[str, Any]]
    best_metric: float | None
    seconds: float


def find_latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the highest epoch anywhere under RUN_DIR (Ray's or --no-ray's)."""
    best: tuple[int, float, Path] | None = None
    for state_file in run_dir.rglob("train_state.json"):
        try:
            epoch = int(json.loads(state_file.read_text()).get("epoch", 0))
        except (OSError, ValueError):
            continue
        key = (epoch, state_file.stat().st_mtime, state_file.parent)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else best[2]


def _prepare_run_dir(cfg: TrainConfig) -> tuple[Path, str | None]:
    run_dir = Path(cfg.out).resolve()
    resume_from = None
    if cfg.resume:
        latest = find_latest_checkpoint(run_dir) if run_dir.exists() else None
        if latest is None:
            raise UserError(f"--resume: no checkpoint under {run_dir} to continue from")
        resume_from = str(latest)
    elif (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} already holds a training run; pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, resume_from


def _history(checkpoint_dir: Path) -> list[dict[str, Any]]:
    """Every epoch's metrics so far, as the checkpoint's train_state.json keeps them."""
    state = checkpoint_dir / "train_state.json"
    return json.loads(state.read_text()).get("history", []) if state.is_file() else []


def _install_best(src: Path, run_dir: Path) -> Path:
    """Copy a checkpoint to RUN_DIR/best whole or not at all (storage.atomic_dir: a reader
    sees the old best or the new one, never a half-copied one)."""
    dest = run_dir / "best"
    with atomic_dir(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return dest


class _EpochLines:
    """Print one console line per epoch while Ray trains, from the metrics.jsonl that rank 0
    appends to (workers' own output stays in Ray's log files)."""

    def __init__(self, path: Path, cfg: TrainConfig, log, interval_s: float = 0.5):
        self.path, self.cfg, self.log, self.interval_s = path, cfg, log, interval_s
        self.printed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emokp-epoch-lines", daemon=True)

    def _poll(self) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return
        for line in lines[self.printed :]:
            try:
                row = json.loads(line)
            except ValueError:
                return  # a line still being written: next poll
            self.log(format_epoch_line(row, self.cfg.task, self.cfg.epochs))
            self.printed += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll()

    def __enter__(self) -> _EpochLines:
        try:
            self.printed = len(self.path.read_text().splitlines())  # a resumed run's old epochs
        except OSError:
            self.printed = 0
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()


def run_training(cfg: TrainConfig, log=print) -> TrainOutcome:
    """Train one model as `cfg` says; returns where the best checkpoint and metrics are."""
    start = time.perf_counter()
    run_dir, resume_from = _prepare_run_dir(cfg)
    use_gpu = cfg.use_gpu
    if cfg.no_ray:
        import torch

        use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
        if use_gpu and not torch.cuda.is_available():
            raise UserError("--gpu: no CUDA device is visible to torch")
        cfg = replace(cfg, workers=1)
    else:
        from emokp_ray.ray_utils import init_ray

        init_ray()
        from emokp_ray.training.ray_trainer import cluster_has_gpus

        use_gpu = cluster_has_gpus() if use_gpu is None else use_gpu
    run = RunInfo(
        data=read_dataset_facts(cfg),
        use_gpu=bool(use_gpu),
        run_id=f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}",
        metrics_path=str(run_dir / "metrics.jsonl"),
        resume_from=resume_from,
    )
    (run_dir / "config.json").write_text(cfg.to_json() + "\n")
    log(f"config: {json.dumps(cfg.to_dict(), sort_keys=True)}")
    log(
        f"data: {run.data.n_train} training rows, {run.data.steps_per_epoch} steps/epoch, "
        f"{'GPU' if use_gpu else 'CPU'}, {cfg.workers} worker(s){', resuming from ' + resume_from if resume_from else ''}"
    )
    if not resume_from:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    if cfg.no_ray:
        from emokp_ray.training.local import LocalSession

        session = LocalSession(cfg, run, run_dir, log=log)
        fit(cfg, session, run)
        name, order = cfg.metric
        if not session.saved:
            raise UserError("training ran no epoch (the run had already reached --epochs; raise --epochs to continue)")
        best = _install_best(min(session.saved, key=lambda t: np.nan_to_num(t[0], nan=np.inf))[1], run_dir)
        history = _history(max((p for _, p in session.saved), key=lambda p: p.name))
    else:
        from emokp_ray.ray_utils import sigint_handler_kept
        from emokp_ray.training.ray_trainer import build_trainer

        storage = cfg.storage or str(run_dir / "ray")
        trainer = build_trainer(cfg, run, storage)
        with _EpochLines(run_dir / "metrics.jsonl", cfg, log), sigint_handler_kept():
            result = trainer.fit()
        if result.error is not None:
            raise result.error
        name, order = cfg.metric
        candidates = [(ckpt, m) for ckpt, m in (result.best_checkpoints or []) if m.get(name) is not None]
        if not candidates:
            raise UserError("training ran no epoch (the run had already reached --epochs; raise --epochs to continue)")
        sign = 1.0 if order == "min" else -1.0
        best_ckpt = min(candidates, key=lambda cm: np.nan_to_num(sign * float(cm[1][name]), nan=np.inf))[0]
        # as_directory: a local path as it is, or a download when --storage is s3://, gs://, ...
        with best_ckpt.as_directory() as path:
            best = _install_best(Path(path), run_dir)
        with (result.checkpoint or best_ckpt).as_directory() as path:
            history = _history(Path(path))

    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in history))
    best_meta = read_meta(best)
    metric_value = best_meta.metrics.get(cfg.metric[0])
    seconds = time.perf_counter() - start
    log(
        f"best {cfg.metric[0]} = {metric_value:.4f} at epoch {best_meta.epoch}; checkpoint: {best}; "
        f"metrics: {run_dir / 'metrics.jsonl'}; {seconds:.0f} s"
    )
    return TrainOutcome(run_dir, best, history, metric_value, seconds)
