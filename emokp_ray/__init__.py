"""emokp-ray: facial keypoints and facial emotion, trained from scratch, distributed with Ray.

Importing the package has no side effects: no Ray start, no environment writes, no torch import.
From Python:

    import emokp_ray
    analyzer = emokp_ray.FaceAnalyzer()       # the builtin models, loaded once (torch loads here)
    result = analyzer("photo.jpg")            # a path, bytes, numpy RGB array or PIL image; a list is batched
    result.faces[0].emotion, result.to_pandas(), result.annotate()

`FaceAnalyzer` and `to_pandas` are imported on first use (the module `__getattr__` below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emokp_ray.analyzer import FaceAnalyzer
    from emokp_ray.inference.results import to_pandas

__version__ = "0.1.0"
__all__ = ["FaceAnalyzer", "__version__", "to_pandas"]

_LAZY = {"FaceAnalyzer": "emokp_ray.analyzer", "to_pandas": "emokp_ray.inference.results"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'emokp_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
