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
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from emokp_ray.artifacts.checkpoint import CheckpointMeta, LoadedCheckpoint, save_checkpoint, unwrap_model
from emokp_ray.data.pipeline import TrainAugment
from emokp_ray.labels import emotion_scheme
from emokp_ray.models.resnet import build_model, model_config
from emokp_ray.training.batches import TORCH, augmented_batches, stream_seed
from emokp_ray.training.config import TrainConfig
from emokp_ray.training.facts import RunInfo
from emokp_ray.training.metrics import EmotionMetricAccumulator, KeypointMetricAccumulator, json_safe

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


def masked_mse(pred: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean squared error over the PRESENT coordinates only (NaN targets are skipped).

    pred, target: [B, 30] pixels. Errors are divided by `scale` (half the input size) so the loss
    is in normalized units (~1 = half a face): a 4-keypoint row trains just those 4 points.
    """
    present = ~torch.isnan(target)
    diff = torch.where(
        present, (pred.float() - torch.nan_to_num(target)) / scale, torch.zeros_like(pred, dtype=torch.float32)
    )
    return diff.pow(2).sum() / present.sum().clamp(min=1)


def make_loss(cfg: TrainConfig, class_weights: np.ndarray | None):
    """The task's loss: masked MSE for keypoints; (weighted, smoothed) cross-entropy for emotion."""
    if cfg.task == "keypoints":
        scale = cfg.resolved_input_size / 2.0
        return lambda out, batch: masked_mse(out, batch["keypoints"], scale)
    weight = None
    if cfg.imbalance == "weights" and class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=torch.float32)

    def loss(out: torch.Tensor, batch: Batch) -> torch.Tensor:
        w = weight.to(out.device) if weight is not None else None
        ce = F.cross_entropy(
            out.float(), batch["label"], weight=w, label_smoothing=cfg.label_smoothing, reduction="none"
        )
        if "mix_lam" in batch:  # mixup / cutmix (data/regularize.py): the partner's label takes 1 - lam
            lam = batch["mix_lam"]
            ce_mix = F.cross_entropy(
                out.float(), batch["label_mix"], weight=w, label_smoothing=cfg.label_smoothing, reduction="none"
            )
            ce = lam * ce + (1.0 - lam) * ce_mix
        # weighted mean as F.cross_entropy's "mean" reduction: sum of w[y] * loss / sum of w[y]
        norm = w[batch["label"]].sum() if w is not None else torch.tensor(float(len(ce)), device=ce.device)
        return ce.sum() / norm.clamp(min=1e-12)

    return loss


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
) -> dict[str, float]:
    """One pass of optimizer steps (each followed by the EMA update, if any).
    Returns {"loss": mean loss, "images": n, "seconds": t, "steps": k}."""
    model.train()
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
    """Run the model over batches; returns (metric accumulator, summed loss, n)."""
    model.eval()
    acc = KeypointMetricAccumulator() if task == "keypoints" else EmotionMetricAccumulator(num_classes)
    loss_sum, n = 0.0, 0
    for batch, out in forward_batches(model, batches, device, amp, channels_last):
        out = out.float()
        loss_sum += float(loss_fn(out, batch)) * out.shape[0]
        n += out.shape[0]
        if task == "keypoints":
            acc.update(out.cpu().numpy(), batch["keypoints"].cpu().numpy())
        else:
            acc.update(out.argmax(dim=1).cpu().numpy(), batch["label"].cpu().numpy())
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
    if cfg.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=total,
            pct_start=cfg.warmup_fraction,
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


def fit(cfg: TrainConfig, session: Session, run: RunInfo) -> dict[str, Any]:
    """Train `cfg.epochs` epochs (or until early stopping) and report each one with a checkpoint.

    run: what the driver read from the data set (run.data: steps per epoch, class weights, mean
    shape, label scheme) and the run's id. Every rank calls session.report once per epoch (Ray's
    report is a barrier); metrics are all-reduced first, so all ranks agree on early stopping.
    """
    torch.manual_seed(cfg.seed)  # model init: the same weights on every rank (DDP broadcasts rank 0's anyway)
    device = session.device
    use_amp = bool(cfg.amp) if cfg.amp is not None else device.type == "cuda"
    channels_last = cfg.channels_last is not False  # None: a config saved when the default followed the GPU
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels

    facts = run.data
    scheme = emotion_scheme(facts.scheme)
    num_classes = scheme.num_classes
    overrides = {"input_size": cfg.resolved_input_size}
    if cfg.task == "emotion":
        overrides["num_outputs"] = num_classes
    model_cfg = model_config(cfg.task, cfg.model, **overrides)
    model: torch.nn.Module = build_model(model_cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit it

    steps_per_epoch = facts.steps_per_epoch
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    optimizer, scheduler = build_optimizer(cfg, model, steps_per_epoch)
    scaler = torch.amp.GradScaler(
        "cuda", enabled=use_amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    )

    # Resume: the latest checkpoint (Ray's after a worker failure, or --resume's).
    start_epoch, history, best, stale = 0, [], None, 0
    restored = session.restore()
    if restored is not None:
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
        start_epoch = int(saved.get("epoch", 0))
        history = list(saved.get("history", []))
        best = saved.get("best")
        stale = int(saved.get("stale", 0))

    model = session.prepare_model(model)
    ema = None
    if cfg.ema_decay:
        ema = WeightEMA(
            model, cfg.ema_decay, updates=int((restored.extra_state or {}).get("ema_updates", 0)) if restored else 0
        )
        if restored is not None and restored.train_model_state is not None:
            ema.model.load_state_dict(restored.model.state_dict())
    eval_model = ema.model if ema is not None else model
    loss_fn = make_loss(cfg, None if facts.class_weights is None else np.asarray(facts.class_weights, np.float32))
    metric_name, order = cfg.metric
    mean_shape = None if facts.mean_shape is None else np.asarray(facts.mean_shape, np.float64)

    train_augment = TrainAugment(
        cfg.task,
        augment=cfg.augment,
        sampling_weights=facts.sampling_weights,
        random_erasing=cfg.random_erasing,
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha,
    )

    for epoch in range(start_epoch, cfg.epochs):
        # dropout draws from (seed, epoch, rank): ranks differ, and a resumed epoch repeats the original
        torch.manual_seed(stream_seed(cfg.seed, TORCH, epoch, session.rank))
        stats = train_one_epoch(
            model,
            augmented_batches(session.train_batches(epoch), train_augment, cfg.seed, epoch, session.rank),
            optimizer,
            scheduler,
            loss_fn,
            device,
            amp=use_amp,
            scaler=scaler,
            channels_last=channels_last,
            max_steps=cfg.max_steps_per_epoch,
            ema=ema,
        )
        acc, val_loss_sum, val_n = evaluate(
            eval_model,
            session.val_batches(),
            cfg.task,
            num_classes,
            loss_fn,
            device,
            amp=use_amp,
            channels_last=channels_last,
        )
        # Reduce across ranks: the accumulators' sums plus the loss and image counts.
        train_sums = session.all_reduce(
            np.array([stats["loss"] * stats["images"], stats["images"], stats["seconds"]], np.float64)
        )
        state = session.all_reduce(np.concatenate([acc.state(), [val_loss_sum, val_n]]))
        acc = type(acc).from_state(state[:-2], **({} if cfg.task == "keypoints" else {"num_classes": num_classes}))
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train/loss": train_sums[0] / max(train_sums[1], 1),
            # all ranks step in parallel: images over the slowest-summed time / world size
            "train/images_per_s": train_sums[1] / max(train_sums[2] / session.world_size, 1e-9),
            "train/images": int(train_sums[1]),
            "val/loss": state[-2] / max(state[-1], 1),
            "val/n": int(state[-1]),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if cfg.task == "keypoints":
            result = acc.compute(mean_shape=mean_shape)
            row["val/rmse_px"] = result["rmse_px"]
            row["val/mean_shape_rmse_px"] = result.get("mean_shape_rmse_px")
            row["val/per_keypoint_rmse_px"] = result["per_keypoint_rmse_px"]
        else:
            result = acc.compute(list(scheme.classes))
            row["val/accuracy"] = result["accuracy"]
            row["val/macro_f1"] = result["macro_f1"]
            row["val/per_class_recall"] = {name: v["recall"] for name, v in result["per_class"].items()}
            row.update({f"val/recall/{name}": v["recall"] for name, v in result["per_class"].items()})
            row.update({f"val/precision/{name}": v["precision"] for name, v in result["per_class"].items()})
            row["val/confusion"] = result["confusion"]
        value = row[metric_name]
        value = float("nan") if value is None else float(value)
        if is_better(value, best, order):
            best, stale = value, 0
        else:
            stale += 1
        row["best/" + metric_name.split("/", 1)[1]] = best
        history.append(row)
        stop = bool(cfg.early_stopping) and stale >= cfg.early_stopping

        checkpoint_dir = None
        tmp = None
        if session.rank == 0:
            tmp = tempfile.TemporaryDirectory(prefix="emokp-ckpt-")
            checkpoint_dir = tmp.name
            meta = CheckpointMeta(
                model_config=model_cfg,
                label_scheme=scheme.name if cfg.task == "emotion" else None,
                # the run's config plus the data facts that evaluation needs (the mean-shape baseline)
                train_config={
                    **cfg.to_dict(),
                    "data_facts": {
                        "mean_shape": None if mean_shape is None else mean_shape.tolist(),
                        "n_train": facts.n_train,
                    },
                },
                epoch=epoch + 1,
                metrics=json_safe({k: v for k, v in row.items() if not isinstance(v, (dict, list))}),
                run_id=run.run_id,
            )
            save_checkpoint(
                checkpoint_dir,
                eval_model,
                meta,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                train_model=model if ema is not None else None,
                extra_state=json_safe(
                    {
                        "epoch": epoch + 1,
                        "history": history,
                        "best": best,
                        "stale": stale,
                        "ema_updates": ema.updates if ema is not None else 0,
                    }
                ),
            )
        session.report(_scalar_metrics(row), checkpoint_dir)
        if tmp is not None:
            tmp.cleanup()
        if stop:
            break
    return {"history": history, "best": best}


def _scalar_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """Ray's report keeps scalars tidy; nested per-keypoint/per-class values go in the checkpoint."""
    return {k: (float("nan") if v is None else v) for k, v in row.items() if not isinstance(v, (dict, list))}


def format_epoch_line(row: dict[str, Any], task: str, epochs: int) -> str:
    """The one console line per epoch."""
    head = f"epoch {row['epoch']:>3}/{epochs}  loss {row['train/loss']:.4f}  val_loss {row['val/loss']:.4f}"
    if task == "keypoints":
        base = row.get("val/mean_shape_rmse_px")
        base_txt = f" (mean shape {base:.2f})" if base is not None else ""
        body = f"  val rmse {row['val/rmse_px']:.3f} px{base_txt}"
    else:
        body = f"  val acc {row['val/accuracy']:.4f}  macro-F1 {row['val/macro_f1']:.4f}"
    return f"{head}{body}  {row['train/images_per_s']:.0f} img/s  lr {row['lr']:.2e}"
