"""Which networks exist, and the model names `emokp train --model NAME` knows them by.

A network is registered with its config type and its builder (`Network`, defined by the network's own
module as `NETWORK`); checkpoints (artifacts/checkpoint.py: meta.json's "network"), ONNX export and
the inference backends look the network up here, so nothing downstream is ResNet-only. A model name
(`MODELS`) is a preset of one network for the tasks it is defined for.

Adding a network: a module with its config dataclass (the `NetworkConfig` fields below, `to_dict`,
`from_dict`), its nn.Module and `NETWORK = Network(...)`; one line in NETWORK_MODULES; its model
names in MODELS. Importing this module imports no torch: a network's module loads on first lookup.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from emokp_ray.errors import UserError
from emokp_ray.tasks import TASKS

if TYPE_CHECKING:
    from torch import nn


class NetworkConfig(Protocol):
    """What every network's config offers the rest of the code (checkpoints, export, the predictor)."""

    @property
    def task(self) -> str: ...  # tasks.py name: what the outputs mean
    @property
    def num_outputs(self) -> int | None: ...  # K of the output [B, K]
    @property
    def input_size(self) -> int: ...  # square input side, pixels
    @property
    def in_chans(self) -> int: ...
    @property
    def norm_mean(self) -> float: ...  # the model normalizes raw pixels itself: (x - mean) / std
    @property
    def norm_std(self) -> float: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Network:
    """A network kind: its config type, the builder (config -> fresh nn.Module), the module class the
    builder returns, and its model names' config factories (name -> factory(task, **overrides))."""

    name: str
    config_type: type
    build: Callable[[Any], nn.Module]
    module_type: type
    configs: Mapping[str, Callable[..., Any]]
    onnx: bool = True  # traces to ONNX (export, --backend onnx)


@dataclass(frozen=True)
class ModelName:
    network: str
    tasks: tuple[str, ...]  # the tasks the preset is defined for
    description: str


DEFAULT_NETWORK = "resnet"  # the network of checkpoints whose meta names none
NETWORK_MODULES: dict[str, str] = {
    "resnet": "emokp_ray.models.resnet",
    "convnet": "emokp_ray.models.convnet",
}
MODELS: dict[str, ModelName] = {
    "course": ModelName("resnet", TASKS, "the course's ResNet"),
    "wide": ModelName("resnet", TASKS, "a stronger ResNet: wider, deeper"),
    "small": ModelName("resnet", TASKS, "a light ResNet for CPU demos and tests"),
    "compact": ModelName("resnet", ("keypoints",), "the course backbone with a 1024-512 head (release)"),
    "fer48": ModelName("resnet", ("emotion",), "48x48 without the stem max-pool (release)"),
    "tiny": ModelName("convnet", TASKS, "a plain 4-layer ConvNet baseline (~0.1M parameters)"),
}


def network(name: str) -> Network:
    """The registered network of that name (its module imported now)."""
    if name not in NETWORK_MODULES:
        raise UserError(f"unknown network {name!r} (known: {', '.join(NETWORK_MODULES)})")
    found = importlib.import_module(NETWORK_MODULES[name]).NETWORK
    assert isinstance(found, Network) and found.name == name, f"{NETWORK_MODULES[name]}.NETWORK is not {name!r}"
    return found


def networks() -> list[Network]:
    return [network(name) for name in NETWORK_MODULES]


def network_of(cfg: Any) -> Network:
    """The network a config belongs to (by its type)."""
    for candidate in networks():
        if isinstance(cfg, candidate.config_type):
            return candidate
    raise TypeError(f"{type(cfg).__name__} is not the config of a registered network")


def network_of_module(model: Any) -> Network | None:
    """The registered network a module is (None for anything else: a TorchScript file, a test's stand-in)."""
    for candidate in networks():
        if isinstance(model, candidate.module_type):
            return candidate
    return None


def model_config(task: str, model: str = "course", **overrides: Any) -> Any:
    """The config of a named model for a task, with `overrides` applied."""
    entry = MODELS.get(model)
    if entry is None or task not in entry.tasks:
        known = ", ".join(f"{t}/{m}" for m, e in MODELS.items() for t in e.tasks)
        raise UserError(f"unknown model {task}/{model}; known: {known}")
    return network(entry.network).configs[model](task, **overrides)


def dataclass_config(cls: Any, raw: Any, what: str) -> Any:
    """A network's config dataclass `cls` from its checkpoint JSON `raw`: the from_dict of every
    registered config. Not a dict, unknown keys, no task or a bad value is a `UserError` naming
    `what` ("model config", "convnet config")."""
    if not isinstance(raw, dict):
        raise UserError(f"model config must be a JSON object, got {type(raw).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise UserError(f"unknown {what} key(s): {', '.join(unknown)} (known: {', '.join(known)})")
    if "task" not in raw:
        raise UserError("model config has no 'task'")
    try:
        return cls(**raw)
    except (TypeError, ValueError) as err:  # e.g. a string where a number belongs
        raise UserError(f"invalid {what}: {err}") from None


def config_from_dict(network_name: str, raw: Any) -> Any:
    """A checkpoint's model_config object read back as its network's config (UserError when invalid)."""
    config_type: Any = network(network_name).config_type  # each config type has a from_dict classmethod
    return config_type.from_dict(raw)


def build_model(cfg: Any) -> nn.Module:
    """The network a config describes (fresh weights, train mode)."""
    return network_of(cfg).build(cfg)
