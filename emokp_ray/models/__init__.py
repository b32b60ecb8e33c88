"""The networks: the course's ResNets (resnet.py), a plain ConvNet baseline (convnet.py), and the
registry that names them (registry.py). Importing the package imports no torch; the names below
load resnet.py on first use."""

from __future__ import annotations

from typing import Any

__all__ = [
    "VARIANTS",
    "ConvBlock",
    "IdentityBlock",
    "ModelConfig",
    "ResNet",
    "ResStage",
    "build_model",
    "emotion_config",
    "emotion_config_wide",
    "emotion_resnet",
    "emotion_resnet_wide",
    "keypoint_config",
    "keypoint_config_wide",
    "keypoint_resnet",
    "keypoint_resnet_wide",
    "model_config",
    "num_parameters",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from emokp_ray.models import resnet

        return getattr(resnet, name)
    raise AttributeError(f"module 'emokp_ray.models' has no attribute {name!r}")
