"""Export: TorchScript files that describe themselves and compute what the in-memory model computes."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from emokp_ray.checkpoint import load_checkpoint
from emokp_ray.errors import UserError
from emokp_ray.inference.export import export_checkpoint, load_exported, load_model
from emokp_ray.inference.predictor import Predictor
from tests.helpers import write_tiny_checkpoints

# torch 2.x deprecates torch.jit (in favour of torch.export) but still reads and writes it.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("exported")
    return (
        export_checkpoint(str(tiny[0]), str(out / "keypoints.ts"), fmt="torchscript"),
        export_checkpoint(str(tiny[1]), str(out / "emotion.ts")),
    )


@pytest.mark.parametrize("which", [0, 1], ids=["keypoints", "emotion"])
def test_torchscript_export_matches_the_model(tiny, exported, which):
    original = load_checkpoint(tiny[which])
    loaded = load_exported(exported[which], trust_torchscript=True)
    assert isinstance(loaded.model, torch.jit.ScriptModule)
    assert loaded.meta.to_dict() == original.meta.to_dict()          # self-describing
    size = original.meta.input_size
    x = torch.randint(0, 256, (5, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = original.model(x)
        got = loaded.model(x)
        got_float = loaded.model(x.float())                          # any dtype of raw pixels
    assert got.shape == expected.shape == (5, original.meta.model_config.num_outputs)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)
    assert torch.allclose(got_float, expected, atol=1e-4, rtol=0)


def test_torchscript_file_is_a_plain_torch_jit_archive(exported):
    extra = {"meta.json": ""}
    module = torch.jit.load(str(exported[1]), _extra_files=extra)   # no emokp code needed to run it
    assert b'"task": "emotion"' in extra["meta.json"] and module(torch.zeros(1, 1, 48, 48)).shape == (1, 5)


def test_predictor_from_exported_files_matches_checkpoints(tiny, exported):
    crops = np.random.default_rng(2).integers(0, 256, (3, 96, 96), dtype=np.uint8)
    dirs = Predictor.from_paths(str(tiny[0]), str(tiny[1]), device="cpu", detect=False)
    from_files = Predictor.from_paths(str(exported[0]), str(exported[1]), device="cpu", detect=False, trust_torchscript=True)
    # The same weights are the same version, whatever the file format; no path is named.
    assert from_files.model_info() == dirs.model_info()
    for a, b in zip(dirs.predict_crops(crops), from_files.predict_crops(crops)):
        assert a.emotion == b.emotion
        assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
        assert np.allclose(np.array(list(a.keypoints.values())), np.array(list(b.keypoints.values())), atol=1e-3)


def test_checkpoint_format_is_read_by_load_checkpoint(tiny, tmp_path):
    path = export_checkpoint(str(tiny[1]), str(tmp_path / "emotion.pt"), fmt="checkpoint")
    loaded = load_model(path)
    assert loaded.meta.run_id == "tiny-emotion" and not isinstance(loaded.model, torch.jit.ScriptModule)


def test_export_errors_are_one_line_user_errors(tiny, tmp_path):
    cases = [
        (lambda: export_checkpoint(str(tiny[0]), str(tmp_path / "m.bin"), fmt="tflite"), "unknown export format"),
        (lambda: export_checkpoint(str(tmp_path / "missing"), str(tmp_path / "m.ts")), "does not exist"),
        (lambda: export_checkpoint(str(tiny[0]), str(tmp_path)), "is a directory"),
    ]
    for call, fragment in cases:
        with pytest.raises(UserError) as err:
            call()
        assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.glob(".*tmp*"))                          # nothing half-written left


def test_load_exported_errors(tiny, tmp_path):
    text = tmp_path / "notes.ts"
    text.write_text("not a model")
    plain_pt = export_checkpoint(str(tiny[0]), str(tmp_path / "k.pt"), fmt="checkpoint")
    bare = tmp_path / "bare.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(bare))   # TorchScript without meta.json
    for path, fragment in [
        (tmp_path / "missing.ts", "does not exist"),
        (tmp_path, "is not a file"),
        (text, "is not a TorchScript file"),
        (plain_pt, "is not a TorchScript file"),
        (bare, "without meta.json"),
    ]:
        with pytest.raises(UserError) as err:
            load_exported(path, trust_torchscript=True)
        assert fragment in str(err.value) and "\n" not in str(err.value)
    broken = tmp_path / "broken.ts"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("model/code/__torch__.py", "garbage")
    with pytest.raises(UserError, match="could not be loaded as TorchScript"):
        load_exported(broken, trust_torchscript=True)


def test_torchscript_is_loaded_only_when_trusted(exported):
    # A TorchScript file is a program: without the explicit trust flag it is refused before
    # torch.jit.load runs anything, in one line that says what to do.
    for load in (load_exported, load_model):
        with pytest.raises(UserError) as err:
            load(exported[0])
        assert "--trust-torchscript" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="trust-torchscript"):
        Predictor.from_paths(str(exported[0]), None, device="cpu", detect=False)
    assert isinstance(load_model(exported[0], trust_torchscript=True).model, torch.jit.ScriptModule)


def test_inference_loads_no_optimizer_state(tiny, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny[0], ckpt)
    (ckpt / "optimizer.pt").write_bytes(b"PK\x03\x04 not a real archive")   # read -> an error
    assert load_model(ckpt).optimizer_state is None                 # never opened
    with pytest.raises(UserError, match="optimizer.pt"):
        load_checkpoint(ckpt)                                       # resume reads it (and refuses it)


def test_onnx_needs_the_onnx_package(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match="pip install onnx"):
        export_checkpoint(str(tiny[1]), str(tmp_path / "emotion.onnx"), fmt="onnx")
    assert not (tmp_path / "emotion.onnx").exists()


def test_onnx_export_when_available(tiny, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    path = export_checkpoint(str(tiny[1]), str(tmp_path / "emotion.onnx"), fmt="onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert '"task": "emotion"' in props["emokp_meta"]
