"""ONNX, all of it: a checkpoint's network exported to ONNX, read back, quantized to int8, and run
on ONNX Runtime (CPU), with the export-once cache the ONNX backends use.

    export     `onnx_bytes`: torch's TorchScript-based exporter (opset 17; 5x faster here than
               torch.export's, 2.3 s against 10-15 s on the tiny test model, and export happens at
               every first load of a checkpoint with --backend onnx). Input "image": raw uint8 pixels
               [batch, 1, S, S]; output "output" float32 [batch, K]. The checkpoint's meta JSON is in
               metadata_props["emokp_meta"], the weights' version in ["emokp_weights_version"];
               checked on export against the model in ONNX Runtime (ONNX_TOLERANCE).
    load       `read_onnx_bytes` / `load_onnx`: an emokp export read back (fp32 or int8) as an
               OnnxModel with its meta; graph and meta must agree. An ONNX graph is data, not code:
               it runs only ONNX Runtime's own operators.
    quantize   `quantize_int8`: static quantization (QDQ; int8 weights per output channel, uint8
               activations) calibrated on CALIBRATION_FACES synthetic faces; an emotion model's first
               convolution and head stay fp32 (`fp32_nodes`); marked ["emokp_int8"] = "true".
    run        `OnnxModel` (the graph, what `LoadedCheckpoint.model` holds for an .onnx file) and
               `OnnxRunner` (a CPU InferenceSession: uint8 crops [N, S, S] -> float32 [N, K]).
    cache      `onnx_model_for`: a checkpoint's ONNX form, exported once per machine. Cached in this
               process and on disk under EMOKP_CACHE_DIR (default ~/.cache/emokp), in onnx/<key>.onnx
               where key is the SHA-256 of the model's weights, its meta and the exporter's settings:
               Serve replicas and labeling actors that load the same checkpoint on one machine export
               it once, and a changed checkpoint can never hit a stale file. An unwritable cache
               folder only costs the re-export.

Needs the `onnx` extra (onnx builds and checks graphs, onnxruntime runs and quantizes them); both are
imported only inside the functions that use them, so importing this module costs neither.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emokp_ray.artifacts.checkpoint import CheckpointMeta, LoadedCheckpoint, example_input, weights_version
from emokp_ray.errors import UserError
from emokp_ray.storage import write_file
from emokp_ray.tasks import task_spec

ONNX_META_KEY = "emokp_meta"  # metadata_props key holding the meta JSON
ONNX_VERSION_KEY = "emokp_weights_version"  # ... the source weights' checkpoint.weights_version
ONNX_INT8_KEY = "emokp_int8"  # ... "true" in a quantized graph
ONNX_OPSET = 17
# ONNX Runtime fp32 against eager torch, max |difference| (keypoint pixels or logits): measured
# <= 8e-6 px on the course keypoint net and <= 4e-7 on emotion logits at batch 1 and 32.
ONNX_TOLERANCE = 1e-3
CALIBRATION_FACES = 128  # synthetic faces whose activations set the int8 ranges
CALIBRATION_SEED = 20261202
CACHE_FORMAT = "emokp-onnx-2"  # bump when the export or quantization recipe changes: new cache keys


# --------------------------------------------------------------------------------------------------
# Installed or not
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


def require_onnx(what: str) -> None:
    """A one-line UserError naming `what` when the `onnx` extra is missing."""
    if not onnx_installed():
        raise UserError(
            f"{what} needs the onnx and onnxruntime packages: pip install 'emokp-ray[onnx]' "
            f"(or pip install onnx onnxruntime); --format torchscript needs nothing more"
        )


# --------------------------------------------------------------------------------------------------
# Running a graph
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def set_onnx_metadata(proto: Any, values: dict[str, str]) -> None:
    """Set (replace) metadata_props entries of an onnx ModelProto."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in keep + list(values.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def onnx_bytes(model: torch.nn.Module, meta: CheckpointMeta) -> bytes:
    """The eval-mode model as a serialized ONNX graph (batch dimension dynamic, uint8 input) with the
    meta and weights version in its metadata, checked in ONNX Runtime against the model."""
    require_onnx("ONNX export")
    import onnx

    model = model.eval()
    # The TorchScript-based exporter writes to a file object too; torch's annotation names only paths.
    buffer: Any = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The TorchScript-based exporter is deprecated (DeprecationWarning) and traces the Python
        # shape check in the model's input check (ResNet.normalize) as a constant (TracerWarning): right for this input size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        options: dict[str, Any] = dict(
            input_names=["image"],
            output_names=["output"],
            opset_version=ONNX_OPSET,
            dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}},
        )
        try:
            torch.onnx.export(model, (example_input(meta),), buffer, dynamo=False, **options)
        except TypeError:  # a torch without the dynamo switch exports this way by default
            torch.onnx.export(model, (example_input(meta),), buffer, **options)
    proto = onnx.load_from_string(buffer.getvalue())
    set_onnx_metadata(proto, {ONNX_META_KEY: meta.to_json(), ONNX_VERSION_KEY: weights_version(model)})
    data = proto.SerializeToString()
    check_onnx_outputs(model, meta, data)
    return data


def check_onnx_outputs(
    model: torch.nn.Module, meta: CheckpointMeta, data: bytes, tolerance: float = ONNX_TOLERANCE
) -> float:
    """Max |ONNX Runtime - torch| on a probe batch of 3 (eager torch on the CPU, as the torch backend
    runs it, against OnnxRunner); a RuntimeError past `tolerance`."""
    probe = example_input(meta, batch=3)  # uint8 [3, 1, S, S]
    with torch.inference_mode():
        expected = model(probe).float().numpy()
    got = OnnxRunner(OnnxModel(data=data, version=""))(probe[:, 0].numpy())
    gap = float(abs(got - expected).max())
    if not gap <= tolerance:
        raise RuntimeError(f"the ONNX graph differs from the model by {gap:.3g} (expected <= {tolerance})")
    return gap


def export_onnx(loaded: LoadedCheckpoint, int8: bool = False) -> bytes:
    """A checkpoint's network as a fresh ONNX file's bytes, fp32 or int8 (`emokp export`)."""
    data = onnx_bytes(loaded.model, loaded.meta)
    return quantize_int8(data, loaded.meta) if int8 else data


# --------------------------------------------------------------------------------------------------
# Reading an export back
# --------------------------------------------------------------------------------------------------


def read_onnx_bytes(data: bytes, expected: CheckpointMeta | None, where: Path) -> tuple[Any, CheckpointMeta]:
    """Parse an emokp ONNX export -> (OnnxModel, its meta). Refused with the reason (UserError) when
    it is not ONNX, has no emokp meta, or its graph disagrees with its meta (input size, channels,
    output width = the label scheme's classes or the keypoint names), or with `expected`."""
    import onnx

    try:
        proto = onnx.load_from_string(data)
    except Exception as err:
        raise UserError(
            f"{where} is not an ONNX file ({str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__})"
        ) from None
    if not proto.graph.node:
        raise UserError(f"{where} is not an ONNX model (no graph)")
    props = {p.key: p.value for p in proto.metadata_props}
    if ONNX_META_KEY not in props:
        raise UserError(f"{where} is ONNX without {ONNX_META_KEY}: not exported by emokp (no labels, no input size)")
    try:
        meta = CheckpointMeta.from_dict(json.loads(props[ONNX_META_KEY]))
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: its {ONNX_META_KEY} is not valid JSON ({err})") from None
    except UserError as err:
        raise UserError(f"{where}: {err}") from None

    def dims(value_info: Any) -> list[Any]:
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim
        ]

    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise UserError(
            f"{where}: an emokp graph has one input and one output, this one {len(proto.graph.input)} and {len(proto.graph.output)}"
        )
    size, chans, outputs = meta.input_size, meta.model_config.in_chans, meta.model_config.num_outputs
    shape_in, shape_out = dims(proto.graph.input[0]), dims(proto.graph.output[0])
    if len(shape_in) != 4 or shape_in[1:] != [chans, size, size]:
        raise UserError(
            f"{where}: its graph takes input {shape_in}, but its meta says [batch, {chans}, {size}, {size}] "
            f"(input_size {size}): the graph and its meta do not belong together; export it again"
        )
    if len(shape_out) != 2 or shape_out[1] != outputs:
        what = (
            f"{len(meta.keypoint_names)} keypoints (x, y each)"
            if task_spec(meta.task).coordinates
            else f"label scheme {meta.label_scheme} ({len(meta.class_names)} classes)"
        )
        raise UserError(
            f"{where}: its graph outputs {shape_out}, but its meta's {what} needs [batch, {outputs}]: "
            f"the graph and its meta do not belong together; export it again"
        )
    if expected is not None and expected.to_dict() != meta.to_dict():
        raise UserError(
            f"{where}: its meta differs from the checkpoint's (run {meta.run_id} against {expected.run_id})"
        )
    model = OnnxModel(data=data, version=props.get(ONNX_VERSION_KEY, ""), int8=props.get(ONNX_INT8_KEY) == "true")
    return model, meta


def load_onnx(path: str | os.PathLike) -> LoadedCheckpoint:
    """An emokp ONNX export read back (fp32 or int8): LoadedCheckpoint with an OnnxModel as its model."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"exported model {path} does not exist")
    if not path.is_file():
        raise UserError(f"exported model {path} is not a file")
    require_onnx(f"{path} (an ONNX file)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or err})") from None
    model, meta = read_onnx_bytes(data, None, path)
    return LoadedCheckpoint(model=model, meta=meta, path=path)


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


# --------------------------------------------------------------------------------------------------
# Export once: the cache
# --------------------------------------------------------------------------------------------------


_MEMORY: dict[str, OnnxModel] = {}
_LOCK = threading.RLock()  # re-entrant: the int8 export asks for the fp32 one inside


def cache_dir() -> Path:
    return Path(os.environ.get("EMOKP_CACHE_DIR") or Path.home() / ".cache" / "emokp") / "onnx"


def cache_key(loaded: LoadedCheckpoint, int8: bool) -> str:
    """SHA-256 over the weights (weights_version's digest), the meta and the recipe."""
    recipe = f"{CACHE_FORMAT};int8={int8};calibration={CALIBRATION_FACES}/{CALIBRATION_SEED};torch={torch.__version__}"
    digest = hashlib.sha256(f"{weights_version(loaded.model)};{loaded.meta.to_json()};{recipe}".encode())
    return digest.hexdigest()[:32]


def onnx_model_for(loaded: LoadedCheckpoint, int8: bool = False) -> OnnxModel:
    """The checkpoint's network as ONNX (fp32, or int8), from the memory or disk cache, else exported
    (and quantized) now and cached."""
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
