"""Backends: torch and ONNX Runtime give the same faces, emotions and keypoints; ONNX exports once
(memory, then disk cache); a missing extra or a mismatched file is a one-line error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from emokp_ray.artifacts import onnx as emokp_onnx
from emokp_ray.errors import UserError
from emokp_ray.inference import backends
from emokp_ray.inference.predictor import Predictor
from tests.fake_detector import HalvesDetector
from tests.helpers import write_tiny_checkpoints

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own empty ONNX cache (disk and memory)."""
    monkeypatch.setenv("EMOKP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(emokp_onnx, "_MEMORY", {})


def photos() -> list[np.ndarray]:
    """Grey and colour photos of noise and gradients: the fake detector finds two faces in each."""
    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, (180, 260), dtype=np.uint8)
    yy, xx = np.mgrid[0:150, 0:200]
    colour = np.stack([(xx + yy) % 256, (2 * xx) % 256, (3 * yy) % 256], axis=2).astype(np.uint8)
    return [grey, colour]


def faces(predictor: Predictor, images: list[np.ndarray]) -> list:
    return [face for result in predictor.predict(images, mode="detect") for face in result.faces]


def test_torch_and_onnx_give_the_same_faces_emotions_and_keypoints(tiny):
    images = photos()
    by_backend = {
        name: Predictor.from_paths(str(tiny[0]), str(tiny[1]), device="cpu", detect=False, backend=name)
        for name in ("torch", "onnx")
    }
    for name, predictor in by_backend.items():
        predictor._detector = HalvesDetector()
        assert {r.backend for r in predictor.runners.values()} == {name}
    torch_faces, onnx_faces = (faces(p, images) for p in by_backend.values())
    assert len(torch_faces) == len(onnx_faces) == 4
    for a, b in zip(torch_faces, onnx_faces):
        assert a.box == b.box  # detection and framing: identical
        probs_a, probs_b = np.array(list(a.probabilities.values())), np.array(list(b.probabilities.values()))
        assert np.abs(probs_a - probs_b).max() < 1e-5
        top2 = np.sort(probs_a)[-2:]
        if top2[1] - top2[0] > 1e-4:  # a clear winner: the same emotion
            assert a.emotion == b.emotion
        kp_a, kp_b = np.array(list(a.keypoints.values())), np.array(list(b.keypoints.values()))
        assert list(a.keypoints) == list(b.keypoints) and np.abs(kp_a - kp_b).max() < 1e-3
    info = [p.model_info() for p in by_backend.values()]
    assert info[0] == info[1]  # the same models, by weights version


def test_auto_is_onnx_on_cpu_where_installed_else_torch(tiny, monkeypatch):
    assert backends.resolve_backend("auto", "cpu") == "onnx"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert backends.resolve_backend("auto", "cpu") == "torch"
    predictor = Predictor.from_paths(None, str(tiny[1]), device="cpu", detect=False, backend="auto")
    assert predictor.backend == "torch" and predictor.runners["emotion"].backend == "torch"


def test_onnx_backend_without_the_extra_says_how_to_install_it(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    for name in ("onnx", "onnx-int8"):
        with pytest.raises(UserError) as err:
            Predictor.from_paths(str(tiny[0]), None, device="cpu", detect=False, backend=name)
        message = str(err.value)
        assert f"--backend {name} needs ONNX Runtime" in message and "pip install 'emokp-ray[onnx]'" in message
        assert "\n" not in message
    with pytest.raises(UserError, match="unknown backend 'tensorrt'"):
        backends.resolve_backend("tensorrt")


def test_a_checkpoint_is_exported_once_then_read_from_the_cache(tiny, monkeypatch, tmp_path):
    crops = np.random.default_rng(1).integers(0, 256, (3, 96, 96), dtype=np.uint8)
    first = Predictor.from_paths(str(tiny[0]), None, device="cpu", detect=False, backend="onnx").predict_crops(crops)
    cached = list((tmp_path / "cache" / "onnx").glob("*-fp32.onnx"))
    assert len(cached) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(emokp_onnx, "onnx_bytes", no_export)
    again = Predictor.from_paths(str(tiny[0]), None, device="cpu", detect=False, backend="onnx")  # memory
    monkeypatch.setattr(emokp_onnx, "_MEMORY", {})
    from_disk = Predictor.from_paths(str(tiny[0]), None, device="cpu", detect=False, backend="onnx")
    for predictor in (again, from_disk):
        assert [f.keypoints for f in predictor.predict_crops(crops)] == [f.keypoints for f in first]
    # A damaged cache file is exported again (and replaced), not trusted.
    monkeypatch.undo()
    monkeypatch.setenv("EMOKP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(emokp_onnx, "_MEMORY", {})
    cached[0].write_bytes(b"garbage")
    redone = Predictor.from_paths(str(tiny[0]), None, device="cpu", detect=False, backend="onnx")
    assert [f.keypoints for f in redone.predict_crops(crops)] == [f.keypoints for f in first]
    assert cached[0].stat().st_size > 1000


def test_an_unwritable_cache_costs_only_the_export(tiny, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EMOKP_CACHE_DIR", str(blocker))  # mkdir under a file fails
    predictor = Predictor.from_paths(None, str(tiny[1]), device="cpu", detect=False, backend="onnx")
    assert len(predictor.predict_crops(np.zeros((1, 48, 48), np.uint8))) == 1


def test_int8_backend_quantizes_a_checkpoint(tiny):
    crops = np.random.default_rng(2).integers(0, 256, (6, 96, 96), dtype=np.uint8)
    fp32 = Predictor.from_paths(str(tiny[0]), str(tiny[1]), device="cpu", detect=False, backend="onnx")
    int8 = Predictor.from_paths(str(tiny[0]), str(tiny[1]), device="cpu", detect=False, backend="onnx-int8")
    assert {r.backend for r in int8.runners.values()} == {"onnx-int8"}
    for a, b in zip(fp32.predict_crops(crops), int8.predict_crops(crops)):
        kp_a, kp_b = np.array(list(a.keypoints.values())), np.array(list(b.keypoints.values()))
        assert np.abs(kp_a - kp_b).max() < 2.0  # quantized: close, not equal
        assert abs(sum(b.probabilities.values()) - 1) < 1e-6
    assert fp32.model_info() == int8.model_info()


def test_int8_keeps_an_emotion_models_first_convolution_and_head_in_fp32(tiny):
    import onnx

    from emokp_ray.artifacts.export import load_model

    def int8_graph(path):
        """The int8 graph of a checkpoint, and the tensors its DequantizeLinear nodes produce."""
        graph = onnx.load_from_string(emokp_onnx.onnx_model_for(load_model(str(path)), int8=True).data).graph
        return graph, {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}

    graph, dequantized = int8_graph(tiny[1])
    convs = [node for node in graph.node if node.op_type == "Conv"]
    heads = [node for node in graph.node if node.op_type == "Gemm"]
    assert len(convs) > 2 and heads
    # A quantized node reads its weight (input 1) from a DequantizeLinear; an fp32 one from an initializer.
    assert [conv.input[1] in dequantized for conv in convs] == [False] + [True] * (len(convs) - 1)
    assert not any(head.input[1] in dequantized for head in heads)
    # A keypoint model is quantized whole.
    graph, dequantized = int8_graph(tiny[0])
    assert all(node.input[1] in dequantized for node in graph.node if node.op_type in ("Conv", "Gemm"))


def test_calibration_crops_are_synthetic_faces_at_the_model_size():
    crops = emokp_onnx.calibration_crops(48, n=8)
    assert crops.shape == (8, 48, 48) and crops.dtype == np.uint8 and crops.std() > 10
    assert np.array_equal(crops, emokp_onnx.calibration_crops(48, n=8))  # deterministic


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated, still read
def test_onnx_backends_refuse_a_gpu_and_a_torchscript_model(tiny, tmp_path):
    from emokp_ray.artifacts.export import export_checkpoint, load_exported

    with pytest.raises(UserError, match="runs on the CPU"):
        backends.resolve_backend("onnx", "cuda")
    assert backends.resolve_backend("auto", "cuda") == "torch"
    scripted = load_exported(export_checkpoint(str(tiny[1]), str(tmp_path / "em.ts")), trust_torchscript=True)
    assert Predictor(None, scripted, backend="auto").runners["emotion"].backend == "torch"  # the default: torch
    with pytest.raises(UserError, match="needs a checkpoint"):
        Predictor(None, scripted, backend="onnx")  # asked for: a clear refusal


def test_overlapped_networks_give_the_same_answers_from_a_second_thread(tiny, monkeypatch):
    import threading

    import torch

    from emokp_ray.artifacts.export import load_model

    kp, em = (load_model(str(path), map_location="cpu") for path in tiny)
    one_after_the_other = Predictor(kp, em, backend="onnx", detector=HalvesDetector(), overlap_networks=False)
    overlapped = Predictor(kp, em, backend="onnx", detector=HalvesDetector(), overlap_networks=True)
    ran_in = {}
    for task, runner in list(overlapped.runners.items()):

        def recording(crops, runner=runner, task=task):
            ran_in[task] = threading.current_thread().name
            return runner(crops)

        overlapped.runners[task] = recording
    images = photos()
    for a, b in zip(faces(one_after_the_other, images), faces(overlapped, images), strict=True):
        assert a == b  # the same runners on the same crops: identical, not just close
    assert ran_in["keypoints"] == threading.current_thread().name
    assert ran_in["emotion"].startswith("emokp-emotion")
    assert {r.session.get_session_options().intra_op_num_threads for r in one_after_the_other.runners.values()} == {
        torch.get_num_threads()
    }
    # auto: on CPU with both models and >= 2 threads, the ONNX sessions sharing them
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    auto = Predictor(kp, em, backend="onnx")
    assert auto.overlap_networks and Predictor(kp, em, backend="torch").overlap_networks
    assert {r.session.get_session_options().intra_op_num_threads for r in auto.runners.values()} == {2}
    assert not Predictor(None, em, backend="onnx", overlap_networks=True).overlap_networks
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not Predictor(kp, em, backend="onnx").overlap_networks
