"""The model registry: a network other than the ResNet (models/convnet.py, `--model tiny`) trains,
checkpoints, loads, evaluates, exports and predicts through the same code as the ResNet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emokp_ray.artifacts.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from emokp_ray.artifacts.export import export_checkpoint, load_model
from emokp_ray.cli import main
from emokp_ray.errors import UserError
from emokp_ray.inference.backends import make_runner, onnx_installed, run_model
from emokp_ray.inference.predictor import Predictor
from emokp_ray.models import registry, resnet
from emokp_ray.models.convnet import ConvNet, ConvNetConfig
from emokp_ray.tasks import TASKS
from emokp_ray.training.config import CHOICES, TrainConfig
from tests.helpers import write_random_dataset, write_tiny_checkpoints

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def test_model_names_are_listed_once_and_every_network_builds_them():
    assert CHOICES["model"] == tuple(registry.MODELS)
    for name, entry in registry.MODELS.items():
        assert set(registry.network(entry.network).configs) >= {name}
        for task in entry.tasks:
            cfg = registry.model_config(task, name)
            assert cfg.task == task and isinstance(cfg, registry.network(entry.network).config_type)
    # every (task, variant) the ResNet module defines is a registered name for that task, and back
    assert {(t, v) for t, v in resnet.VARIANTS} == {
        (t, n) for n, e in registry.MODELS.items() if e.network == "resnet" for t in e.tasks
    }
    with pytest.raises(UserError, match="unknown model keypoints/fer48"):
        registry.model_config("keypoints", "fer48")
    with pytest.raises(UserError, match="--model fer48 is defined for emotion, not keypoints"):
        TrainConfig(task="keypoints", data="d", out="o", model="fer48")


@pytest.mark.parametrize("task", TASKS)
def test_the_convnet_outputs_what_its_task_needs(task):
    cfg = registry.model_config(task, "tiny")
    model = registry.build_model(cfg).eval()
    assert isinstance(model, ConvNet) and registry.network_of(cfg).name == "convnet"
    x = torch.randint(0, 256, (4, cfg.input_size, cfg.input_size), dtype=torch.uint8)
    out = model(x)
    assert out.shape == (4, 30 if task == "keypoints" else 5) and out.dtype == torch.float32
    if task == "keypoints":  # starts at the crop's centre, in pixels
        assert torch.allclose(out, torch.full_like(out, cfg.input_size / 2))
    assert sum(p.numel() for p in model.parameters()) < 300_000
    with pytest.raises(UserError, match="invalid convnet config"):
        ConvNetConfig(task=task, widths=())
    with pytest.raises(UserError, match="must divide into pool_grid 2 cells"):  # 48 -> 3x3 (ONNX needs whole cells)
        ConvNetConfig(task=task, input_size=48, pool_grid=2)


def test_checkpoint_meta_names_its_network_and_old_metas_read_as_the_resnet(tmp_path):
    kp_dir, _ = write_tiny_checkpoints(tmp_path / "resnet")
    meta_file = kp_dir / "meta.json"
    raw = json.loads(meta_file.read_text())
    assert raw["network"] == "resnet"
    del raw["network"]  # a checkpoint written before the registry
    meta_file.write_text(json.dumps(raw))
    assert isinstance(load_checkpoint(kp_dir).model, resnet.ResNet)

    raw["network"] = "convnet"  # the ResNet's config given to another network: a one-line error
    meta_file.write_text(json.dumps(raw))
    with pytest.raises(UserError, match=r"meta\.json.*unknown convnet config key"):
        load_checkpoint(kp_dir)
    raw["network"] = "transformer"
    meta_file.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="unknown network 'transformer'"):
        load_checkpoint(kp_dir)


def test_convnet_checkpoint_round_trip(tmp_path):
    cfg = registry.model_config("emotion", "tiny")
    torch.manual_seed(0)
    model = registry.build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "ck", model, CheckpointMeta(model_config=cfg, run_id="tiny-em"))
    loaded = load_checkpoint(path)
    assert loaded.meta.network == "convnet" and loaded.meta.model_config == cfg
    x = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    assert torch.equal(loaded.model(x), model(x))


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """`emokp train keypoints --model tiny` and `emokp train emotion --model tiny`, one epoch each."""
    root = tmp_path_factory.mktemp("tiny-runs")
    data = write_random_dataset(root / "data", n_train=48, n_val=24)
    runs = {}
    for task in TASKS:
        out = root / task
        argv = ["train", task, "--data", str(data), "--out", str(out), "--no-ray", "--model", "tiny"]
        argv += ["--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "2"]
        assert main(argv) == 0
        runs[task] = out
    return data, runs


def test_convnet_trains_evaluates_and_predicts_through_the_cli(trained_tiny, tmp_path, capsys):
    data, runs = trained_tiny
    for task, run in runs.items():
        loaded = load_checkpoint(run / "best")
        assert isinstance(loaded.model, ConvNet) and loaded.meta.network == "convnet"
        assert loaded.meta.train_config["model"] == "tiny" and loaded.meta.task == task
        assert main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / task)]) == 0
        report = json.loads((tmp_path / task / "report.json").read_text())
        assert report["task"] == task and report["n"] == 24
    predictor = Predictor.from_paths(str(runs["keypoints"]), str(runs["emotion"]), device="cpu", detect=False)
    crops = np.random.default_rng(0).integers(0, 256, (2, 96, 96), dtype=np.uint8)
    faces = predictor.predict_crops(crops)
    assert len(faces) == 2 and len(faces[0].keypoints) == 15 and abs(sum(faces[0].probabilities.values()) - 1) < 1e-5


@pytest.mark.parametrize("task", TASKS)
def test_convnet_exports_to_torchscript_and_onnx_and_runs_there(trained_tiny, tmp_path, task):
    _, runs = trained_tiny
    source = load_checkpoint(runs[task] / "best")
    size = source.meta.input_size
    crops = np.random.default_rng(1).integers(0, 256, (5, size, size), dtype=np.uint8)
    want = run_model(make_runner(source, "torch", torch.device("cpu")), crops)

    ts = export_checkpoint(str(runs[task]), str(tmp_path / f"{task}.ts"), fmt="torchscript")
    traced = load_model(ts, trust_torchscript=True)
    assert traced.meta.to_dict() == source.meta.to_dict()
    with torch.inference_mode():
        assert np.allclose(traced.model(torch.from_numpy(crops)[:, None]).numpy(), want, atol=1e-4)
    if not onnx_installed():
        pytest.skip("the onnx extra is not installed")
    onnx_file = export_checkpoint(str(runs[task]), str(tmp_path / f"{task}.onnx"), fmt="onnx")
    from_file = load_model(onnx_file)
    assert from_file.meta.network == "convnet"
    assert np.allclose(run_model(make_runner(from_file, "onnx", torch.device("cpu")), crops), want, atol=1e-3)
    # --backend onnx on the checkpoint: the backends accept any registered network
    on_the_fly = make_runner(load_checkpoint(runs[task] / "best"), "onnx", torch.device("cpu"))
    assert np.allclose(run_model(on_the_fly, crops), want, atol=1e-3)


def test_a_module_that_is_no_registered_network_is_refused_for_onnx(tmp_path):
    kp_dir, _ = write_tiny_checkpoints(tmp_path / "ck")
    loaded = load_checkpoint(kp_dir)
    stand_in = type(loaded)(torch.nn.Identity(), loaded.meta, loaded.path)
    with pytest.raises(UserError, match="needs a checkpoint"):
        make_runner(stand_in, "onnx", torch.device("cpu"))
    assert make_runner(stand_in, "onnx", torch.device("cpu"), explicit=False) is not None
