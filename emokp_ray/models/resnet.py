"""The course's two ResNets in PyTorch: one backbone, a keypoint head and an emotion head.

Reads top-down: the blocks (`ConvBlock`, `IdentityBlock`), a stage, the backbone
(`ResNet.forward_features`), the two heads (`ResNet.forward_head`), then the factory functions.

The reference design is the Keras model of the course ("Emotion AI"), reproduced layer for layer:

    stem:   zero-pad 3, conv 7x7/2 (64), BN, ReLU, max-pool 3/2
    stage:  ConvBlock (halves H and W with max-pools) + 2 IdentityBlocks; filters [64,64,256], [128,128,512]
    head:   keypoints: avg-pool 2, flatten, dense 4096 + ReLU + dropout 0.2, dense 2048 + ReLU +
            dropout 0.1, dense 30;  emotion: avg-pool 4, flatten, dense 5

Trainable parameters for a 96x96 grey input (checked by the tests; the counts are the course's):
    backbone 1,162,880 = stem 3,328 + stage 1 217,216 + stage 2 942,336 (Keras convs have biases,
    so every conv here has bias=True; BN has 2 trainable parameters per channel)
    keypoints 18,007,710 = backbone + 2048*4096+4096 + 4096*2048+2048 + 2048*30+30
              (96 -> stem 48 -> pool 23 -> stage 11 -> stage 5 -> avg-pool 2 -> 2x2x512 = 2048 features)
    emotion    1,165,445 = backbone + 512*5+5  (5x5 -> avg-pool 4 -> 1x1x512 = 512 features)

Departures from the Keras code, each for a reason:
  * Input is RAW pixels (uint8, or float 0..255); the model normalizes itself ((x - mean) / std,
    buffers, default x / 255), so every caller feeds the same thing.
  * The course's last keypoint dense had a ReLU; here it is linear and predicts a normalized offset
    that a fixed affine (buffers) maps to pixels: 48 + 48 * raw on a 96 input. Normalized targets
    train far better than raw pixels (with the course's Adam 1e-4 on raw pixel targets the model
    was still at the mean-shape level after 10 epochs).
  * The emotion head returns logits (the course's softmax belongs in the loss / the predictor).
  * Init is PyTorch's (Kaiming for the convs), not Keras' Glorot; BN uses PyTorch's momentum/eps.
  * `adaptive_pool` replaces the fixed head pool by an adaptive average pool onto a fixed grid, so a
    model built for FER's native 48x48 keeps the course's parameter count: at 48 the backbone ends
    at 2x2 (48 -> 24 -> 11 -> 5 -> 2), so emotion uses adaptive_pool=1 (512 features) and keypoints
    adaptive_pool=2 (2048 features). At 96 the adaptive 2x2 pool averages overlapping 3x3 windows of
    the 5x5 map, so it is not bit-identical to the course's avg-pool 2; the course models keep the
    fixed pool at 96.

This module never imports ray.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from emokp_ray.errors import UserError
from emokp_ray.models.pixels import normalized_pixels
from emokp_ray.models.registry import Network, dataclass_config
from emokp_ray.tasks import TASKS, task_spec

COURSE_INPUT_SIZE = 96
COURSE_STAGES: tuple[tuple[int, int, int], ...] = ((64, 64, 256), (128, 128, 512))
# The course's head per task: avg-pool kernel, hidden dense widths and their dropout, and whether a
# fixed affine maps the last dense layer's normalized offsets to pixels (coordinates only).
COURSE_HEADS: dict[str, dict[str, Any]] = {
    "keypoints": {"head_pool": 2, "head_hidden": (4096, 2048), "head_dropout": (0.2, 0.1), "keypoint_affine": True},
    "emotion": {"head_pool": 4, "head_hidden": (), "head_dropout": (), "keypoint_affine": False},
}
# At an input size other than 96, the adaptive pool's grid per task that keeps the course's head width.
COURSE_ADAPTIVE_GRID = {"keypoints": 2, "emotion": 1}


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; stored in every checkpoint.

    Fields left as None take the course's value for `task` (resolved in __post_init__, so
    `to_dict()` always writes concrete values): `ModelConfig(task="emotion")` is the course's
    emotion model, `ModelConfig(task="keypoints")` the course's keypoint model.
    """

    task: str  # "keypoints" -> [B, 30] pixels; "emotion" -> [B, K] logits
    num_outputs: int | None = None  # keypoints 30 (x, y per point, Kaggle order); emotion 5 (seed5)
    input_size: int = COURSE_INPUT_SIZE  # square H = W in pixels the model is built for
    in_chans: int = 1  # grey
    # --- backbone ---
    stem_width: int = 64  # filters of the 7x7/2 stem conv (before width_mult)
    stem_pool: bool = True  # the stem's max-pool 3/2 (off: 2x the resolution downstream)
    stage_filters: tuple[tuple[int, int, int], ...] = COURSE_STAGES  # (f1, f2, f3) per stage, before width_mult
    stage_depths: tuple[int, ...] | None = None  # identity blocks after each stage's ConvBlock (course: 2 each)
    width_mult: float = 1.0  # scales every conv width (stem and stages), rounded
    # --- head ---
    head_pool: int | None = None  # the course's avg-pool kernel (= stride): keypoints 2, emotion 4
    adaptive_pool: int | None = None  # set: AdaptiveAvgPool2d onto this grid instead of head_pool
    head_hidden: tuple[int, ...] | None = None  # hidden dense widths: keypoints (4096, 2048), emotion ()
    head_dropout: tuple[float, ...] | None = None  # dropout after each hidden dense: keypoints (0.2, 0.1)
    keypoint_affine: bool | None = None  # keypoints (default on): pixels = c + c * raw, c = input_size / 2
    # --- input normalization: x_model = (x_raw - norm_mean) / norm_std, x_raw in 0..255 ---
    norm_mean: float = 0.0
    norm_std: float = 255.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UserError(f"model task must be one of {', '.join(TASKS)}, got {self.task!r}")
        defaults: dict[str, Any] = {
            "num_outputs": task_spec(self.task).default_outputs,
            "stage_depths": (2,) * len(self.stage_filters),
            **COURSE_HEADS[self.task],
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        # Lists (from JSON) -> tuples, so configs compare equal and stay hashable.
        object.__setattr__(self, "stage_filters", tuple(tuple(int(f) for f in s) for s in self.stage_filters))
        for name in ("stage_depths", "head_hidden", "head_dropout"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        def fail(message: str) -> None:
            raise UserError(f"invalid model config: {message}")

        # __post_init__ has replaced every None by the task's default.
        assert self.num_outputs is not None and self.stage_depths is not None and self.head_pool is not None
        assert self.head_hidden is not None and self.head_dropout is not None

        if self.num_outputs < 1 or self.in_chans < 1 or self.stem_width < 1:
            fail("num_outputs, in_chans and stem_width must be positive")
        if task_spec(self.task).coordinates and self.num_outputs % 2:
            fail(f"keypoints num_outputs must be even (x, y per point), got {self.num_outputs}")
        if not self.stage_filters or any(len(s) != 3 or min(s) < 1 for s in self.stage_filters):
            fail(f"stage_filters must be one or more (f1, f2, f3) triples of positive ints, got {self.stage_filters}")
        if len(self.stage_depths) != len(self.stage_filters) or min(self.stage_depths) < 0:
            fail(
                f"stage_depths {self.stage_depths} must give a count >= 0 for each of the {len(self.stage_filters)} stages"
            )
        if self.width_mult <= 0:
            fail(f"width_mult must be positive, got {self.width_mult}")
        if len(self.head_dropout) != len(self.head_hidden) or not all(0 <= p < 1 for p in self.head_dropout):
            fail(f"head_dropout {self.head_dropout} must give one rate in [0, 1) per hidden layer {self.head_hidden}")
        if self.keypoint_affine and not task_spec(self.task).coordinates:
            fail("keypoint_affine applies to the keypoints task only")
        if self.norm_std <= 0:
            fail(f"norm_std must be positive, got {self.norm_std}")
        if self.adaptive_pool is not None and self.adaptive_pool < 1:
            fail(f"adaptive_pool must be a positive grid size, got {self.adaptive_pool}")
        if self.head_pool < 1:
            fail(f"head_pool must be positive, got {self.head_pool}")
        grid = self.head_grid  # raises when the input is too small for the stem and stages
        if grid < 1:
            fail(
                f"head_pool {self.head_pool} is larger than the {self.feature_size}x{self.feature_size} "
                f"feature map of a {self.input_size}x{self.input_size} input; set adaptive_pool "
                f"(emotion 1, keypoints 2 keep the course's parameter count)"
            )

    # ---- derived sizes ---------------------------------------------------------------------------

    def width(self, filters: int) -> int:
        """A conv width after width_mult (rounded, at least 1)."""
        return max(1, round(filters * self.width_mult))

    @property
    def feature_channels(self) -> int:
        return self.width(self.stage_filters[-1][2])

    @property
    def feature_size(self) -> int:
        """H = W of the backbone's output map (96 -> 5 for the course's two stages)."""
        size = (self.input_size + 2 * 3 - 7) // 2 + 1  # stem conv 7x7/2 with zero-pad 3
        if self.stem_pool:
            size = (size - 3) // 2 + 1 if size >= 3 else 0  # max-pool 3/2, no padding (Keras "valid")
        for _ in self.stage_filters:
            size //= 2  # each ConvBlock max-pools by 2 (floor, Keras "valid")
        if size < 1:
            raise UserError(
                f"invalid model config: input_size {self.input_size} is too small for the stem and "
                f"{len(self.stage_filters)} stages (the feature map vanishes)"
            )
        return size

    @property
    def head_grid(self) -> int:
        """H = W of the map the head flattens."""
        if self.adaptive_pool is not None:
            return self.adaptive_pool
        assert self.head_pool is not None  # resolved in __post_init__
        return self.feature_size // self.head_pool

    @property
    def head_features(self) -> int:
        return self.feature_channels * self.head_grid**2

    # ---- (de)serialization -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (tuples become lists in JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are a `UserError` naming them."""
        return dataclass_config(cls, raw, "model config")


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------


def conv(in_chans: int, out_chans: int, kernel_size: int, padding: int = 0, stride: int = 1) -> nn.Conv2d:
    # bias=True like Keras' Conv2D default: the course's parameter counts include conv biases.
    return nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=padding, bias=True)


class ConvBlock(nn.Module):
    """The course's convolutional block: widens to f3 and halves H and W (max-pool 2 on both paths).

    main:     1x1 conv f1, max-pool 2, BN, ReLU, 3x3 conv f2 (same), BN, ReLU, 1x1 conv f3, BN
    shortcut: 1x1 conv f3, max-pool 2, BN
    out:      ReLU(main + shortcut)            [B, in, H, W] -> [B, f3, H // 2, W // 2]
    """

    def __init__(
        self,
        in_chans: int,
        filters: tuple[int, int, int],
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
    ):
        super().__init__()
        f1, f2, f3 = filters
        self.conv1 = conv(in_chans, f1, 1)
        self.pool1 = nn.MaxPool2d(2)
        self.bn1 = norm_layer(f1)
        self.act1 = act_layer()
        self.conv2 = conv(f1, f2, 3, padding=1)
        self.bn2 = norm_layer(f2)
        self.act2 = act_layer()
        self.conv3 = conv(f2, f3, 1)
        self.bn3 = norm_layer(f3)
        self.shortcut_conv = conv(in_chans, f3, 1)
        self.shortcut_pool = nn.MaxPool2d(2)
        self.shortcut_bn = norm_layer(f3)
        self.act3 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_bn(self.shortcut_pool(self.shortcut_conv(x)))
        x = self.act1(self.bn1(self.pool1(self.conv1(x))))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act3(x + shortcut)


class IdentityBlock(nn.Module):
    """The course's identity block (a bottleneck without stride): [B, f3, H, W] -> same shape.

    main: 1x1 conv f1, BN, ReLU, 3x3 conv f2 (same), BN, ReLU, 1x1 conv f3, BN;  out: ReLU(main + x)
    """

    def __init__(
        self,
        filters: tuple[int, int, int],
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
    ):
        super().__init__()
        f1, f2, f3 = filters
        self.conv1 = conv(f3, f1, 1)
        self.bn1 = norm_layer(f1)
        self.act1 = act_layer()
        self.conv2 = conv(f1, f2, 3, padding=1)
        self.bn2 = norm_layer(f2)
        self.act2 = act_layer()
        self.conv3 = conv(f2, f3, 1)
        self.bn3 = norm_layer(f3)
        self.act3 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act3(x + shortcut)


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------


class ResStage(nn.Sequential):
    """One ConvBlock (halves H, W) then `num_identity` IdentityBlocks (the course's `res_block`)."""

    def __init__(self, in_chans: int, filters: tuple[int, int, int], num_identity: int):
        super().__init__(ConvBlock(in_chans, filters), *(IdentityBlock(filters) for _ in range(num_identity)))


# --------------------------------------------------------------------------------------------------
# Network: backbone (forward_features) and the two heads (forward_head)
# --------------------------------------------------------------------------------------------------


class ResNet(nn.Module):
    """Raw grey pixels -> keypoints in pixels [B, 30] or emotion logits [B, K], per `cfg.task`.

    Input: [B, C, H, W] (or [B, H, W] when C = 1), uint8 or float with values 0..255; H = W =
    cfg.input_size. Output is float32 even under autocast (bf16 cannot hold a pixel coordinate to
    better than 0.5 px near 96).
    """

    # The buffers registered in __init__ (scalars); declared so their type is Tensor, not Module.
    norm_mean: torch.Tensor
    norm_std: torch.Tensor
    out_center: torch.Tensor
    out_scale: torch.Tensor

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # ModelConfig.__post_init__ has resolved the task's defaults.
        assert cfg.stage_depths is not None and cfg.head_pool is not None and cfg.num_outputs is not None
        assert cfg.head_hidden is not None and cfg.head_dropout is not None
        # Buffers, not parameters: fixed by the config, moved by .to(), absent from the state_dict
        # (persistent=False) so the config stays their single source of truth.
        self.register_buffer("norm_mean", torch.tensor(float(cfg.norm_mean)), persistent=False)
        self.register_buffer("norm_std", torch.tensor(float(cfg.norm_std)), persistent=False)

        # Stem: Keras' ZeroPadding2D(3) + valid 7x7/2 conv == a 7x7/2 conv with padding=3.
        stem_width = cfg.width(cfg.stem_width)
        stem: list[nn.Module] = [
            conv(cfg.in_chans, stem_width, 7, padding=3, stride=2),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(),
        ]
        if cfg.stem_pool:
            stem.append(nn.MaxPool2d(3, stride=2))
        self.stem = nn.Sequential(*stem)

        # Stages: each halves H and W and widens to its f3.
        stages, in_chans = [], stem_width
        for filters, depth in zip(cfg.stage_filters, cfg.stage_depths):
            f1, f2, f3 = filters
            widths = (cfg.width(f1), cfg.width(f2), cfg.width(f3))
            stages.append(ResStage(in_chans, widths, depth))
            in_chans = widths[2]
        self.stages = nn.Sequential(*stages)

        # Head: pool, flatten, [dense, ReLU, dropout] per hidden layer, dense to the outputs.
        pool = nn.AdaptiveAvgPool2d(cfg.adaptive_pool) if cfg.adaptive_pool is not None else nn.AvgPool2d(cfg.head_pool)
        head: list[nn.Module] = [pool, nn.Flatten()]
        width = cfg.head_features
        for hidden, p in zip(cfg.head_hidden, cfg.head_dropout):
            head += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(p)]
            width = hidden
        head.append(nn.Linear(width, cfg.num_outputs))
        self.head = nn.Sequential(*head)

        # Keypoints: pixels = centre + scale * raw; the dense layer learns offsets of order 1.
        half = cfg.input_size / 2.0 if cfg.keypoint_affine else 0.0
        self.register_buffer("out_center", torch.tensor(half), persistent=False)
        self.register_buffer("out_scale", torch.tensor(half if cfg.keypoint_affine else 1.0), persistent=False)

        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:  # every conv here has one (bias=True)
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.keypoint_affine:
            # Start every prediction at the crop's centre: with the default init the 4096-2048 head
            # began ~130 px off (loss ~8 in half-crop units) and spent its warm-up unlearning that.
            out = self.head[-1]
            assert isinstance(out, nn.Linear)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixels [B, C, H, W] or [B, H, W] (0..255, any dtype) -> model input in the stem's dtype."""
        x = normalized_pixels(x, self.cfg.in_chans, self.cfg.input_size, self.norm_mean, self.norm_std)
        stem_conv = self.stem[0]
        assert isinstance(stem_conv, nn.Conv2d)
        return x.to(stem_conv.weight.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized input [B, C, S, S] -> feature map [B, f3_last, cfg.feature_size, cfg.feature_size]."""
        return self.stages(self.stem(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map -> keypoint pixels [B, num_outputs] or emotion logits [B, num_outputs], float32."""
        raw = self.head(features).float()
        if self.cfg.keypoint_affine:
            return self.out_center.float() + self.out_scale.float() * raw
        return raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(self.normalize(x)))


def num_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Parameter count (buffers such as BN running stats and the keypoint affine excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------------
# Factories: the course models are the reference; one stronger variant per task for experiments
# --------------------------------------------------------------------------------------------------


def build_model(cfg: ModelConfig) -> ResNet:
    """The network a config describes (fresh weights, train mode)."""
    return ResNet(cfg)


def _course_config(task: str, overrides: dict[str, Any]) -> ModelConfig:
    # At an input size other than the course's 96 the course's fixed pool would change the head's
    # width (or vanish), so the factories pool adaptively onto the course's grid instead:
    # 1x1 for emotion, 2x2 for keypoints -> the same parameter count at 48x48 as at 96x96.
    if overrides.get("input_size", COURSE_INPUT_SIZE) != COURSE_INPUT_SIZE and "adaptive_pool" not in overrides:
        overrides = {**overrides, "adaptive_pool": COURSE_ADAPTIVE_GRID[task]}
    return ModelConfig(task=task, **overrides)


def keypoint_config(**overrides: Any) -> ModelConfig:
    """The course's keypoint ResNet (18,007,710 parameters at 96x96), with `overrides` applied."""
    return _course_config("keypoints", overrides)


def emotion_config(**overrides: Any) -> ModelConfig:
    """The course's emotion ResNet (1,165,445 parameters for 5 classes at 96x96 or 48x48)."""
    return _course_config("emotion", overrides)


def keypoint_config_wide(**overrides: Any) -> ModelConfig:
    """Stronger keypoint variant: 2x the filters, one more identity block per stage (not yet tuned)."""
    return keypoint_config(**{"width_mult": 2.0, "stage_depths": (3, 3), **overrides})


def emotion_config_wide(**overrides: Any) -> ModelConfig:
    """Stronger emotion variant for FER's native 48x48: 1.5x the filters, no stem max-pool (so the
    stages see 24x24 instead of 11x11), a third stage, adaptive pool to 1x1 (not yet tuned)."""
    defaults = {
        "input_size": 48,
        "width_mult": 1.5,
        "stem_pool": False,
        "stage_filters": COURSE_STAGES + ((256, 256, 1024),),
        "adaptive_pool": 1,
    }
    return emotion_config(**{**defaults, **overrides})


def keypoint_config_small(**overrides: Any) -> ModelConfig:
    """A light keypoint variant for CPU demos and tests: half the filters, one identity block per
    stage and a 256-wide head (the course head's 16.8M dense weights dominate its cost on CPUs)."""
    return keypoint_config(
        **{"width_mult": 0.5, "stage_depths": (1, 1), "head_hidden": (256,), "head_dropout": (0.1,), **overrides}
    )


def emotion_config_small(**overrides: Any) -> ModelConfig:
    """A light emotion variant for CPU demos and tests: half the filters, one identity block per stage."""
    return emotion_config(**{"width_mult": 0.5, "stage_depths": (1, 1), **overrides})


def keypoint_config_compact(**overrides: Any) -> ModelConfig:
    """The release keypoint net: the course backbone with a 1024-512 head (3.8M parameters, 7.6 MB in
    fp16, against 18.0M / 36 MB for the course's 4096-2048 head, whose dense weights are 93% of the
    course model's bytes but only ~17% of its multiply-adds)."""
    return keypoint_config(**{"head_hidden": (1024, 512), "head_dropout": (0.2, 0.1), **overrides})


def emotion_config_fer48(**overrides: Any) -> ModelConfig:
    """The release emotion net, built for FER's native 48x48: the course's blocks at half width
    without the stem max-pool, so the stages see 24x24 -> 12x12 -> 6x6 instead of the course net's
    11 -> 5 -> 2 at 48 px (its first 4x downsampling leaves little of an expression). 296,005
    parameters; on one CPU thread it trains at ~0.75x the course net's images/s at 48 px (at full
    width, 5.7x slower: too slow for CPU training)."""
    return emotion_config(**{"input_size": 48, "stem_pool": False, "width_mult": 0.5, "adaptive_pool": 1, **overrides})


def keypoint_resnet(**overrides: Any) -> ResNet:
    return build_model(keypoint_config(**overrides))


def emotion_resnet(**overrides: Any) -> ResNet:
    return build_model(emotion_config(**overrides))


def keypoint_resnet_wide(**overrides: Any) -> ResNet:
    return build_model(keypoint_config_wide(**overrides))


def emotion_resnet_wide(**overrides: Any) -> ResNet:
    return build_model(emotion_config_wide(**overrides))


# (task, variant) -> config factory; the training config's `model` field names the variant.
VARIANTS: dict[tuple[str, str], Callable[..., ModelConfig]] = {
    ("keypoints", "course"): keypoint_config,
    ("keypoints", "wide"): keypoint_config_wide,
    ("emotion", "course"): emotion_config,
    ("emotion", "wide"): emotion_config_wide,
    ("keypoints", "small"): keypoint_config_small,
    ("emotion", "small"): emotion_config_small,
    ("keypoints", "compact"): keypoint_config_compact,
    ("emotion", "fer48"): emotion_config_fer48,
}


def model_config(task: str, variant: str = "course", **overrides: Any) -> ModelConfig:
    """The config of a named variant for a task (both: "course", "wide", "small"; keypoints "compact";
    emotion "fer48"), with `overrides` applied."""
    try:
        factory = VARIANTS[(task, variant)]
    except KeyError:
        known = ", ".join(f"{t}/{v}" for t, v in VARIANTS)
        raise UserError(f"unknown model {task}/{variant}; known: {known}") from None
    return factory(**overrides)


def _variant_config(variant: str, task: str, **overrides: Any) -> ModelConfig:
    return model_config(task, variant, **overrides)


NETWORK = Network(
    name="resnet",
    config_type=ModelConfig,
    build=build_model,
    module_type=ResNet,
    configs={variant: functools.partial(_variant_config, variant) for _, variant in VARIANTS},
)
