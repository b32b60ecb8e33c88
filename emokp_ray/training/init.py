"""Fine-tuning: a run that starts from a trained checkpoint's weights (`emokp train ... --init CKPT`).

The run keeps the checkpoint's network, input size and normalization (its `model_config`); only the
number of emotion outputs follows the data set. Every weight is copied but the classifier's last
dense layer where the class set differs (then it keeps its fresh, seeded initialization); the same
classes in another order are permuted into the data set's order. `resolve_init` runs when the config
is built (a checkpoint of another task or network is one `UserError` before any work), `init_plan`
and `load_init_weights` inside every training process (plain functions, no Ray).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emokp_ray.artifacts.checkpoint import CheckpointMeta, load_checkpoint, read_meta, unwrap_model
from emokp_ray.builtin import is_builtin
from emokp_ray.errors import UserError
from emokp_ray.models.registry import MODELS, NetworkConfig
from emokp_ray.models.registry import model_config as named_config
from emokp_ray.storage import is_uri
from emokp_ray.tasks import task_spec

# ModelConfig fields that may differ between the init's network and a run's: the emotion outputs
# follow the data set, and the normalization is the checkpoint's whatever the variant's default.
_FREE_FIELDS = ("num_outputs", "norm_mean", "norm_std")


def _location(init: str) -> str:
    """An absolute path (Ray Train workers run in another directory), or a builtin name / URI as given."""
    return init if is_builtin(init) or is_uri(init) else str(Path(init).resolve())


def _read(init: str) -> CheckpointMeta:
    try:
        return read_meta(init)
    except UserError as err:
        raise UserError(f"--init: {err}") from None


def _comparable(cfg: NetworkConfig) -> tuple[type, dict[str, Any]]:
    return type(cfg), {k: v for k, v in cfg.to_dict().items() if k not in _FREE_FIELDS}


def network_of(meta: CheckpointMeta) -> str | None:
    """The `--model` name (models/registry.py MODELS) whose network the checkpoint holds (at its
    input size), or None."""
    cfg = meta.model_config
    for name, entry in MODELS.items():
        if meta.task not in entry.tasks:
            continue
        try:
            candidate = named_config(meta.task, name, input_size=cfg.input_size, num_outputs=cfg.num_outputs)
        except (UserError, TypeError, ValueError):  # the model cannot be built at that input size
            continue
        if _comparable(candidate) == _comparable(cfg):
            return name
    return None


def resolve_init(task: str, init: str, model: str | None, input_size: int | None) -> dict[str, Any]:
    """The config values an `--init` checkpoint fixes: {init (absolute), model, input_size}.

    model / input_size: the flags the user gave (None = not given); one that contradicts the
    checkpoint is a `UserError`, as is a checkpoint of the other task or of a network `emokp train`
    does not build.
    """
    meta = _read(init)
    if meta.task != task:
        raise UserError(
            f"--init {init} is a checkpoint of the {meta.task} task; `emokp train {task}` needs one of the {task} task"
        )
    variant = network_of(meta)
    if variant is None:
        raise UserError(
            f"--init {init} holds a {task} network that matches none of the networks `emokp train` builds "
            f"({', '.join(name for name, entry in MODELS.items() if task in entry.tasks)})"
        )
    if model is not None and model != variant:
        raise UserError(
            f"--init {init} holds a {variant} network; --model {model} is another network "
            f"(fine-tuning keeps the checkpoint's network: leave --model out)"
        )
    if input_size and input_size != meta.input_size:
        raise UserError(
            f"--init {init} was trained on {meta.input_size}x{meta.input_size} inputs; --input-size {input_size} "
            f"differs (fine-tuning keeps the checkpoint's input size: leave --input-size out)"
        )
    return {"init": _location(init), "model": variant, "input_size": meta.input_size}


@dataclass(frozen=True)
class InitPlan:
    """What a run takes from its --init checkpoint; `record()` goes into every checkpoint it writes."""

    checkpoint: str  # as given in the config (absolute path, builtin:NAME or URI)
    model_config: NetworkConfig  # the run's network: the checkpoint's, with the data set's outputs
    head: str  # "kept" | "reordered" | "new" (emotion: the class set differs)
    init_classes: tuple[str, ...]  # the checkpoint's emotion classes (empty for keypoints)
    init_run_id: str | None
    init_epoch: int | None

    def record(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "run_id": self.init_run_id,
            "epoch": self.init_epoch,
            "head": self.head,
            "classes": list(self.init_classes),
        }


def init_plan(task: str, model: str, init: str, class_names: tuple[str, ...]) -> InitPlan:
    """Check the checkpoint against the run (task, network) and decide what happens to its head."""
    meta = _read(init)
    if meta.task != task:
        raise UserError(f"--init {init} is a checkpoint of the {meta.task} task, not of the {task} task")
    variant = network_of(meta)
    if variant != model:
        raise UserError(f"--init {init} holds a {variant or 'unknown'} network; this run builds {model}")
    spec = task_spec(task)
    cfg: Any = meta.model_config  # a registered network's config: a frozen dataclass
    cfg = dataclasses.replace(cfg, **spec.model_overrides(len(class_names)))  # the data set's outputs
    classes = () if spec.coordinates else tuple(meta.class_names)
    head = "kept"
    if classes and classes != tuple(class_names):
        head = "reordered" if sorted(classes) == sorted(class_names) else "new"
    return InitPlan(init, cfg, head, classes, meta.run_id, meta.epoch)


def _last_dense(model: nn.Module) -> str:
    """The state_dict prefix of the head's last dense layer ("head.N")."""
    head = getattr(unwrap_model(model), "head", None)
    if not (isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear)):
        raise UserError(f"--init: a {type(unwrap_model(model)).__name__} has no dense head to keep or replace")
    return f"head.{len(head) - 1}"


@torch.no_grad()
def load_init_weights(model: nn.Module, plan: InitPlan, class_names: tuple[str, ...]) -> None:
    """Copy the checkpoint's weights into `model` (built from plan.model_config), as the plan says."""
    source = load_checkpoint(plan.checkpoint, training_state=False).model.state_dict()
    target = unwrap_model(model)
    state = dict(source)
    last = _last_dense(target)
    if plan.head == "new":
        for key in (f"{last}.weight", f"{last}.bias"):
            state[key] = target.state_dict()[key]
    elif plan.head == "reordered":
        order = [plan.init_classes.index(name) for name in class_names]
        for key in (f"{last}.weight", f"{last}.bias"):
            state[key] = source[key][order]
    target.load_state_dict(state, strict=True)


def freeze_stem(model: nn.Module) -> None:
    """Stop the optimizer from changing the stem's weights (its BN statistics still track the data)."""
    stem = getattr(unwrap_model(model), "stem", None)
    if not isinstance(stem, nn.Module):
        raise UserError(f"--freeze-stem: a {type(unwrap_model(model)).__name__} has no stem")
    for param in stem.parameters():
        param.requires_grad_(False)
