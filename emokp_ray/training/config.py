"""Typed training configuration: one frozen dataclass, documented defaults, unknown keys rejected.

The CLI builds a `TrainConfig` from its flags; the resolved config is printed, saved with the run
(RUN_DIR/config.json) and stored in every checkpoint.

`emokp train` has one flag per field (emokp_ray/cli.py): `--field-name`, of the field's type, its help
the comment after the field, continued by the comment lines right under it (a blank line, code or a
`# ---` heading ends it); so a field's comment is written for both readers. CHOICES, POSITIVE and
NON_NEGATIVE are the one statement of the allowed values: `__post_init__` checks them, the flags offer
the choices and check the signs while parsing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from emokp_ray.errors import UserError
from emokp_ray.models.registry import MODELS
from emokp_ray.tasks import TASKS, task_spec

# The values each str field takes.
CHOICES: dict[str, tuple[str, ...]] = {
    "task": TASKS,
    "model": tuple(MODELS),
    "optimizer": ("adamw", "adam"),
    "schedule": ("onecycle", "cosine", "constant"),
    "imbalance": ("weights", "sampling", "none"),
}
# Numbers that must be > 0, and those that must be >= 0 (0 means off or automatic where it is allowed).
POSITIVE = ("epochs", "batch_size", "lr", "workers", "keep_checkpoints")
NON_NEGATIVE = (
    "input_size",
    "weight_decay",
    "early_stopping",
    "seed",
    "mixup_alpha",
    "cutmix_alpha",
    "cpus_per_worker",
    "max_steps_per_epoch",
    "limit_rows",
)


@dataclass(frozen=True)
class TrainConfig:
    task: str  # "keypoints" | "emotion"
    data: str  # prepared data set directory (local path or URI)
    out: str  # RUN_DIR: best/, metrics.jsonl, config.json, checkpoints
    recipe: str = ""  # the named preset these values started from (recipes.py); "" = none

    # --- model ---
    model: str = "course"  # network: course (the course's), wide (stronger), small (CPU demos),
    # keypoints compact (course backbone, 1024-512 head), emotion fer48 (48x48 without the stem max-pool),
    # tiny (a plain ConvNet baseline); models/registry.py MODELS
    input_size: int = 0  # input size in pixels; 0: the task's default (keypoints 96, emotion 48 = FER native)

    # --- optimisation ---
    epochs: int = 10  # passes over the train split
    batch_size: int = 64  # GLOBAL batch; each of N workers gets batch_size / N
    optimizer: str = "adamw"  # adamw (decoupled weight decay) or adam
    lr: float = 1e-3  # peak learning rate (one-cycle) or the constant rate
    weight_decay: float = 1e-4  # decoupled with adamw, an L2 term of the gradient with adam
    schedule: str = "onecycle"  # learning rate per step: one-cycle warm-up and anneal, cosine decay or constant
    warmup_fraction: float = 0.2  # one-cycle: share of steps spent warming up, in (0, 1)
    early_stopping: int = 0  # patience in epochs on the validation metric; 0 = off
    seed: int = 0  # seed of every random stream (init, shuffles, augmentation, dropout)

    # --- task specific ---
    drop_incomplete: bool = False  # keypoints: keep only rows with all 15 points (the course did)
    imbalance: str = "weights"  # emotion: weights (class-weighted loss), sampling (class-balanced) or none
    label_smoothing: float = 0.0  # emotion: label smoothing of the cross-entropy, in [0, 1)
    augment: bool = True  # label-true augmentation of the train split; validation is never augmented
    random_erasing: float = 0.0  # probability per training image of erasing a random rectangle (noise-filled)
    mixup_alpha: float = 0.0  # emotion: Beta(a, a) mixup of image pairs and their labels; 0 = off
    cutmix_alpha: float = 0.0  # emotion: Beta(a, a) cutmix (a pasted rectangle); with mixup, each batch picks one
    ema_decay: float = 0.0  # exponential moving average of the weights per step; validation and
    # checkpoints use the average (0 = off; 0.999 ~ the last 1,000 steps)

    # --- fine-tuning ---
    init: str = ""  # start from this checkpoint's weights (CKPT or builtin:NAME) instead of random ones:
    # its network, input size and normalization; a new classifier head where the class set differs
    freeze_stem: bool = False  # with --init: keep the stem's weights (first conv and its BN) as the init left them
    freeze_bn: bool = False  # with --init: keep the init's BatchNorm statistics (BN layers run in eval mode):
    # batches of a few people would otherwise pull them away from the faces the init saw

    # --- execution ---
    workers: int = 1  # Ray Train workers (one per GPU)
    use_gpu: bool | None = None  # train on GPUs; None: when the cluster has them
    cpus_per_worker: float = 0.0  # CPUs Ray reserves per worker (= its torch threads); 0: reserve 1,
    # and torch uses this node's cores / the workers on it
    amp: bool | None = None  # mixed precision; None: on with a GPU (bf16 where supported, else fp16)
    channels_last: bool = True  # NHWC: 1.25-1.6x faster CPU steps too (benchmarks/optimizer_layout.py)
    keep_checkpoints: int = 2  # keep the best K checkpoints by the validation metric
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    storage: str = ""  # Ray storage_path (checkpoints), a path every node sees or a URI; "" = RUN_DIR/ray
    resume: bool = False  # continue the run in RUN_DIR from its latest checkpoint
    no_ray: bool = False  # one process without Ray (debugging, GPU boxes without Ray)
    max_steps_per_epoch: int = 0  # 0 = whole epoch; >0 caps steps (smoke runs, demos)
    limit_rows: int = 0  # 0 = all rows; >0 reads only the first N rows of each split

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{_flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in POSITIVE:
            if not getattr(self, name) > 0:
                raise UserError(f"{_flag(name)} must be positive, got {getattr(self, name)}")
        for name in NON_NEGATIVE:
            if not getattr(self, name) >= 0:
                raise UserError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < self.workers:
            raise UserError(f"--batch-size {self.batch_size} is smaller than --workers {self.workers}")
        if not 0.0 < self.warmup_fraction < 1.0:
            raise UserError(f"--warmup-fraction must be in (0, 1), got {self.warmup_fraction}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise UserError(f"--random-erasing must be a probability in [0, 1], got {self.random_erasing}")
        if (self.mixup_alpha or self.cutmix_alpha) and not task_spec(self.task).mixable:
            mixable = ", ".join(t for t in TASKS if task_spec(t).mixable)
            raise UserError(
                f"--mixup-alpha / --cutmix-alpha apply to {mixable} only ({self.task} targets cannot be mixed)"
            )
        if self.task not in MODELS[self.model].tasks:
            raise UserError(
                f"--model {self.model} is defined for {', '.join(MODELS[self.model].tasks)}, not {self.task}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        for name in ("freeze_stem", "freeze_bn"):
            if getattr(self, name) and not self.init:
                raise UserError(f"{_flag(name)} keeps what an --init checkpoint learned; give --init CKPT as well")

    @property
    def resolved_input_size(self) -> int:
        if self.input_size:
            return self.input_size
        return task_spec(self.task).default_input_size

    @property
    def metric(self) -> tuple[str, str]:
        """The validation metric that picks the best checkpoint, and its order."""
        return task_spec(self.task).metric

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"unknown training config key(s): {', '.join(unknown)}")
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _flag(name: str) -> str:
    """The `emokp train` flag of a field, for error messages."""
    return f"--{name.replace('_', '-')}"
