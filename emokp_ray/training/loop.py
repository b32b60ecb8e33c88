"""The per-worker training loop in plain PyTorch: losses, one epoch of steps, evaluation, `fit`.

Nothing here imports Ray. `fit(cfg, session)` runs the same code in three places: inside a Ray
Train worker (`RaySession`, ray_trainer.py), in one process without Ray (`LocalSession`,
local.py: `emokp train --no-ray`, GPU boxes without Ray), and in unit tests with a tiny model.
The session owns what differs: where the (decoded, not yet augmented) batches come from, the
device, DDP, how metrics and checkpoints are reported, and where a resumed run's state comes from.
The loop owns every random draw: the training augmentation and torch's generator, both derived from
(seed, epoch, rank[, batch]) as training/batches.py describes, so a run repeats exactly on CPU.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from emokp_ray.artifacts.checkpoint import CheckpointMeta, LoadedCheckpoint, save_checkpoint, unwrap_model
from emokp_ray.data.pipeline import TrainAugment
from emokp_ray.labels import EmotionScheme, emotion_scheme
from emokp_ray.models.registry import NetworkConfig, build_model, model_config
from emokp_ray.tasks import task_spec
from emokp_ray.training.batches import TORCH, augmented_batches, stream_seed
from emokp_ray.training.config import TrainConfig
from emokp_ray.training.facts import DatasetFacts, RunInfo
from emokp_ray.training.init import InitPlan, freeze_stem, init_plan, load_init_weights
from emokp_ray.training.losses import Loss
from emokp_ray.training.metrics import json_safe
from emokp_ray.training.task_training import accumulate, task_training

Batch = dict[str, torch.Tensor]


class Session(Protocol):
    """What the loop needs from its surroundings (Ray Train worker or plain process)."""

    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def train_batches(self, epoch: int) -> Iterable[dict[str, np.ndarray]]: ...  # decoded, in a seeded order
    def val_batches(self) -> Iterable[dict[str, np.ndarray]]: ...
    def all_reduce(self, values: np.ndarray) -> np.ndarray: ...
    def restore(self) -> LoadedCheckpoint | None: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...


# ----------------------------------------------------------------------------- losses


def make_loss(cfg: TrainConfig, class_weights: np.ndarray | None) -> Loss:
    """The task's loss (tasks.py: masked MSE for keypoints; weighted, smoothed cross-entropy for emotion)."""
    return task_training(cfg.task).loss(cfg, class_weights)


# ----------------------------------------------------------------------------- weight EMA


class WeightEMA:
    """Exponential moving average of a model's weights, updated after every optimizer step.

    ema = d * ema + (1 - d) * weights for parameters and float buffers (BN running statistics), with
    the usual warm-up d = min(decay, (1 + k) / (10 + k)) after k updates, so early averages do not
    drag the random initialization along. The average is a separate module (same device and memory
    format) that validation and checkpoints use; the optimizer keeps stepping the raw weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0):
        self.decay = float(decay)
        self.updates = int(updates)
        self.model = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        src = unwrap_model(model)
        ema_params: list[torch.Tensor] = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in src.parameters()], 1.0 - d)
        for ema_b, b in zip(self.model.buffers(), src.buffers()):
            if ema_b.is_floating_point():
                ema_b.lerp_(b, 1.0 - d)
            else:
                ema_b.copy_(b)


# ----------------------------------------------------------------------------- steps


def autocast_context(device: torch.device, amp: bool):
    """bf16 autocast on GPUs that support it, else fp16; nothing on CPU or when AMP is off."""
    if not amp or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def to_device(batch: dict, device: torch.device, channels_last: bool) -> Batch:
    """numpy or torch batch -> tensors on `device`; images become float [B, 1, S, S] in 0..255."""
    out: Batch = {}
    for key, value in batch.items():
        tensor = torch.as_tensor(value)
        out[key] = tensor.to(device, non_blocking=True)
    image = out["image"]
    if image.dim() == 3:
        image = image.unsqueeze(1)
    image = image.float()
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    out["image"] = image
    for key in ("label", "label_mix"):
        if key in out:
            out[key] = out[key].long()
    if "mix_lam" in out:
        out["mix_lam"] = out["mix_lam"].float()
    if "keypoints" in out:
        out["keypoints"] = out["keypoints"].float()
    return out


def forward_batches(
    model: torch.nn.Module, batches: Iterable[dict], device: torch.device, amp: bool, channels_last: bool
) -> Iterator[tuple[Batch, torch.Tensor]]:
    """(device batch, model output) for every non-empty batch, under autocast where AMP is on."""
    for raw in batches:
        batch = to_device(raw, device, channels_last)
        if batch["image"].shape[0] == 0:
            continue
        with autocast_context(device, amp):
            out = model(batch["image"])
        yield batch, out


def train_one_epoch(
    model: torch.nn.Module,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn,
    device: torch.device,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    max_steps: int = 0,
    ema: WeightEMA | None = None,
    frozen_bn: bool = False,
) -> dict[str, float]:
    """One pass of optimizer steps (each followed by the EMA update, if any); frozen_bn: BatchNorm
    layers normalize with their running statistics and leave them as they are (fine-tuning).
    Returns {"loss": mean loss, "images": n, "seconds": t, "steps": k}."""
    model.train()
    if frozen_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    total_loss, images, steps = 0.0, 0, 0
    start = time.perf_counter()
    for batch, out in forward_batches(model, batches, device, amp, channels_last):
        loss = loss_fn(out, batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update(model)
        # OneCycleLR raises past its last step; a resumed or longer-than-planned epoch stays at the end.
        if (
            scheduler is not None
            and scheduler.last_epoch < getattr(scheduler, "total_steps", getattr(scheduler, "T_max", math.inf)) - 1
        ):
            scheduler.step()
        total_loss += float(loss.detach()) * batch["image"].shape[0]
        images += batch["image"].shape[0]
        steps += 1
        if max_steps and steps >= max_steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"loss": total_loss / max(images, 1), "images": images, "seconds": seconds, "steps": steps}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[dict],
    task: str,
    num_classes: int,
    loss_fn,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
):
    """Run the model over batches; returns (metric accumulator, summed loss, n). The metrics come
    from the one evaluation loop `emokp evaluate` uses too (training/task_training.py `accumulate`)."""
    model.eval()
    spec = task_spec(task)
    loss_sum = 0.0

    def outputs() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        nonlocal loss_sum
        for batch, out in forward_batches(model, batches, device, amp, channels_last):
            out = out.float()
            loss_sum += float(loss_fn(out, batch)) * out.shape[0]
            # only the targets leave the device: the images stay where they are
            yield {spec.target: batch[spec.target].cpu().numpy()}, out.cpu().numpy()

    acc, n = accumulate(spec, outputs(), num_classes)
    return acc, loss_sum, n


# ----------------------------------------------------------------------------- fit


def _fused_supported(params: list[torch.nn.Parameter]) -> bool:
    """Fused Adam needs floating-point parameters on CPU or CUDA (torch >= 2.4)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, steps_per_epoch: int):
    """Adam/AdamW and the learning-rate schedule (stepped once per optimizer step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one multi-threaded kernel per parameter instead of a chain of single-threaded ops. On CPU
    # the per-tensor Adam took a quarter of each course keypoint step (py-spy); fused, the step runs
    # 1.35x faster (benchmarks/optimizer_layout.py). Same update rule, rounding aside.
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fused_supported(params))
    total = max(1, cfg.epochs * steps_per_epoch)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    if cfg.schedule == "onecycle" and total >= 2:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=total,
            # OneCycleLR divides by pct_start * total - 1 (and by the steps after it): a short run (a
            # few fine-tuning steps) gets more than one warm-up step and at least one after it
            pct_start=min(0.75, max(cfg.warmup_fraction, 1.5 / total)),
            div_factor=25.0,
            final_div_factor=1e3,
        )
    elif cfg.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg.lr * 1e-3)
    else:
        scheduler = None
    return optimizer, scheduler


def is_better(value: float, best: float | None, order: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if order == "min" else value > best


@dataclass(frozen=True)
class _Task:
    """What the run trains, fixed for the whole run: the config, the driver's data facts and run id,
    the model's architecture, the emotion scheme and the mean keypoint shape (the val baseline)."""

    cfg: TrainConfig
    run: RunInfo
    model_cfg: NetworkConfig
    scheme: EmotionScheme
    mean_shape: np.ndarray | None  # [30] pixels, the training split's mean keypoints (keypoint runs)
    init: InitPlan | None = None  # --init: the checkpoint the weights start from


def _describe(cfg: TrainConfig, run: RunInfo) -> _Task:
    facts = run.data
    scheme = emotion_scheme(facts.scheme)
    overrides = {"input_size": cfg.resolved_input_size, **task_spec(cfg.task).model_overrides(scheme.num_classes)}
    mean_shape = None if facts.mean_shape is None else np.asarray(facts.mean_shape, np.float64)
    if cfg.init:  # the checkpoint's network (its normalization too), the data set's outputs
        plan = init_plan(cfg.task, cfg.model, cfg.init, scheme.classes)
        return _Task(cfg, run, plan.model_config, scheme, mean_shape, plan)
    return _Task(cfg, run, model_config(cfg.task, cfg.model, **overrides), scheme, mean_shape)


def _precision_and_layout(cfg: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(AMP on, channels-last memory format); on a GPU, cuDNN picks its kernels by benchmark."""
    use_amp = bool(cfg.amp) if cfg.amp is not None else device.type == "cuda"
    channels_last = cfg.channels_last is not False  # None: a config saved when the default followed the GPU
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    return use_amp, channels_last


def _new_model(task: _Task, channels_last: bool) -> torch.nn.Module:
    model: torch.nn.Module = build_model(task.model_cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit it
    return model


def _steps_per_epoch(cfg: TrainConfig, facts: DatasetFacts) -> int:
    return min(facts.steps_per_epoch, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else facts.steps_per_epoch


@dataclass
class _Progress:
    """Where the run stands: saved with every checkpoint (train_state.json), read back on resume."""

    epoch: int = 0  # epochs done
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per epoch
    best: float | None = None  # the best value of cfg.metric so far
    stale: int = 0  # epochs since it improved

    def add(self, row: dict[str, Any], metric: tuple[str, str], early_stopping: int) -> bool:
        """Record an epoch's row (adding its best/... entry); whether early stopping ends the run."""
        metric_name, order = metric
        value = row[metric_name]
        value = float("nan") if value is None else float(value)
        if is_better(value, self.best, order):
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        row["best/" + metric_name.split("/", 1)[1]] = self.best
        self.history.append(row)
        self.epoch = row["epoch"]
        return bool(early_stopping) and self.stale >= early_stopping

    def state(self, ema: WeightEMA | None) -> dict[str, Any]:
        """The checkpoint's train_state.json."""
        return json_safe(
            {
                "epoch": self.epoch,
                "history": self.history,
                "best": self.best,
                "stale": self.stale,
                "ema_updates": ema.updates if ema is not None else 0,
            }
        )


def _restore(
    restored: LoadedCheckpoint | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler,
) -> _Progress:
    """A resumed run's weights and optimizer, LR schedule and AMP scaler states loaded into the new
    ones, and where it stood; a new run starts at epoch 0."""
    if restored is None:
        return _Progress()
    # an EMA run's model.pt is the average; the raw weights it was stepping are in train_model.pt
    raw = restored.train_model_state if restored.train_model_state is not None else restored.model.state_dict()
    model.load_state_dict(raw)
    if restored.optimizer_state is not None:
        optimizer.load_state_dict(restored.optimizer_state)
    if restored.scheduler_state is not None and scheduler is not None:
        scheduler.load_state_dict(restored.scheduler_state)
    if restored.scaler_state is not None:
        scaler.load_state_dict(restored.scaler_state)
    saved = restored.extra_state or {}
    return _Progress(
        epoch=int(saved.get("epoch", 0)),
        history=list(saved.get("history", [])),
        best=saved.get("best"),
        stale=int(saved.get("stale", 0)),
    )


def _weight_ema(cfg: TrainConfig, model: torch.nn.Module, restored: LoadedCheckpoint | None) -> WeightEMA | None:
    """The weight average (cfg.ema_decay), continued from a resumed run's model.pt; None without EMA."""
    if not cfg.ema_decay:
        return None
    ema = WeightEMA(
        model, cfg.ema_decay, updates=int((restored.extra_state or {}).get("ema_updates", 0)) if restored else 0
    )
    if restored is not None and restored.train_model_state is not None:
        ema.model.load_state_dict(restored.model.state_dict())
    return ema


@dataclass(frozen=True)
class _Steps:
    """What the optimizer steps and validation use; `model` as the session prepared it (DDP)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    ema: WeightEMA | None
    loss_fn: Any
    device: torch.device
    amp: bool
    channels_last: bool

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weight average where there is one: what validation and checkpoints use."""
        return self.ema.model if self.ema is not None else self.model


def _train_augment(cfg: TrainConfig, facts: DatasetFacts) -> TrainAugment:
    return TrainAugment(
        cfg.task,
        augment=cfg.augment,
        sampling_weights=facts.sampling_weights,
        random_erasing=cfg.random_erasing,
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha,
    )


def _train_and_validate(
    task: _Task, session: Session, steps: _Steps, augment: TrainAugment, epoch: int
) -> tuple[dict[str, float], tuple[Any, float, int]]:
    """One epoch on this rank: the optimizer steps over the augmented training batches, then
    validation. Returns train_one_epoch's stats and evaluate's (accumulator, loss sum, n)."""
    cfg = task.cfg
    # dropout draws from (seed, epoch, rank): ranks differ, and a resumed epoch repeats the original
    torch.manual_seed(stream_seed(cfg.seed, TORCH, epoch, session.rank))
    stats = train_one_epoch(
        steps.model,
        augmented_batches(session.train_batches(epoch), augment, cfg.seed, epoch, session.rank),
        steps.optimizer,
        steps.scheduler,
        steps.loss_fn,
        steps.device,
        amp=steps.amp,
        scaler=steps.scaler,
        channels_last=steps.channels_last,
        max_steps=cfg.max_steps_per_epoch,
        ema=steps.ema,
        frozen_bn=cfg.freeze_bn,
    )
    val = evaluate(
        steps.eval_model,
        session.val_batches(),
        cfg.task,
        task.scheme.num_classes,
        steps.loss_fn,
        steps.device,
        amp=steps.amp,
        channels_last=steps.channels_last,
    )
    return stats, val


# The fields of a metrics.jsonl row that measure wall-clock time, so differ between otherwise
# identical runs (what a reproducibility check leaves out).
WALL_CLOCK_METRICS = ("train/images_per_s",)


def _epoch_row(
    task: _Task, session: Session, epoch: int, stats: dict[str, float], val: tuple[Any, float, int], lr: float
) -> dict[str, Any]:
    """The epoch's metrics row, the same on every rank: the train and validation sums are reduced
    across ranks first."""
    acc, val_loss_sum, val_n = val
    train_sums = session.all_reduce(
        np.array([stats["loss"] * stats["images"], stats["images"], stats["seconds"]], np.float64)
    )
    state = session.all_reduce(np.concatenate([acc.state(), [val_loss_sum, val_n]]))
    num_classes = task.scheme.num_classes
    spec = task_spec(task.cfg.task)
    acc = task_training(spec.name).accumulator_from_state(state[:-2], num_classes)
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "train/loss": train_sums[0] / max(train_sums[1], 1),
        # all ranks step in parallel: images over the slowest-summed time / world size
        "train/images_per_s": train_sums[1] / max(train_sums[2] / session.world_size, 1e-9),
        "train/images": int(train_sums[1]),
        "val/loss": state[-2] / max(state[-1], 1),
        "val/n": int(state[-1]),
        "lr": lr,
    }
    row.update(task_training(spec.name).val_metrics(acc, task.mean_shape, list(task.scheme.classes)))
    return row


def _checkpoint_meta(task: _Task, row: dict[str, Any]) -> CheckpointMeta:
    cfg, mean_shape = task.cfg, task.mean_shape
    return CheckpointMeta(
        model_config=task.model_cfg,
        label_scheme=task_spec(cfg.task).label_scheme(task.scheme.name),
        # the run's config plus the data facts that evaluation needs (the mean-shape baseline)
        train_config={
            **cfg.to_dict(),
            **({"init_from": task.init.record()} if task.init is not None else {}),
            "data_facts": {
                "mean_shape": None if mean_shape is None else mean_shape.tolist(),
                "n_train": task.run.data.n_train,
            },
        },
        epoch=row["epoch"],
        metrics=json_safe({k: v for k, v in row.items() if not isinstance(v, (dict, list))}),
        run_id=task.run.run_id,
    )


def _report_epoch(task: _Task, session: Session, steps: _Steps, progress: _Progress, row: dict[str, Any]) -> None:
    """Every rank reports the epoch (Ray's report is a barrier); rank 0 with its checkpoint, written
    to a temporary folder the session copies from."""
    if session.rank != 0:
        session.report(_scalar_metrics(row), None)
        return
    with tempfile.TemporaryDirectory(prefix="emokp-ckpt-") as checkpoint_dir:
        save_checkpoint(
            checkpoint_dir,
            steps.eval_model,
            _checkpoint_meta(task, row),
            optimizer=steps.optimizer,
            scheduler=steps.scheduler,
            scaler=steps.scaler,
            train_model=steps.model if steps.ema is not None else None,
            extra_state=progress.state(steps.ema),
        )
        session.report(_scalar_metrics(row), checkpoint_dir)


def fit(cfg: TrainConfig, session: Session, run: RunInfo) -> dict[str, Any]:
    """Train `cfg.epochs` epochs (or until early stopping) and report each one with a checkpoint.

    run: what the driver read from the data set (run.data: steps per epoch, class weights, mean
    shape, label scheme) and the run's id. Every rank calls session.report once per epoch (Ray's
    report is a barrier); metrics are all-reduced first, so all ranks agree on early stopping.
    """
    torch.manual_seed(cfg.seed)  # model init: the same weights on every rank (DDP broadcasts rank 0's anyway)
    task = _describe(cfg, run)
    use_amp, channels_last = _precision_and_layout(cfg, session.device)
    model = _new_model(task, channels_last)
    if cfg.freeze_stem:  # before the optimizer is built: it steps only what requires a gradient
        freeze_stem(model)
    optimizer, scheduler = build_optimizer(cfg, model, _steps_per_epoch(cfg, run.data))
    scaler = torch.amp.GradScaler(
        "cuda", enabled=use_amp and session.device.type == "cuda" and not torch.cuda.is_bf16_supported()
    )
    restored = session.restore()  # the latest checkpoint (Ray's after a worker failure, or --resume's)
    if restored is None and task.init is not None:  # a new fine-tuning run (a resumed one has its own weights)
        load_init_weights(model, task.init, task.scheme.classes)
    progress = _restore(restored, model, optimizer, scheduler, scaler)
    model = session.prepare_model(model)
    class_weights = None if run.data.class_weights is None else np.asarray(run.data.class_weights, np.float32)
    steps = _Steps(
        model,
        optimizer,
        scheduler,
        scaler,
        ema=_weight_ema(cfg, model, restored),
        loss_fn=make_loss(cfg, class_weights),
        device=session.device,
        amp=use_amp,
        channels_last=channels_last,
    )
    augment = _train_augment(cfg, run.data)

    for epoch in range(progress.epoch, cfg.epochs):
        stats, val = _train_and_validate(task, session, steps, augment, epoch)
        row = _epoch_row(task, session, epoch, stats, val, lr=optimizer.param_groups[0]["lr"])
        stop = progress.add(row, cfg.metric, cfg.early_stopping)
        _report_epoch(task, session, steps, progress, row)
        if stop:
            break
    return {"history": progress.history, "best": progress.best}


def _scalar_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """Ray's report keeps scalars tidy; nested per-keypoint/per-class values go in the checkpoint."""
    return {k: (float("nan") if v is None else v) for k, v in row.items() if not isinstance(v, (dict, list))}


def format_epoch_line(row: dict[str, Any], task: str, epochs: int) -> str:
    """The one console line per epoch."""
    head = f"epoch {row['epoch']:>3}/{epochs}  loss {row['train/loss']:.4f}  val_loss {row['val/loss']:.4f}"
    body = task_spec(task).epoch_summary(row)
    return f"{head}{body}  {row['train/images_per_s']:.0f} img/s  lr {row['lr']:.2e}"
