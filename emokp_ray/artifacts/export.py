"""Export a checkpoint for deployment, and load any form of a model for inference.

Formats (`export_checkpoint(..., fmt=...)`), each self-describing (the checkpoint's meta JSON inside):

    torchscript  one TorchScript file (torch.jit.trace of the eval-mode model), meta in the archive's
                 extra files as "meta.json"; loads with plain `torch.jit.load` anywhere (C++ too).
                 Input: raw grey pixels [B, 1, S, S] (any dtype, 0..255); output as the model's.
    onnx         ONNX, fp32 (artifacts/onnx.py: the graph, its metadata and the check against
                 the model). Needs the `onnx` extra (onnx, onnxruntime).
    onnx-int8    the same graph statically quantized to int8 (onnx.quantize_int8), marked
                 ["emokp_int8"] = "true".
    checkpoint   the project's own exported .pt (weights + meta, `save_checkpoint_file`), read by
                 `load_checkpoint` with weights_only=True.

`torch.jit.trace` is deprecated in torch 2.x (it warns in favour of torch.export) but still the format
most runtimes load; the warning is silenced here. The trace is checked by `test_export.py`: exported
and in-memory outputs agree to 1e-4.

`load_model(path)` is what the predictor uses: a .onnx file -> `onnx.load_onnx` (data, not code: an
ONNX graph runs only ONNX Runtime's own operators), a TorchScript file -> `load_exported`, anything else
(checkpoint dir, RUN_DIR, exported .pt) -> `load_checkpoint` (weights only: no optimizer state).
A checkpoint never runs code (`torch.load(weights_only=True)`). A TorchScript file IS code: its
serialized TorchScript program runs when the model is called, and PyTorch's security notes treat
`torch.jit.load` of an untrusted file like running an untrusted program. So a TorchScript file is
loaded only with `trust_torchscript=True` (`--trust-torchscript` on the command line,
`trust_torchscript: true` in the Serve app args); otherwise it is a one-line UserError.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from emokp_ray.artifacts.checkpoint import (
    CheckpointMeta,
    LoadedCheckpoint,
    example_input,
    load_checkpoint,
    save_checkpoint_file,
)
from emokp_ray.artifacts.onnx import export_onnx, load_onnx
from emokp_ray.errors import UserError
from emokp_ray.storage import write_file

FORMATS = ("torchscript", "onnx", "onnx-int8", "checkpoint")
META_EXTRA_FILE = "meta.json"  # TorchScript extra file holding the meta JSON


def _trace(model: torch.nn.Module, meta: CheckpointMeta) -> torch.jit.ScriptModule:
    """Trace the eval-mode model on uint8 input, then check it numerically on another batch size
    (torch's own check_trace re-traces and compares graphs: 2 s for the tiny test model; this is ms)."""
    model = model.eval()
    with warnings.catch_warnings():
        # The input-shape check in the model's input check (ResNet.normalize) is a Python condition (TracerWarning: recorded as
        # a constant, which is right: the traced graph is for this input size); trace is deprecated.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, example_input(meta), check_trace=False)
    probe = example_input(meta, batch=3)
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


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "torchscript") -> Path:
    """Write `checkpoint` (dir, RUN_DIR or exported .pt) as one self-describing file `out` in `fmt`
    (torchscript | onnx | onnx-int8 | checkpoint), atomically. Returns the file's path; problems are UserErrors."""
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
    data = _torchscript_writer(loaded) if fmt == "torchscript" else export_onnx(loaded, int8=fmt == "onnx-int8")
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
