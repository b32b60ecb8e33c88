"""Export a checkpoint for deployment, and load any form of a model for inference.

Formats (`export_checkpoint(..., fmt=...)`), each self-describing (the checkpoint's meta JSON inside):

    torchscript  one TorchScript file (torch.jit.trace of the eval-mode model), meta in the archive's
                 extra files as "meta.json"; loads with plain `torch.jit.load` anywhere (C++ too).
                 Input: raw grey pixels [B, 1, S, S] (any dtype, 0..255); output as the model's.
    onnx         ONNX (torch's TorchScript-based exporter, opset 17), meta JSON in the model's
                 metadata_props["emokp_meta"], the weights' version in ["emokp_weights_version"].
                 Input "image": raw uint8 pixels [batch, 1, S, S]; output "output" float32 [batch, K].
                 Checked on export against the model in ONNX Runtime (ONNX_TOLERANCE). Needs the
                 `onnx` extra (onnx, onnxruntime). The exporter is the TorchScript-based one because
                 it is 5x faster here (2.3 s against 10-15 s for torch.export's on the tiny test
                 model) and export happens at every first load of a checkpoint with --backend onnx.
    onnx-int8    the same graph statically quantized to int8 (backends.quantize_int8), marked
                 ["emokp_int8"] = "true".
    checkpoint   the project's own exported .pt (weights + meta, `save_checkpoint_file`), read by
                 `load_checkpoint` with weights_only=True.

`torch.jit.trace` is deprecated in torch 2.x (it warns in favour of torch.export) but still the format
most runtimes load; the warning is silenced here. The trace is checked by `test_export.py`: exported
and in-memory outputs agree to 1e-4.

`load_model(path)` is what the predictor uses: a .onnx file -> `load_onnx` (data, not code: an ONNX
graph runs only ONNX Runtime's own operators), a TorchScript file -> `load_exported`, anything else
(checkpoint dir, RUN_DIR, exported .pt) -> `load_checkpoint` (weights only: no optimizer state).
A checkpoint never runs code (`torch.load(weights_only=True)`). A TorchScript file IS code: its
serialized TorchScript program runs when the model is called, and PyTorch's security notes treat
`torch.jit.load` of an untrusted file like running an untrusted program. So a TorchScript file is
loaded only with `trust_torchscript=True` (`--trust-torchscript` on the command line,
`trust_torchscript: true` in the Serve app args); otherwise it is a one-line UserError.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from emokp_ray.artifacts.checkpoint import CheckpointMeta, LoadedCheckpoint, load_checkpoint, save_checkpoint_file
from emokp_ray.artifacts.files import write_file
from emokp_ray.errors import UserError
from emokp_ray.tasks import task_spec

FORMATS = ("torchscript", "onnx", "onnx-int8", "checkpoint")
META_EXTRA_FILE = "meta.json"  # TorchScript extra file holding the meta JSON
ONNX_META_KEY = "emokp_meta"  # ONNX metadata_props key holding the meta JSON
ONNX_VERSION_KEY = "emokp_weights_version"  # ... the source weights' predictor.weights_version
ONNX_INT8_KEY = "emokp_int8"  # ... "true" in a quantized graph
ONNX_OPSET = 17
# ONNX Runtime fp32 against eager torch, max |difference| (keypoint pixels or logits): measured
# <= 8e-6 px on the course keypoint net and <= 4e-7 on emotion logits at batch 1 and 32.
ONNX_TOLERANCE = 1e-3


def _example_input(meta: CheckpointMeta, batch: int = 2) -> torch.Tensor:
    """Raw uint8 pixels [batch, C, S, S], the predictor's input format."""
    size, chans = meta.input_size, meta.model_config.in_chans
    return torch.randint(
        0, 256, (batch, chans, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def _trace(model: torch.nn.Module, meta: CheckpointMeta) -> torch.jit.ScriptModule:
    """Trace the eval-mode model on uint8 input, then check it numerically on another batch size
    (torch's own check_trace re-traces and compares graphs: 2 s for the tiny test model; this is ms)."""
    model = model.eval()
    with warnings.catch_warnings():
        # The input-shape check in the model's input check (ResNet.normalize) is a Python condition (TracerWarning: recorded as
        # a constant, which is right: the traced graph is for this input size); trace is deprecated.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, _example_input(meta), check_trace=False)
    probe = _example_input(meta, batch=3)
    with torch.inference_mode():
        gap = (traced(probe) - model(probe)).abs().max().item()
    if not gap <= 1e-4:
        raise RuntimeError(f"the traced model differs from the model by {gap:.3g} (expected <= 1e-4)")
    return traced


def _torchscript_writer(loaded: LoadedCheckpoint) -> Callable[[Any], None]:
    """The traced model (traced now) as a function writing the TorchScript archive to a stream."""
    traced = _trace(loaded.model, loaded.meta)

    def write(stream: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(traced, stream, _extra_files={META_EXTRA_FILE: loaded.meta.to_json()})

    return write


def _require_onnx(what: str) -> None:
    from emokp_ray.inference.backends import onnx_installed

    if not onnx_installed():
        raise UserError(
            f"{what} needs the onnx and onnxruntime packages: pip install 'emokp-ray[onnx]' "
            f"(or pip install onnx onnxruntime); --format torchscript needs nothing more"
        )


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
    _require_onnx("ONNX export")
    import onnx

    from emokp_ray.inference.predictor import weights_version

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
            torch.onnx.export(model, (_example_input(meta),), buffer, dynamo=False, **options)
        except TypeError:  # a torch without the dynamo switch exports this way by default
            torch.onnx.export(model, (_example_input(meta),), buffer, **options)
    proto = onnx.load_from_string(buffer.getvalue())
    set_onnx_metadata(proto, {ONNX_META_KEY: meta.to_json(), ONNX_VERSION_KEY: weights_version(model)})
    data = proto.SerializeToString()
    check_onnx_outputs(model, meta, data)
    return data


def check_onnx_outputs(
    model: torch.nn.Module, meta: CheckpointMeta, data: bytes, tolerance: float = ONNX_TOLERANCE
) -> float:
    """Max |ONNX Runtime - torch| on a probe batch of 3 (the runners inference uses, on the CPU); a
    RuntimeError past `tolerance`."""
    from emokp_ray.inference.backends import OnnxModel, OnnxRunner, TorchRunner

    probe = _example_input(meta, batch=3)[:, 0].numpy()  # uint8 [3, S, S]
    expected = TorchRunner(model, torch.device("cpu"))(probe)
    got = OnnxRunner(OnnxModel(data=data, version=""))(probe)
    gap = float(abs(got - expected).max())
    if not gap <= tolerance:
        raise RuntimeError(f"the ONNX graph differs from the model by {gap:.3g} (expected <= {tolerance})")
    return gap


def _onnx_export(loaded: LoadedCheckpoint, int8: bool = False) -> bytes:
    from emokp_ray.inference.backends import quantize_int8

    data = onnx_bytes(loaded.model, loaded.meta)
    return quantize_int8(data, loaded.meta) if int8 else data


def read_onnx_bytes(data: bytes, expected: CheckpointMeta | None, where: Path) -> tuple[Any, CheckpointMeta]:
    """Parse an emokp ONNX export -> (OnnxModel, its meta). Refused with the reason (UserError) when
    it is not ONNX, has no emokp meta, or its graph disagrees with its meta (input size, channels,
    output width = the label scheme's classes or the keypoint names), or with `expected`."""
    import onnx

    from emokp_ray.inference.backends import OnnxModel

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
    _require_onnx(f"{path} (an ONNX file)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or err})") from None
    model, meta = read_onnx_bytes(data, None, path)
    return LoadedCheckpoint(model=model, meta=meta, path=path)


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "torchscript") -> Path:
    """Write `checkpoint` (dir, RUN_DIR or exported .pt) as one self-describing file `out` in `fmt`
    (torchscript | onnx | checkpoint), atomically. Returns the file's path; problems are UserErrors."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"export --out {out} is a directory; give a file name")
    loaded = load_checkpoint(checkpoint, map_location="cpu", training_state=False)
    if fmt == "checkpoint":
        try:
            return save_checkpoint_file(out, loaded.model, loaded.meta)
        except OSError as err:
            raise UserError(f"cannot write {out} ({err.strerror or err})") from None
    data = _torchscript_writer(loaded) if fmt == "torchscript" else _onnx_export(loaded, int8=fmt == "onnx-int8")
    try:
        write_file(out, data)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror or err})") from None
    return out


def is_torchscript_file(path: Path) -> bool:
    """A zip archive with TorchScript code inside (torch.jit.save), as opposed to a torch.save file."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


TRUST_HINT = (
    "TorchScript files are programs, not just weights: load one only if you trust its origin "
    "(--trust-torchscript; trust_torchscript: true in the Serve app args), or use the checkpoint "
    "it was exported from"
)


def load_exported(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", trust_torchscript: bool = False
) -> LoadedCheckpoint:
    """A TorchScript export read back: the scripted model (eval mode) with its embedded meta.
    Refused (UserError) unless `trust_torchscript`: the file's code runs in this process."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"exported model {path} does not exist")
    if not path.is_file():
        raise UserError(f"exported model {path} is not a file")
    if not is_torchscript_file(path):
        raise UserError(f"{path} is not a TorchScript file (export one with `emokp export --format torchscript`)")
    if not trust_torchscript:
        raise UserError(f"{path} is a TorchScript file and was not loaded: {TRUST_HINT}")
    extra = {META_EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as err:
        text = str(err).strip()
        raise UserError(
            f"{path} could not be loaded as TorchScript ({(text.splitlines()[0] if text else type(err).__name__)[:200]})"
        ) from None
    if not extra[META_EXTRA_FILE]:
        raise UserError(
            f"{path} is TorchScript without {META_EXTRA_FILE}: not exported by emokp (no labels, no input size)"
        )
    try:
        raw = json.loads(extra[META_EXTRA_FILE])
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: its {META_EXTRA_FILE} is not valid JSON ({err})") from None
    try:
        meta = CheckpointMeta.from_dict(raw)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    return LoadedCheckpoint(model=module.eval(), meta=meta, path=path)


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", trust_torchscript: bool = False
) -> LoadedCheckpoint:
    """Any model form for inference: TorchScript export (only with `trust_torchscript`), exported .pt,
    checkpoint dir or RUN_DIR. Weights only: optimizer and scheduler states are never read."""
    candidate = Path(path)
    if candidate.suffix.lower() == ".onnx":
        return load_onnx(candidate)
    if candidate.is_file() and is_torchscript_file(candidate):
        return load_exported(candidate, map_location, trust_torchscript=trust_torchscript)
    return load_checkpoint(candidate, map_location=map_location, training_state=False)
