"""Self-describing checkpoints: weights plus everything needed to rebuild and use the model.

A checkpoint is a DIRECTORY:

    meta.json          format_version, task, network, model_config, label_scheme + class_names (emotion),
                       keypoint_names (keypoints), input_size, in_chans, normalization,
                       train_config, epoch, metrics, run_id, created (UTC ISO), torch_version
    model.pt           the model's state_dict (plain tensors, torch.save); with weight EMA, the average
    train_model.pt     optional, for resume of a weight-EMA run: the raw weights the optimizer steps
    optimizer.pt       optional, for resume: optimizer / LR scheduler / AMP scaler state_dicts
    scheduler.pt
    scaler.pt
    train_state.json   optional, for resume: the caller's JSON state (epoch, best metric, seeds...)

or one exported FILE (`save_checkpoint_file`): torch.save({"format_version": 1, "meta_json": str,
"state_dict": {...}}), for shipping a model without its training state.

One loader (`load_checkpoint`) serves resume, evaluation, batch inference and serving. It reads
torch files ONLY with `torch.load(..., weights_only=True)`, which refuses to unpickle anything but
tensors and plain containers, so a checkpoint can never run code. Every problem with a checkpoint is
a one-line `UserError` that names the path and what is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emokp_ray.errors import UserError
from emokp_ray.labels import DEFAULT_SCHEME, KEYPOINT_NAMES, canonical_emotion_names, emotion_scheme
from emokp_ray.models.registry import DEFAULT_NETWORK, NetworkConfig, build_model, config_from_dict, network_of
from emokp_ray.storage import atomic_dir, write_file
from emokp_ray.tasks import TASKS, task_spec

FORMAT_VERSION = 1
META_FILE = "meta.json"
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
TRAIN_STATE_FILE = "train_state.json"
TRAIN_MODEL_FILE = "train_model.pt"  # with weight EMA: the raw training weights (model.pt holds the average)
BEST_DIR = "best"  # `emokp train` leaves RUN_DIR/best; a run dir is accepted wherever a checkpoint is


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself. Names default from the task: keypoints get
    KEYPOINT_NAMES (Kaggle order); emotion gets the classes of `label_scheme` (default seed5)."""

    model_config: NetworkConfig  # a registered network's config (models/registry.py)
    label_scheme: str | None = None  # emotion: scheme name, e.g. "seed5"
    class_names: tuple[str, ...] = ()  # emotion: logit order
    keypoint_names: tuple[str, ...] = ()  # keypoints: output order (x, y per name)
    train_config: Mapping[str, Any] = field(default_factory=dict)  # the caller's JSON config
    epoch: int | None = None  # epochs completed
    metrics: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"val/rmse_px": 2.1}
    run_id: str | None = None
    calibration: Mapping[str, Any] = field(default_factory=dict)  # emotion: {"temperature": T, "fitted_on": ...}
    created: str = field(default_factory=_utc_now)
    torch_version: str = str(torch.__version__)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        cfg = self.model_config
        # a checkpoint written with FER's words ("angry", "happy") answers with the one name set
        object.__setattr__(self, "class_names", canonical_emotion_names(tuple(self.class_names)))
        object.__setattr__(self, "keypoint_names", tuple(self.keypoint_names))
        if not task_spec(cfg.task).coordinates:  # class outputs, named by a label scheme
            scheme = DEFAULT_SCHEME if self.label_scheme is None else self.label_scheme
            object.__setattr__(self, "label_scheme", scheme)
            if not self.class_names:  # a known scheme supplies its names; a custom one must list them
                object.__setattr__(self, "class_names", emotion_scheme(scheme).classes)
            if len(self.class_names) != cfg.num_outputs:
                raise UserError(
                    f"checkpoint meta: {len(self.class_names)} class names for a model with {cfg.num_outputs} outputs"
                )
        else:
            if not self.keypoint_names:
                object.__setattr__(self, "keypoint_names", KEYPOINT_NAMES)
            if 2 * len(self.keypoint_names) != cfg.num_outputs:
                raise UserError(
                    f"checkpoint meta: {len(self.keypoint_names)} keypoint names for a model with {cfg.num_outputs} outputs"
                )

    @property
    def task(self) -> str:
        return self.model_config.task

    @property
    def network(self) -> str:
        """The registered network that rebuilds the model (models/registry.py)."""
        return network_of(self.model_config).name

    @property
    def input_size(self) -> int:
        return self.model_config.input_size

    @property
    def normalization(self) -> dict[str, Any]:
        cfg = self.model_config
        return {"input": "raw grey pixels 0..255", "mean": cfg.norm_mean, "std": cfg.norm_std}

    def to_dict(self) -> dict[str, Any]:
        """The meta.json object. task, input_size, in_chans and normalization are written for readers
        (and checked on load) but come from model_config."""
        return {
            "format_version": self.format_version,
            "task": self.task,
            "network": self.network,
            "model_config": self.model_config.to_dict(),
            "label_scheme": self.label_scheme,
            "class_names": list(self.class_names),
            "keypoint_names": list(self.keypoint_names),
            "input_size": self.input_size,
            "in_chans": self.model_config.in_chans,
            "normalization": self.normalization,
            "train_config": dict(self.train_config),
            "epoch": self.epoch,
            "metrics": dict(self.metrics),
            "run_id": self.run_id,
            "calibration": dict(self.calibration),
            "created": self.created,
            "torch_version": self.torch_version,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, raw: Any) -> CheckpointMeta:
        """Parse and check a meta.json object; every problem is a `UserError` (without the path)."""
        if not isinstance(raw, dict):
            raise UserError(f"meta must be a JSON object, got {type(raw).__name__}")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise UserError(f"unknown checkpoint format_version {version!r} (this version reads {FORMAT_VERSION})")
        task = raw.get("task")
        if task not in TASKS:
            raise UserError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
        derived = {"task", "network", "input_size", "in_chans", "normalization"}
        known = {f.name for f in dataclasses.fields(cls)} | derived
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"unknown meta key(s): {', '.join(unknown)}")
        if "model_config" not in raw:
            raise UserError("meta has no model_config")
        # meta written before other networks existed names none: the ResNet's
        cfg = config_from_dict(str(raw.get("network", DEFAULT_NETWORK)), raw["model_config"])
        fields = {k: v for k, v in raw.items() if k not in derived}
        fields["model_config"] = cfg
        try:
            meta = cls(**fields)
        except TypeError as err:
            raise UserError(f"invalid meta: {err}") from None
        # The derived keys must agree with the config that rebuilds the model.
        written = {k: raw[k] for k in derived if k in raw}
        expected = {k: v for k, v in meta.to_dict().items() if k in written}
        for key in sorted(written):
            if written[key] != expected[key]:
                raise UserError(f"meta {key} {written[key]!r} disagrees with model_config ({expected[key]!r})")
        return meta


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read back: the rebuilt model (weights loaded, eval mode) and its states."""

    model: nn.Module
    meta: CheckpointMeta
    path: Path  # the checkpoint directory (or exported file) read
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    extra_state: dict[str, Any] | None = None  # train_state.json
    train_model_state: dict[str, Any] | None = None  # train_model.pt (runs with weight EMA), for resume


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP / DataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def weights_version(model: nn.Module) -> str:
    """12 hex digits of the SHA-256 over the model's parameters and buffers (names, dtypes, shapes,
    bytes, sorted by name; buffers too, since a TorchScript export keeps the non-persistent ones of
    the module): the same weights give the same version, from a checkpoint or a TorchScript file.
    An ONNX export carries the version of the weights it was exported from."""
    version = getattr(model, "version", None)
    if isinstance(version, str) and version and not isinstance(model, nn.Module):
        return version  # an ONNX export's OnnxModel (artifacts/onnx.py)
    digest = hashlib.sha256()
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, tensor in sorted(tensors.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:12]


def example_input(meta: CheckpointMeta, batch: int = 2) -> torch.Tensor:
    """Seeded raw uint8 pixels [batch, C, S, S] in the model's input format: what exports trace and
    check the network on."""
    size, chans = meta.input_size, meta.model_config.in_chans
    return torch.randint(
        0, 256, (batch, chans, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def _plain_state_dict(model: nn.Module, meta: CheckpointMeta) -> dict[str, torch.Tensor]:
    model = unwrap_model(model)
    cfg = getattr(model, "cfg", None)
    if type(cfg) is type(meta.model_config) and cfg != meta.model_config:
        raise ValueError("meta.model_config differs from the config the model was built with")
    # CPU, contiguous (channels_last weights are saved in the default layout), detached.
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    meta: CheckpointMeta,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    extra_state: dict[str, Any] | None = None,
    train_model: nn.Module | None = None,
) -> Path:
    """Write a checkpoint directory atomically (storage.atomic_dir): an existing checkpoint
    there is replaced only once the new one is complete."""
    with atomic_dir(directory) as tmp:
        (tmp / META_FILE).write_text(meta.to_json() + "\n")
        torch.save(_plain_state_dict(model, meta), tmp / MODEL_FILE)
        if train_model is not None:  # weight EMA: model is the average, train_model what the optimizer steps
            torch.save(_plain_state_dict(train_model, meta), tmp / TRAIN_MODEL_FILE)
        for obj, name in ((optimizer, OPTIMIZER_FILE), (scheduler, SCHEDULER_FILE), (scaler, SCALER_FILE)):
            state = obj.state_dict() if obj is not None else None
            # A disabled GradScaler's state is {}, which an enabled one refuses to load: skip it.
            if state:
                torch.save(state, tmp / name)
        if extra_state is not None:
            (tmp / TRAIN_STATE_FILE).write_text(json.dumps(extra_state, indent=2, sort_keys=True) + "\n")
    return Path(directory)


def save_checkpoint_file(file: str | os.PathLike, model: nn.Module, meta: CheckpointMeta, fp16: bool = False) -> Path:
    """Export one self-describing .pt file (weights + meta as a JSON string; no training state).

    fp16=True stores floating-point tensors in half precision (half the bytes; the shipped release
    models): loading builds the fp32 model from the meta and copies them in, so they run as fp32.
    """
    state = _plain_state_dict(model, meta)
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {"format_version": FORMAT_VERSION, "meta_json": meta.to_json(), "state_dict": state}
    write_file(file, lambda stream: torch.save(payload, stream))
    return Path(file)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint dir, a run dir holding best/ (-> best/), an exported file, or `builtin:NAME` (a
    release model shipped in the package, emokp_ray/builtin/); else a `UserError`."""
    from emokp_ray.builtin import builtin_path, is_builtin

    if is_builtin(str(path)):
        return builtin_path(str(path))
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if path.is_file():
        return path
    if (path / META_FILE).is_file():
        return path
    if (path / BEST_DIR / META_FILE).is_file():
        return path / BEST_DIR
    raise UserError(
        f"checkpoint {path} has no {META_FILE} (and no {BEST_DIR}/{META_FILE}): not a checkpoint or run directory"
    )


def _torch_load(file: Path, map_location: Any) -> Any:
    """torch.load with weights_only=True, every failure turned into a one-line UserError."""
    with open(file, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise UserError(f"{file} is empty")
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise UserError(f"{file} is not a torch file (torch.save writes a zip archive)")
    if not zipfile.is_zipfile(file):
        raise UserError(f"{file} is truncated or corrupt (its zip directory is missing)")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:
        text = str(err)
        if "weights_only" in text or "Weights only load failed" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise UserError(
                f"{file} was refused: it holds pickled Python objects{what}, and checkpoints are "
                f"loaded with weights_only=True (tensors and plain containers only)"
            ) from None
        first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise UserError(f"{file} could not be read ({first_line[:200]})") from None


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{file} is not valid JSON ({err})") from None
    except UnicodeDecodeError:
        raise UserError(f"{file} is not valid JSON (not UTF-8 text)") from None


def _parse_meta(raw: Any, where: Path) -> CheckpointMeta:
    try:
        return CheckpointMeta.from_dict(raw)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Only the metadata of a checkpoint (dir, run dir or exported file), without building the model."""
    resolved = resolve_checkpoint_path(path)
    if resolved.is_file():
        return _parse_meta(json.loads(_exported_payload(resolved)["meta_json"]), resolved)
    return _parse_meta(_read_json(resolved / META_FILE), resolved / META_FILE)


def _exported_payload(file: Path) -> dict[str, Any]:
    payload = _torch_load(file, "cpu")
    if not isinstance(payload, dict) or not isinstance(payload.get("meta_json"), str) or "state_dict" not in payload:
        raise UserError(f"{file} is a torch file but not an exported checkpoint (no meta_json / state_dict)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{file}: unknown checkpoint format_version {payload.get('format_version')!r} (this version reads {FORMAT_VERSION})"
        )
    try:
        json.loads(payload["meta_json"])
    except json.JSONDecodeError as err:
        raise UserError(f"{file}: its meta_json is not valid JSON ({err})") from None
    return payload


def _model_from(meta: CheckpointMeta, state_dict: Any, where: Path) -> nn.Module:
    """Build the model the meta describes and load `state_dict`, naming the first mismatch."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{where} does not hold a state_dict of tensors")
    model = build_model(meta.model_config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        raise UserError(f"{where} does not match its model_config: missing key {missing[0]!r} ({len(missing)} missing)")
    if unexpected:
        raise UserError(
            f"{where} does not match its model_config: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)"
        )
    for key, tensor in expected.items():
        if state_dict[key].shape != tensor.shape:
            raise UserError(
                f"{where} does not match its model_config: {key!r} has shape {list(state_dict[key].shape)}, "
                f"the config builds {list(tensor.shape)}"
            )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", training_state: bool = True
) -> LoadedCheckpoint:
    """Rebuild the model a checkpoint describes, with its weights, in eval mode on `map_location`.

    `path`: a checkpoint directory, a run directory with best/ inside, or an exported .pt file.
    Optimizer / scheduler / scaler states and train_state.json come back when present (for resume);
    training_state=False (inference: evaluation, labeling, serving, export) never opens those files,
    so an inference replica holds only the weights (Adam's state is twice their size).
    """
    resolved = resolve_checkpoint_path(path)
    if resolved.is_file():
        payload = _exported_payload(resolved)
        meta = _parse_meta(json.loads(payload["meta_json"]), resolved)
        model = _model_from(meta, payload["state_dict"], resolved).to(map_location)
        return LoadedCheckpoint(model=model, meta=meta, path=resolved)

    meta_file = resolved / META_FILE
    meta = _parse_meta(_read_json(meta_file), meta_file)
    model_file = resolved / MODEL_FILE
    if not model_file.is_file():
        raise UserError(f"checkpoint {resolved} has no {MODEL_FILE}")
    model = _model_from(meta, _torch_load(model_file, "cpu"), model_file).to(map_location)
    if not training_state:
        return LoadedCheckpoint(model=model, meta=meta, path=resolved)

    def optional(name: str) -> Any:
        file = resolved / name
        return _torch_load(file, map_location) if file.is_file() else None

    train_state = resolved / TRAIN_STATE_FILE
    return LoadedCheckpoint(
        model=model,
        meta=meta,
        path=resolved,
        optimizer_state=optional(OPTIMIZER_FILE),
        scheduler_state=optional(SCHEDULER_FILE),
        scaler_state=optional(SCALER_FILE),
        train_model_state=optional(TRAIN_MODEL_FILE),
        extra_state=_read_json(train_state) if train_state.is_file() else None,
    )
