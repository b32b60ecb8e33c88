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

Export once: a checkpoint's ONNX form is cached in this process and on disk under EMOKP_CACHE_DIR
(default ~/.cache/emokp), in onnx/<key>.onnx where key is the SHA-256 of the model's weights, its
meta and the exporter's settings: Serve replicas and labeling actors that load the same checkpoint
on one machine export it once, and a changed checkpoint can never hit a stale file. An unwritable
cache folder only costs the re-export.

This module never imports ray; onnx / onnxruntime are imported only when an ONNX backend is asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from emokp_ray.artifacts.checkpoint import LoadedCheckpoint
from emokp_ray.artifacts.files import write_file
from emokp_ray.errors import UserError
from emokp_ray.models.registry import network_of_module
from emokp_ray.tasks import task_spec

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
ONNX_INSTALL_HINT = "pip install 'emokp-ray[onnx]' (onnx, onnxruntime), or use --backend torch"
CALIBRATION_FACES = 128  # synthetic faces whose activations set the int8 ranges
CALIBRATION_SEED = 20261202
CACHE_FORMAT = "emokp-onnx-2"  # bump when the export or quantization recipe changes: new cache keys
MAX_BATCH = 256  # crops per runner call in run_model (bounds activation memory; one call below it)


class Runner(Protocol):
    """A network behind one call: uint8 [N, S, S] raw crops -> float32 [N, K]."""

    backend: str  # "torch" | "onnx" | "onnx-int8"

    def __call__(self, crops: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------------
# Choosing a backend
# --------------------------------------------------------------------------------------------------


def _importable(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None  # None: import blocked (tests simulate a missing package)
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def onnx_installed() -> bool:
    """Whether the `onnx` extra is importable (onnx to build and check graphs, onnxruntime to run them)."""
    return _importable("onnxruntime") and _importable("onnx")


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


@dataclass(frozen=True, eq=False)
class OnnxModel:
    """An ONNX graph (serialized ModelProto) that computes a checkpoint's network: what
    `LoadedCheckpoint.model` holds for an exported .onnx file, and what the ONNX backends run.
    version: the source weights' `weights_version` (written at export), so answers name the same
    model whatever the backend."""

    data: bytes
    version: str
    int8: bool = False

    def session(self, threads: int | None = None) -> Any:
        """A CPU InferenceSession; threads: intra-op threads (None: torch's setting, which Serve and
        the labeling actors set from their CPU reservation), one inter-op thread."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only (no "removing initializer" chatter)
        return ort.InferenceSession(self.data, options, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """ONNX Runtime on one OnnxModel. The session is thread-safe (Serve runs two calls at once)."""

    def __init__(self, model: OnnxModel, threads: int | None = None):
        self.backend = "onnx-int8" if model.int8 else "onnx"
        self.session = model.session(threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(crops)[:, None]  # [N, 1, S, S] uint8, a view
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)


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


# --------------------------------------------------------------------------------------------------
# Export once: the cache
# --------------------------------------------------------------------------------------------------

_MEMORY: dict[str, OnnxModel] = {}
_LOCK = threading.RLock()  # re-entrant: the int8 export asks for the fp32 one inside


def cache_dir() -> Path:
    return Path(os.environ.get("EMOKP_CACHE_DIR") or Path.home() / ".cache" / "emokp") / "onnx"


def cache_key(loaded: LoadedCheckpoint, int8: bool) -> str:
    """SHA-256 over the weights (weights_version's digest), the meta and the recipe."""
    from emokp_ray.inference.predictor import weights_version

    recipe = f"{CACHE_FORMAT};int8={int8};calibration={CALIBRATION_FACES}/{CALIBRATION_SEED};torch={torch.__version__}"
    digest = hashlib.sha256(f"{weights_version(loaded.model)};{loaded.meta.to_json()};{recipe}".encode())
    return digest.hexdigest()[:32]


def onnx_model_for(loaded: LoadedCheckpoint, int8: bool = False) -> OnnxModel:
    """The checkpoint's network as ONNX (fp32, or int8), from the memory or disk cache, else exported
    (and quantized) now and cached."""
    from emokp_ray.artifacts.export import onnx_bytes, read_onnx_bytes
    from emokp_ray.inference.predictor import weights_version

    key = cache_key(loaded, int8)
    with _LOCK:  # one export at a time per process (Serve's threads, tests)
        if key in _MEMORY:
            return _MEMORY[key]
        file = cache_dir() / f"{key}-{'int8' if int8 else 'fp32'}.onnx"
        model = None
        if file.is_file():
            try:
                model = read_onnx_bytes(file.read_bytes(), loaded.meta, file)[0]
            except (UserError, OSError):
                model = None  # a damaged cache file: export again and overwrite it
        if model is None:
            fp32 = onnx_model_for(loaded, int8=False).data if int8 else onnx_bytes(loaded.model, loaded.meta)
            data = quantize_int8(fp32, loaded.meta) if int8 else fp32
            model = OnnxModel(data=data, version=weights_version(loaded.model), int8=int8)
            _write_cache(file, data)
        _MEMORY[key] = model
        return model


def _write_cache(file: Path, data: bytes) -> None:
    try:
        write_file(file, data)  # atomic: a concurrent reader sees the old file or the new one
    except OSError:
        pass  # read-only home: the export stays in memory only


# --------------------------------------------------------------------------------------------------
# int8: static quantization calibrated on synthetic faces
# --------------------------------------------------------------------------------------------------


def calibration_crops(input_size: int, n: int = CALIBRATION_FACES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """uint8 [n, S, S] synthetic faces (emokp's generator: Kaggle-framed, varied pose, light, blur and
    noise) resized to S by the training resize (data/resize.py): data-free calibration, the same on every machine."""
    from emokp_ray.data.resize import resize_images
    from emokp_ray.data.synth.crops import synthesize

    return resize_images(synthesize(n, seed=seed).images, input_size)


def fp32_nodes(graph: Any, task: str) -> list[str]:
    """The nodes int8 leaves in fp32: for an emotion model the first Conv (it sees the normalized
    pixels) and the head's Gemm; for a keypoint model none. Chosen on the VALIDATION splits of the
    three release models (a probe of ORT's options: MinMax / percentile / entropy calibration, 128 or
    512 faces, symmetric activations, excluded nodes): quantizing everything cost builtin:emotion 1.07
    and builtin:emotion-fer7 3.20 accuracy points, over the 0.5 bound; with these two kept fp32, 0.05
    and 0.28, and no speed lost at batch 32. builtin:keypoints keeps its RMSE either way (+0.030 px
    all int8, +0.027 with them fp32), but its first conv at 96x96 is where int8 gains: fp32 there made
    int8 slower than fp32 at batch 32. The test-split figures are benchmarks/int8_quality.py's."""
    return task_spec(task).int8_fp32_nodes(graph)


def quantize_int8(fp32: bytes, meta: Any, calibration: np.ndarray | None = None) -> bytes:
    """fp32 ONNX bytes -> statically quantized ONNX bytes (QDQ; int8 weights per output channel,
    uint8 activations; MinMax ranges over `calibration` crops uint8 [N, S, S], default synthetic).
    An emotion model's first convolution and head stay fp32 (fp32_nodes says why). The emokp meta stays
    in the metadata, marked int8."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from emokp_ray.artifacts.export import ONNX_INT8_KEY, set_onnx_metadata

    crops = calibration_crops(meta.input_size) if calibration is None else calibration
    if crops.ndim != 3 or crops.shape[1:] != (meta.input_size, meta.input_size) or crops.dtype != np.uint8:
        raise UserError(
            f"int8 calibration: expected uint8 [N, {meta.input_size}, {meta.input_size}] crops, got {crops.dtype} {list(crops.shape)}"
        )

    class Crops(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": crops[lo : lo + 16, None]} for lo in range(0, len(crops), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    # The quantizer logs one root-logger WARNING per BatchNorm that follows a max-pool (ConvBlock:
    # not foldable into its conv, so per-channel quantization skips its 1-D weight): expected here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with tempfile.TemporaryDirectory(prefix="emokp-int8-") as tmp:
            src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(fp32)
            quant_pre_process(str(src), str(pre))  # shape inference + folding, as ORT advises
            graph = onnx.load(str(pre)).graph
            quantize_static(
                str(pre),
                str(out),
                Crops(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=fp32_nodes(graph, meta.task),
            )
            proto = onnx.load(str(out))
    finally:
        root.setLevel(level)
    # The quantizer's rewrites do not promise to keep metadata_props: copy the source's over.
    source = {p.key: p.value for p in onnx.load_from_string(fp32).metadata_props}
    set_onnx_metadata(proto, {**source, ONNX_INT8_KEY: "true"})
    return proto.SerializeToString()
