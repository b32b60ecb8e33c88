"""The plain training loop (no Ray): losses, one-process fit, checkpoints, best/, metrics, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from emokp_ray.artifacts.checkpoint import load_checkpoint
from emokp_ray.cli import main
from emokp_ray.data.pipeline import TrainAugment
from emokp_ray.errors import UserError
from emokp_ray.training.batches import augmented_batches
from emokp_ray.training.config import TrainConfig
from emokp_ray.training.facts import class_weights_from_counts
from emokp_ray.training.loop import build_optimizer
from emokp_ray.training.losses import masked_mse
from emokp_ray.training.train import run_training
from tests.helpers import metrics_without_wall_clock, write_random_dataset


def test_masked_mse_trains_only_present_points():
    pred = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    target = torch.tensor([[1.0, 4.0, float("nan"), float("nan")]])
    loss = masked_mse(pred, target, scale=2.0)
    # only the two present coordinates count: ((0/2)^2 + (-2/2)^2) / 2
    assert loss.item() == pytest.approx(0.5)
    pred.requires_grad_(True)
    masked_mse(pred, target, scale=2.0).backward()
    assert pred.grad[0, 2:].abs().sum() == 0  # missing points get no gradient


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_optimizer_is_fused_and_steps_like_the_per_tensor_one(name):
    from emokp_ray.models.resnet import build_model, model_config

    cfg = TrainConfig(task="emotion", data="unused", out="unused", model="small", optimizer=name, schedule="constant")
    torch.manual_seed(0)
    fused_model = build_model(model_config("emotion", "small", input_size=48))
    plain_model = build_model(model_config("emotion", "small", input_size=48))
    plain_model.load_state_dict(fused_model.state_dict())
    fused_opt, _ = build_optimizer(cfg, fused_model, steps_per_epoch=1)
    plain_opt = (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(
        plain_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False
    )
    assert fused_opt.defaults["fused"] is True
    x, y = torch.randint(0, 256, (8, 1, 48, 48)).float(), torch.randint(0, 5, (8,))
    for model, opt in ((fused_model, fused_opt), (plain_model, plain_opt)):
        opt.zero_grad()  # one step: later ones see different rounding in their gradients
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for (key, a), b in zip(fused_model.state_dict().items(), plain_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), key


def test_class_weights_favour_rare_classes():
    w = class_weights_from_counts({"a": 900, "b": 100, "c": 0}, ("a", "b", "c"))
    assert w[1] > w[0] * 8
    assert w.mean() == pytest.approx(1.0)
    assert np.isfinite(w).all()


@pytest.fixture(scope="module")
def random_data(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("data") / "random")


def _cfg(task, data, out, **kw):
    base = dict(
        task=task,
        data=str(data),
        out=str(out),
        epochs=2,
        batch_size=16,
        no_ray=True,
        max_steps_per_epoch=3,
        limit_rows=48,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("task", ["keypoints", "emotion"])
def test_no_ray_run_writes_best_metrics_and_config(task, random_data, tmp_path):
    out = tmp_path / "run"
    outcome = run_training(_cfg(task, random_data, out), log=lambda *_: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["train/images"] == 3 * 16 for r in rows)
    metric = "val/rmse_px" if task == "keypoints" else "val/accuracy"
    assert all(math.isfinite(r[metric]) for r in rows)
    if task == "emotion":  # per-class precision and recall every epoch
        assert {f"val/{m}/{c}" for m in ("precision", "recall") for c in ("anger", "disgust")} <= set(rows[0])
    if task == "keypoints":
        assert rows[0]["val/mean_shape_rmse_px"] > 0
        assert len(rows[0]["val/per_keypoint_rmse_px"]) == 15
    ckpt = load_checkpoint(out / "best")
    assert ckpt.meta.task == task
    assert ckpt.meta.input_size == (96 if task == "keypoints" else 48)
    assert ckpt.meta.train_config["task"] == task
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert outcome.best_checkpoint == out / "best"


def test_resume_continues_from_the_latest_epoch(random_data, tmp_path):
    out = tmp_path / "run"
    run_training(_cfg("emotion", random_data, out, epochs=2), log=lambda *_: None)
    with pytest.raises(UserError, match="already holds a training run"):
        run_training(_cfg("emotion", random_data, out, epochs=3), log=lambda *_: None)
    lines = []
    run_training(_cfg("emotion", random_data, out, epochs=3, resume=True), log=lines.append)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert sum(line.startswith("epoch") for line in lines) == 1  # only epoch 3 was trained again
    assert any("resuming from" in line for line in lines)


def test_resume_without_a_run_is_a_user_error(random_data, tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        run_training(_cfg("emotion", random_data, tmp_path / "none", resume=True), log=lambda *_: None)


def test_training_reduces_the_loss_on_a_fixed_batch(random_data, tmp_path):
    """Overfitting 16 faces: the loop's optimizer, schedule and loss are wired the right way round."""
    out = tmp_path / "run"
    cfg = _cfg(
        "emotion",
        random_data,
        out,
        epochs=8,
        limit_rows=16,
        max_steps_per_epoch=1,
        augment=False,
        schedule="constant",
        lr=3e-3,
        imbalance="none",
    )
    run_training(cfg, log=lambda *_: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/loss"] < 0.5 * rows[0]["train/loss"]


def test_cli_train_no_ray_and_user_errors(random_data, tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = main(
        [
            "train",
            "emotion",
            "--data",
            str(random_data),
            "--out",
            str(out),
            "--no-ray",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--max-steps-per-epoch",
            "2",
            "--limit-rows",
            "32",
        ]
    )
    assert code == 0
    assert (out / "best" / "meta.json").is_file()
    printed = capsys.readouterr().out
    assert "epoch   1/1" in printed and "best val/macro_f1" in printed

    for argv, needle in [
        (
            ["train", "emotion", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--no-ray"],
            "not a prepared data set",
        ),
        (
            ["train", "emotion", "--data", str(random_data), "--out", str(tmp_path / "y"), "--epochs", "0"],
            "positive integer",
        ),
        (["train", "smiles", "--data", str(random_data), "--out", str(tmp_path / "z")], "invalid choice"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("emokp: error:") and needle in err and "\n" not in err


def test_data_set_given_as_a_uri(random_data, tmp_path):
    """Prepared data sets are read through pyarrow filesystems: file:// here, s3:// or gs:// alike."""
    out = tmp_path / "run"
    run_training(_cfg("keypoints", f"file://{random_data}", out, epochs=1), log=lambda *_: None)
    assert load_checkpoint(out / "best").meta.task == "keypoints"
    with pytest.raises(UserError, match="not a prepared data set"):
        run_training(_cfg("keypoints", f"file://{tmp_path}/nothing", tmp_path / "run2"), log=lambda *_: None)


def test_install_best_swaps_the_whole_directory(tmp_path):
    from emokp_ray.training.train import _install_best

    run_dir = tmp_path / "run"
    for epoch, files in ((1, {"model.pt": "one", "stale.txt": "x"}), (2, {"model.pt": "two"})):
        src = tmp_path / f"epoch-{epoch}"
        src.mkdir()
        for name, text in files.items():
            (src / name).write_text(text)
        run_dir.mkdir(exist_ok=True)
        assert _install_best(src, run_dir) == run_dir / "best"
    # The new best replaced the old one whole (no file of the old one survives), nothing left aside.
    assert sorted(p.name for p in (run_dir / "best").iterdir()) == ["model.pt"]
    assert (run_dir / "best" / "model.pt").read_text() == "two"
    assert sorted(p.name for p in run_dir.iterdir()) == ["best"]


def test_augmentation_draws_depend_on_seed_epoch_rank_and_batch_index_only():
    rng = np.random.default_rng(0)
    face = {"image": rng.integers(0, 256, (8, 96, 96), dtype=np.uint8), "keypoints": np.full((8, 30), 48.0, np.float32)}
    augment = TrainAugment("keypoints", random_erasing=0.5)

    def images(seed=7, epoch=1, rank=0, threads=0):
        batches = [dict(face) for _ in range(5)]  # five batches of the same faces
        return [b["image"] for b in augmented_batches(batches, augment, seed, epoch, rank, threads=threads)]

    serial = images()
    for threads in (1, 3):  # a thread pool changes when a batch is augmented, never how
        assert all(np.array_equal(a, b) for a, b in zip(serial, images(threads=threads)))
    assert not np.array_equal(serial[0], serial[1])  # the batch index is in the stream
    for other in (images(seed=8), images(epoch=2), images(rank=1)):
        assert not np.array_equal(serial[0], other[0])


def test_no_ray_runs_repeat_exactly_with_the_same_seed(random_data, tmp_path):
    """Augmentation (with erasing), shuffling and dropout all on: only the wall-clock fields differ."""

    def metrics(name, seed):
        out = tmp_path / name
        cfg = _cfg(
            "keypoints",
            random_data,
            out,
            seed=seed,
            model="small",  # dropout too, at a fraction of the course net's CPU time
            random_erasing=0.5,
            max_steps_per_epoch=2,
            limit_rows=40,
        )
        run_training(cfg, log=lambda *_: None)
        return metrics_without_wall_clock(out)

    first = metrics("a", seed=3)
    assert metrics("b", seed=3) == first
    assert metrics("c", seed=4) != first


def test_a_negative_seed_is_a_one_line_user_error(random_data, tmp_path, capsys):
    with pytest.raises(UserError, match="--seed must be >= 0"):
        _cfg("emotion", random_data, tmp_path / "run", seed=-1)
    argv = ["train", "emotion", "--data", str(random_data), "--out", str(tmp_path / "run"), "--seed", "-1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emokp: error:") and "--seed" in err and "\n" not in err
