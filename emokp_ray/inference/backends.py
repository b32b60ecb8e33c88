"""Where the networks run: one small runner object per model (`make_runner`), and the one forward
loop over it (`run_model`), which the predictor (so batch labeling and Serve) and `emokp evaluate`
call. A runner maps raw face crops uint8 [N, S, S] to the network's outputs float32 [N, K]
(keypoint pixels on the crop, or emotion logits); everything around it (detection, framing, flip
test-time augmentation, calibrated probabilities) is the predictor's and so the same on every backend.

    torch      eager PyTorch, weights channels-last (the model as trained)
    onnx       ONNX Runtime (CPU) on the model exported to ONNX, fp32, all graph optimizations on
    onnx-int8  ONNX Runtime on a statically quantized copy: int8 weights (per output channel) and
               int8 activations (QDQ), activation ranges calibrated on CALIBRATION_FACES synthetic
               faces; an emotion model's first convolution and head stay fp32
    auto       onnx where ONNX Runtime is installed (the `onnx` extra) and the device is the CPU,
               else torch: the faster one where it can run (benchmarks/inference_backends.py)

The ONNX side (export, the export-once cache, int8 quantization, the session) is artifacts/onnx.py.
This module never imports ray; onnx / onnxruntime are imported only when an ONNX backend is asked for.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from emokp_ray.artifacts.checkpoint import LoadedCheckpoint
from emokp_ray.artifacts.onnx import OnnxModel, OnnxRunner, onnx_installed, onnx_model_for
from emokp_ray.errors import UserError
from emokp_ray.models.registry import network_of_module

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
ONNX_INSTALL_HINT = "pip install 'emokp-ray[onnx]' (onnx, onnxruntime), or use --backend torch"
MAX_BATCH = 256  # crops per runner call in run_model (bounds activation memory; one call below it)


class Runner(Protocol):
    """A network behind one call: uint8 [N, S, S] raw crops -> float32 [N, K]."""

    backend: str  # "torch" | "onnx" | "onnx-int8"

    def __call__(self, crops: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------------
# Choosing a backend
# --------------------------------------------------------------------------------------------------


def resolve_backend(backend: str, device: str | torch.device = "cpu") -> str:
    """ "auto" -> "onnx" on a CPU where the extra is installed, else "torch"; an ONNX backend without
    the extra, or on a GPU, is a UserError that says what to do."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "auto":
        return "onnx" if on_cpu and onnx_installed() else "torch"
    if backend != "torch":
        if not onnx_installed():
            raise UserError(f"--backend {backend} needs ONNX Runtime, which is not installed: {ONNX_INSTALL_HINT}")
        if not on_cpu:
            raise UserError(
                f"--backend {backend} runs on the CPU (onnxruntime's CPU build); on {device} use --backend torch"
            )
    return backend


# --------------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------------


def prepare_torch_model(model: Any, device: torch.device) -> Any:
    """The model on `device`, in eval mode, weights channels_last (a TorchScript module keeps its
    layout), in place: on this project's 2-core CPU (torch 2.13, one thread, CPU time per 96x96 crop)
    the keypoint net goes 8.7 -> 6.5 ms and the 48 px emotion net 2.4 -> 1.4 ms
    (benchmarks/predict_latency.py)."""
    model = model.to(device).eval()
    if isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        # torch's stub of Module.to lists no memory_format overload; the method takes it.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


class TorchRunner:
    """Eager PyTorch on a model already on its device, in eval mode (prepare_torch_model)."""

    backend = "torch"

    def __init__(self, model: Any, device: torch.device):
        self.model, self.device = model, device

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(crops).unsqueeze(1).to(self.device, non_blocking=True)  # [N, 1, S, S] raw pixels
            return self.model(x).float().cpu().numpy()


def make_runner(
    loaded: LoadedCheckpoint, backend: str, device: torch.device, explicit: bool = True, threads: int | None = None
) -> Runner:
    """The runner for one model on a resolved backend ("torch" | "onnx" | "onnx-int8"); threads: an
    ONNX session's intra-op threads (None: torch's setting; torch's own are process-wide).
    An exported .onnx file (model an OnnxModel) runs on ONNX Runtime as it is, whatever the backend:
    the file is the model (only asking int8 of an fp32 file is an error). A model that is not a
    checkpoint's network (a TorchScript file, a test's stand-in) runs on torch when the backend was
    only the default (explicit=False: "auto"), and is an error when ONNX was asked for. A torch
    model is prepared in place (prepare_torch_model), so `loaded.model` is the module that runs."""
    if isinstance(loaded.model, OnnxModel):
        if backend == "onnx-int8" and not loaded.model.int8:
            raise UserError(
                f"{loaded.path} is an fp32 ONNX file: give the checkpoint for --backend onnx-int8 "
                f"(or export one with `emokp export --format onnx-int8`)"
            )
        return OnnxRunner(loaded.model, threads)
    model = prepare_torch_model(loaded.model, device)
    registered = network_of_module(model)  # a registered network's module (models/registry.py)
    exportable = registered is not None and registered.onnx
    if backend == "torch" or (not exportable and not explicit):
        return TorchRunner(model, device)
    if not exportable:
        raise UserError(
            f"{loaded.path}: --backend {backend} needs a checkpoint (or an .onnx export), "
            f"not {type(loaded.model).__name__}"
        )
    return OnnxRunner(onnx_model_for(loaded, int8=backend == "onnx-int8"), threads)


def run_model(runner: Runner, crops: np.ndarray, max_batch: int = MAX_BATCH) -> np.ndarray:
    """The forward loop: uint8 crops [N, S, S] -> the runner's outputs float32 [N, K], `max_batch`
    crops per call (the same answers as one call: a model in eval mode treats crops independently)."""
    if len(crops) <= max_batch:
        return runner(crops)
    return np.concatenate([runner(crops[lo : lo + max_batch]) for lo in range(0, len(crops), max_batch)])
