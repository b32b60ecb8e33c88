"""Export: TorchScript files that describe themselves and compute what the in-memory model computes."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from emokp_ray.artifacts.checkpoint import load_checkpoint
from emokp_ray.artifacts.export import export_checkpoint, load_exported, load_model
from emokp_ray.errors import UserError
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
    assert loaded.meta.to_dict() == original.meta.to_dict()  # self-describing
    size = original.meta.input_size
    x = torch.randint(0, 256, (5, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = original.model(x)
        got = loaded.model(x)
        got_float = loaded.model(x.float())  # any dtype of raw pixels
    assert got.shape == expected.shape == (5, original.meta.model_config.num_outputs)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)
    assert torch.allclose(got_float, expected, atol=1e-4, rtol=0)


def test_torchscript_file_is_a_plain_torch_jit_archive(exported):
    extra = {"meta.json": ""}
    module = torch.jit.load(str(exported[1]), _extra_files=extra)  # no emokp code needed to run it
    assert b'"task": "emotion"' in extra["meta.json"] and module(torch.zeros(1, 1, 48, 48)).shape == (1, 5)


def test_predictor_from_exported_files_matches_checkpoints(tiny, exported):
    crops = np.random.default_rng(2).integers(0, 256, (3, 96, 96), dtype=np.uint8)
    dirs = Predictor.from_paths(str(tiny[0]), str(tiny[1]), device="cpu", detect=False)
    from_files = Predictor.from_paths(
        str(exported[0]), str(exported[1]), device="cpu", detect=False, trust_torchscript=True
    )
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
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left


def test_load_exported_errors(tiny, tmp_path):
    text = tmp_path / "notes.ts"
    text.write_text("not a model")
    plain_pt = export_checkpoint(str(tiny[0]), str(tmp_path / "k.pt"), fmt="checkpoint")
    bare = tmp_path / "bare.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(bare))  # TorchScript without meta.json
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
    (ckpt / "optimizer.pt").write_bytes(b"PK\x03\x04 not a real archive")  # read -> an error
    assert load_model(ckpt).optimizer_state is None  # never opened
    with pytest.raises(UserError, match="optimizer.pt"):
        load_checkpoint(ckpt)  # resume reads it (and refuses it)


def test_onnx_needs_the_onnx_package(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match=r"pip install 'emokp-ray\[onnx\]'") as err:
        export_checkpoint(str(tiny[1]), str(tmp_path / "emotion.onnx"), fmt="onnx")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "emotion.onnx").exists()


# --------------------------------------------------------------------------------------------------
# ONNX (the `onnx` extra, in dev: these run in CI)
# --------------------------------------------------------------------------------------------------


def _randomized(cfg) -> torch.nn.Module:
    """A variant with random weights AND non-trivial BatchNorm statistics and head (the keypoint
    head starts at zero, which would make every output the crop centre and hide any mismatch)."""
    from emokp_ray.models.resnet import build_model

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        torch.nn.init.normal_(model.head[-1].weight, std=0.02)
        torch.nn.init.normal_(model.head[-1].bias, std=0.1)
    return model


@pytest.mark.parametrize(
    "task,variant",
    [
        ("keypoints", "course"),
        ("keypoints", "wide"),
        ("keypoints", "small"),
        ("emotion", "course"),
        ("emotion", "wide"),
        ("emotion", "small"),
    ],
)
def test_onnx_export_matches_every_variant_at_batch_1_and_32(task, variant):
    # The stated tolerance (onnx.ONNX_TOLERANCE = 1e-3: keypoint pixels, emotion logits) holds for
    # every variant at the two batch sizes Serve and labeling use.
    pytest.importorskip("onnxruntime")
    from emokp_ray.artifacts.checkpoint import CheckpointMeta
    from emokp_ray.models.resnet import model_config

    cfg = model_config(task, variant)
    _assert_onnx_matches(_randomized(cfg), CheckpointMeta(model_config=cfg, run_id=f"{task}-{variant}"))


def _assert_onnx_matches(model: torch.nn.Module, meta) -> None:
    """ONNX Runtime on the exported graph == the model within onnx.ONNX_TOLERANCE at batch 1 and 32."""
    from emokp_ray.artifacts.onnx import ONNX_TOLERANCE, OnnxModel, OnnxRunner, onnx_bytes

    cfg = meta.model_config
    runner = OnnxRunner(OnnxModel(onnx_bytes(model, meta), version="x"))
    for batch in (1, 32):
        crops = np.random.default_rng(batch).integers(0, 256, (batch, cfg.input_size, cfg.input_size), dtype=np.uint8)
        with torch.inference_mode():
            expected = model(torch.from_numpy(crops).unsqueeze(1)).float().numpy()
        got = runner(crops)
        assert got.shape == expected.shape == (batch, cfg.num_outputs) and got.dtype == np.float32
        if batch > 1:
            assert np.std(expected[:, 0]) > 0  # the outputs depend on the input
        assert np.abs(got - expected).max() <= ONNX_TOLERANCE


@pytest.mark.parametrize("name", ["keypoints", "emotion", "emotion-fer7"])
def test_onnx_export_matches_each_shipped_model(name):
    pytest.importorskip("onnxruntime")
    from emokp_ray.builtin import FOLDER

    if not (FOLDER / f"{name}.pt").is_file():
        pytest.skip(f"builtin:{name} is not in this checkout")
    loaded = load_model(f"builtin:{name}")
    _assert_onnx_matches(loaded.model.float().eval(), loaded.meta)


@pytest.fixture(scope="module")
def onnx_files(tiny, tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("onnx")
    return (
        export_checkpoint(str(tiny[0]), str(out / "keypoints.onnx"), fmt="onnx"),
        export_checkpoint(str(tiny[1]), str(out / "emotion.onnx"), fmt="onnx"),
    )


def test_onnx_file_describes_itself_and_predicts_like_the_checkpoint(tiny, onnx_files):
    import onnx

    from emokp_ray.artifacts.onnx import load_onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_files[1])).metadata_props}
    assert '"task": "emotion"' in props["emokp_meta"]
    for ckpt, file in zip(tiny, onnx_files):
        assert load_onnx(file).meta.to_dict() == load_checkpoint(ckpt).meta.to_dict()
    crops = np.random.default_rng(3).integers(0, 256, (4, 96, 96), dtype=np.uint8)
    dirs = Predictor.from_paths(str(tiny[0]), str(tiny[1]), device="cpu", detect=False, backend="torch")
    files = Predictor.from_paths(str(onnx_files[0]), str(onnx_files[1]), device="cpu", detect=False)
    assert files.model_info() == dirs.model_info()  # same run ids and weights versions
    assert {r.backend for r in files.runners.values()} == {"onnx"}  # a .onnx file runs on ONNX Runtime
    for a, b in zip(dirs.predict_crops(crops), files.predict_crops(crops)):
        assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
        assert np.allclose(np.array(list(a.keypoints.values())), np.array(list(b.keypoints.values())), atol=1e-3)


def test_serve_checks_each_model_as_its_replicas_load_it(tiny, exported, onnx_files):
    # `emokp serve` checks its models before Ray starts with the loader the replicas use
    # (export.load_model): an .onnx export is served, a model of the other task is one line.
    from emokp_ray.serving.run import _check_model

    _check_model("keypoints", str(onnx_files[0]), trust_torchscript=False)
    _check_model("emotion", str(tiny[1]), trust_torchscript=False)
    _check_model("keypoints", str(exported[0]), trust_torchscript=True)
    with pytest.raises(UserError, match=r"^serve: --emotion .* is a keypoints checkpoint$"):
        _check_model("emotion", str(onnx_files[0]), trust_torchscript=False)
    with pytest.raises(UserError, match=r"^serve: --keypoints .*--trust-torchscript"):
        _check_model("keypoints", str(exported[0]), trust_torchscript=False)


def test_onnx_int8_export_is_quantized_and_close(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from emokp_ray.artifacts.onnx import load_onnx

    fp32 = load_onnx(export_checkpoint(str(tiny[0]), str(tmp_path / "k.onnx"), fmt="onnx"))
    int8 = load_onnx(export_checkpoint(str(tiny[0]), str(tmp_path / "k8.onnx"), fmt="onnx-int8"))
    ops = {node.op_type for node in onnx.load(str(tmp_path / "k8.onnx")).graph.node}
    assert int8.model.int8 and not fp32.model.int8 and {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8.model.version == fp32.model.version and int8.meta.to_dict() == fp32.meta.to_dict()
    predictors = [Predictor(m, None, backend="onnx-int8" if m is int8 else "onnx") for m in (fp32, int8)]
    assert predictors[1].runners["keypoints"].backend == "onnx-int8"
    crops = np.random.default_rng(4).integers(0, 256, (8, 96, 96), dtype=np.uint8)
    a, b = (np.array([list(f.keypoints.values()) for f in p.predict_crops(crops)]) for p in predictors)
    assert np.abs(a - b).max() < 2.0  # quantized: close (the tiny net's head starts at 0)
    with pytest.raises(UserError, match="fp32 ONNX file"):
        Predictor(fp32, None, backend="onnx-int8")


def _rewrite_meta(src: Path, dst: Path, **changes) -> Path:
    import json

    import onnx

    from emokp_ray.artifacts.onnx import ONNX_META_KEY, set_onnx_metadata

    proto = onnx.load(str(src))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[ONNX_META_KEY])
    for key, value in changes.items():
        meta["model_config"][key] = value
        if key in meta:
            meta[key] = value
    if "num_outputs" in changes and meta["task"] == "emotion":
        meta["label_scheme"], meta["class_names"] = "fer7", []
    set_onnx_metadata(proto, {ONNX_META_KEY: json.dumps(meta)})
    onnx.save(proto, str(dst))
    return dst


def test_onnx_files_that_do_not_match_their_meta_are_refused(onnx_files, tmp_path):
    import onnx

    from emokp_ray.artifacts.onnx import load_onnx

    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(onnx_files[1]))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    cases = [
        (tmp_path / "missing.onnx", "does not exist"),
        (text, "is not an ONNX"),
        (bare, "not exported by emokp"),
        # a 48 px emotion graph whose meta claims 96 px crops
        (_rewrite_meta(onnx_files[1], tmp_path / "size.onnx", input_size=96), "takes input ['batch', 1, 48, 48]"),
        # a 5-class graph whose meta claims the 7-class fer7 scheme
        (_rewrite_meta(onnx_files[1], tmp_path / "scheme.onnx", num_outputs=7), "label scheme fer7 (7 classes)"),
    ]
    for path, fragment in cases:
        with pytest.raises(UserError) as err:
            load_model(path)
        assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(UserError, match="is an? emotion checkpoint, given as the keypoints model"):
        Predictor.from_paths(str(onnx_files[1]), None, device="cpu", detect=False)
    assert load_onnx(onnx_files[0]).meta.task == "keypoints"
