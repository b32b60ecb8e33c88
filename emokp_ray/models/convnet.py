"""A plain ConvNet baseline for either task: `emokp train TASK --model tiny`.

    input:  raw grey pixels [B, 1, S, S] (0..255), normalized inside ((x - norm_mean) / norm_std)
    layers: per entry of `widths`: conv 3x3 (padding 1) + BN + ReLU + max-pool 2  (S -> S / 2)
    head:   adaptive avg-pool onto a pool_grid x pool_grid grid, flatten, dense `hidden` + ReLU +
            dropout, dense num_outputs; coordinate tasks (keypoints) map the last dense layer's
            normalized offsets to pixels as the ResNet does: pixels = S/2 + S/2 * raw

About 0.17M parameters with the defaults (keypoints at 96x96): a yardstick the ResNets should beat,
and the registry's proof that a network other than the ResNet trains, checkpoints, exports and
predicts through the same code (models/registry.py). This module never imports ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from emokp_ray.errors import UserError
from emokp_ray.models.pixels import normalized_pixels
from emokp_ray.models.registry import Network, dataclass_config
from emokp_ray.tasks import task_spec


@dataclass(frozen=True)
class ConvNetConfig:
    """Everything needed to rebuild a ConvNet; stored in every checkpoint."""

    task: str  # tasks.py name: "keypoints" -> [B, 30] pixels; "emotion" -> [B, K] logits
    num_outputs: int | None = None  # None: the task's default (keypoints 30, emotion 5)
    input_size: int = 96  # square H = W in pixels
    in_chans: int = 1
    widths: tuple[int, ...] = (16, 32, 64, 128)  # output channels of each conv layer (each halves H, W)
    pool_grid: int | None = None  # the head's average pool onto a grid of this side; None: 2 for
    # coordinates (2x2 cells keep coarse position), 1 for classes (global average)
    hidden: int = 128  # the hidden dense layer's width (0: none)
    dropout: float = 0.1  # after the hidden dense layer
    norm_mean: float = 0.0
    norm_std: float = 255.0

    def __post_init__(self) -> None:
        spec = task_spec(self.task)
        if self.num_outputs is None:
            object.__setattr__(self, "num_outputs", spec.default_outputs)
        if self.pool_grid is None:
            object.__setattr__(self, "pool_grid", 2 if spec.coordinates else 1)
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        assert self.num_outputs is not None and self.pool_grid is not None

        def fail(message: str) -> None:
            raise UserError(f"invalid convnet config: {message}")

        if self.num_outputs < 1 or self.in_chans < 1 or self.hidden < 0 or self.pool_grid < 1:
            fail("num_outputs, in_chans and pool_grid must be positive, hidden >= 0")
        if spec.coordinates and self.num_outputs % 2:
            fail(f"{self.task} num_outputs must be even (x, y per point), got {self.num_outputs}")
        if not self.widths or min(self.widths) < 1:
            fail(f"widths must be one or more positive ints, got {self.widths}")
        if self.feature_size < 1:
            fail(f"input_size {self.input_size} is too small for {len(self.widths)} halvings")
        if self.feature_size % self.pool_grid:  # ONNX exports only whole-cell adaptive pools
            fail(
                f"the last feature map ({self.feature_size}x{self.feature_size} at input_size {self.input_size}) "
                f"must divide into pool_grid {self.pool_grid} cells"
            )
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm_std <= 0:
            fail(f"norm_std must be positive, got {self.norm_std}")

    @property
    def feature_size(self) -> int:
        """Side of the last feature map: each layer's max-pool halves it (rounding down)."""
        return self.input_size >> len(self.widths)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> ConvNetConfig:
        """Inverse of `to_dict`; unknown keys and bad values are a `UserError`."""
        return dataclass_config(cls, raw, "convnet config")


class ConvNet(nn.Module):
    """Raw grey pixels [B, C, S, S] (or [B, S, S]) -> keypoint pixels [B, 30] or logits [B, K], float32."""

    norm_mean: torch.Tensor
    norm_std: torch.Tensor
    out_center: torch.Tensor

    def __init__(self, cfg: ConvNetConfig):
        super().__init__()
        assert cfg.num_outputs is not None and cfg.pool_grid is not None  # resolved in __post_init__
        self.cfg = cfg
        self.register_buffer("norm_mean", torch.tensor(float(cfg.norm_mean)), persistent=False)
        self.register_buffer("norm_std", torch.tensor(float(cfg.norm_std)), persistent=False)
        layers: list[nn.Module] = []
        in_chans = cfg.in_chans
        for width in cfg.widths:
            layers += [nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            in_chans = width
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(cfg.pool_grid), nn.Flatten()]
        width = in_chans * cfg.pool_grid**2
        if cfg.hidden:
            head += [nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        head.append(nn.Linear(width, cfg.num_outputs))
        self.head = nn.Sequential(*head)
        # coordinates: pixels = c + c * raw, c = S / 2 (as the ResNet); class logits: raw
        self.coordinates = task_spec(cfg.task).coordinates
        self.register_buffer("out_center", torch.tensor(cfg.input_size / 2.0), persistent=False)
        if self.coordinates:  # start every prediction at the crop's centre (as the ResNet's head)
            out = self.head[-1]
            assert isinstance(out, nn.Linear)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = normalized_pixels(x, self.cfg.in_chans, self.cfg.input_size, self.norm_mean, self.norm_std)
        first = self.features[0]
        assert isinstance(first, nn.Conv2d)
        raw = self.head(self.features(x.to(first.weight.dtype))).float()
        if self.coordinates:
            return self.out_center.float() * (1.0 + raw)
        return raw


def tiny_config(task: str, **overrides: Any) -> ConvNetConfig:
    """The `tiny` model: the defaults above, at the task's usual input size unless overridden."""
    return ConvNetConfig(task=task, **{"input_size": task_spec(task).default_input_size, **overrides})


NETWORK = Network(
    name="convnet",
    config_type=ConvNetConfig,
    build=ConvNet,
    module_type=ConvNet,
    configs={"tiny": tiny_config},
)
