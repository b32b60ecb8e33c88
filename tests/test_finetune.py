"""Fine-tuning (`emokp train ... --init CKPT|builtin:NAME`, emokp_ray/training/init.py): the weights a
run starts from, the head when the classes differ, the recorded init, the errors, and both the
one-process and the Ray Train paths."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from emokp_ray.artifacts.checkpoint import load_checkpoint, read_meta
from emokp_ray.data.schema import DatasetInfo, DatasetWriter, count_summary, make_table
from emokp_ray.errors import UserError
from emokp_ray.labels import SEED5, custom_scheme_name, emotion_scheme
from emokp_ray.models.resnet import build_model
from emokp_ray.training.config import TrainConfig
from emokp_ray.training.init import freeze_stem, init_plan, load_init_weights, network_of, resolve_init
from emokp_ray.training.recipes import config_from_recipe
from emokp_ray.training.train import run_training
from tests.helpers import write_random_dataset


def _emotion_data(out, scheme: str = "seed5", n_train: int = 64, n_val: int = 32, size: int = 48):
    rng = np.random.default_rng(0)
    classes = emotion_scheme(scheme).classes
    n = n_train + n_val
    table = make_table(
        rng.integers(0, 256, (n, size, size), dtype=np.uint8),
        None,
        rng.integers(0, len(classes), n),
        ["train"] * n_train + ["val"] * n_val,
        "random",
        np.arange(n),
    )
    with DatasetWriter(out) as writer:
        writer.write(table)
        writer.info = DatasetInfo(
            tasks=["emotion"],
            scheme=scheme,
            counts=count_summary(table, classes),
            sources=["random"],
            image_sizes=[[size, size]],
        )
    return out


def test_builtin_models_name_their_networks():
    assert network_of(read_meta("builtin:emotion")) == "fer48"
    assert network_of(read_meta("builtin:emotion-fer7")) == "fer48"
    assert network_of(read_meta("builtin:keypoints")) == "compact"


def test_init_fixes_the_network_and_input_size():
    cfg = config_from_recipe("emotion", "d", "o", recipe="finetune", init="builtin:emotion")
    assert (cfg.model, cfg.input_size, cfg.init, cfg.recipe) == ("fer48", 48, "builtin:emotion", "finetune")
    assert cfg.lr < config_from_recipe("emotion", "d", "o").lr and cfg.ema_decay == 0
    # a path is made absolute: Ray Train workers run in another directory
    assert resolve_init("emotion", "builtin:emotion-fer7", None, None)["init"] == "builtin:emotion-fer7"


@pytest.mark.parametrize(
    ("task", "overrides", "message"),
    [
        ("keypoints", {"init": "builtin:emotion"}, "checkpoint of the emotion task"),
        ("emotion", {"init": "builtin:keypoints"}, "checkpoint of the keypoints task"),
        ("emotion", {"init": "builtin:emotion", "model": "small"}, "holds a fer48 network; --model small"),
        ("emotion", {"init": "builtin:emotion", "input_size": 96}, "48x48 inputs; --input-size 96"),
        ("emotion", {"init": "builtin:nope"}, "unknown builtin model"),
        ("emotion", {}, "--recipe finetune starts from a trained model"),
    ],
)
def test_init_errors_are_one_line(task, overrides, message):
    with pytest.raises(UserError, match=message) as err:
        config_from_recipe(task, "d", "o", recipe="finetune", **overrides)
    assert "\n" not in str(err.value)


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    from emokp_ray.artifacts.checkpoint import CheckpointMeta, save_checkpoint
    from emokp_ray.models.resnet import model_config

    odd = model_config("emotion", "small", input_size=48, width_mult=0.25)  # no variant builds this
    save_checkpoint(tmp_path / "odd", build_model(odd), CheckpointMeta(model_config=odd))
    with pytest.raises(UserError, match="matches none of the networks"):
        config_from_recipe("emotion", "d", "o", recipe="finetune", init=str(tmp_path / "odd"))
    # and a config that names another network than its init's (built without the recipe check)
    with pytest.raises(UserError, match="holds a fer48 network; this run builds small"):
        init_plan("emotion", "small", "builtin:emotion", SEED5.classes)


def test_weights_copied_head_kept_new_or_reordered():
    source = load_checkpoint("builtin:emotion").model
    x = torch.randint(0, 256, (4, 1, 48, 48)).float()
    with torch.no_grad():
        reference = source(x)

    def start(classes):
        plan = init_plan("emotion", "fer48", "builtin:emotion", classes)
        torch.manual_seed(0)
        model = build_model(plan.model_config).eval()
        load_init_weights(model, plan, classes)
        with torch.no_grad():
            return plan, model, model(x)

    plan, model, out = start(SEED5.classes)
    assert plan.head == "kept"
    torch.testing.assert_close(out, reference)
    # the same five classes in another order: the head's rows follow the names
    order = ("happiness", "sad", "anger", "surprise", "disgust")
    plan, model, out = start(emotion_scheme(custom_scheme_name(order)).classes)
    assert plan.head == "reordered"
    torch.testing.assert_close(out, reference[:, [SEED5.classes.index(c) for c in order]])
    # fer7's seven: a new head, the backbone copied
    plan, model, out = start(emotion_scheme("fer7").classes)
    assert plan.head == "new" and out.shape == (4, 7)
    for key, value in source.state_dict().items():
        if not key.startswith(f"head.{len(model.head) - 1}."):
            torch.testing.assert_close(model.state_dict()[key], value)


def test_freeze_stem_stops_its_gradients():
    model = build_model(init_plan("emotion", "fer48", "builtin:emotion", SEED5.classes).model_config)
    freeze_stem(model)
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert all(p.requires_grad for p in model.stages.parameters())
    for flag in ("freeze_stem", "freeze_bn"):
        with pytest.raises(UserError, match=f"--{flag.replace('_', '-')} keeps what an --init checkpoint learned"):
            TrainConfig(task="emotion", data="d", out="o", **{flag: True})


@pytest.mark.slow
def test_finetune_run_without_ray_starts_from_the_init_and_records_it(tmp_path):
    data = _emotion_data(tmp_path / "data", scheme="fer7")
    out = tmp_path / "run"
    cfg = config_from_recipe(
        "emotion",
        str(data),
        str(out),
        recipe="finetune",
        init="builtin:emotion",  # seed5 -> fer7: a new head
        epochs=1,
        batch_size=16,
        no_ray=True,
        freeze_stem=True,
        freeze_bn=True,
    )
    outcome = run_training(cfg, log=lambda *_: None)
    assert json.loads((out / "config.json").read_text())["init"] == "builtin:emotion"
    best = load_checkpoint(outcome.best_checkpoint)
    record = best.meta.train_config["init_from"]
    assert record["checkpoint"] == "builtin:emotion" and record["head"] == "new"
    assert record["classes"] == list(SEED5.classes) and record["run_id"]
    assert best.meta.class_names == emotion_scheme("fer7").classes and best.meta.input_size == 48
    source = load_checkpoint("builtin:emotion").model.state_dict()
    trained = best.model.state_dict()
    for key in trained:  # the frozen stem as the init left it, every BN's statistics too; the stages trained on
        if key.startswith("stem.") or "running_" in key:
            torch.testing.assert_close(trained[key], source[key])
    assert not torch.equal(trained["stages.0.0.conv1.weight"], source["stages.0.0.conv1.weight"])


@pytest.mark.slow
def test_cli_init_of_another_task_is_rc_2(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "emokp_ray.cli",
            "train",
            "keypoints",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
        ]
        + ["--recipe", "finetune", "--init", "builtin:emotion"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "emokp: error: --init builtin:emotion is a checkpoint of the emotion task; "
        "`emokp train keypoints` needs one of the keypoints task"
    ]


@pytest.mark.ray
@pytest.mark.slow
def test_finetune_with_ray_train_workers(ray_cluster, tmp_path):
    data = write_random_dataset(tmp_path / "data", n_train=32, n_val=16)
    plan = init_plan("keypoints", "compact", "builtin:keypoints", ())
    cfg = config_from_recipe(
        "keypoints",
        str(data),
        str(tmp_path / "run"),
        recipe="finetune",
        init="builtin:keypoints",
        epochs=1,
        batch_size=16,
        workers=1,
        cpus_per_worker=0.5,
        use_gpu=False,
        lr=1e-12,  # a step that leaves the weights where the init put them
        weight_decay=0.0,
        augment=False,
    )
    outcome = run_training(cfg, log=lambda *_: None)
    best = load_checkpoint(outcome.best_checkpoint)
    assert best.meta.train_config["init_from"]["checkpoint"] == "builtin:keypoints"
    assert best.meta.model_config == plan.model_config
    source = load_checkpoint("builtin:keypoints").model.state_dict()
    torch.testing.assert_close(best.model.state_dict()["head.2.weight"], source["head.2.weight"])


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10])
def test_a_run_of_a_few_steps_gets_a_valid_one_cycle_schedule(steps):
    """A fine-tuning run on a few hundred faces has a handful of steps; OneCycleLR divided by zero there."""
    from emokp_ray.training.loop import build_optimizer

    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(task="emotion", data="d", out="o", epochs=1, warmup_fraction=0.1)
    optimizer, scheduler = build_optimizer(cfg, model, steps)
    rates = []
    for _ in range(steps):
        optimizer.step()
        rates.append(optimizer.param_groups[0]["lr"])
        if scheduler is not None and scheduler.last_epoch < scheduler.total_steps - 1:
            scheduler.step()
    assert all(0 < r <= cfg.lr for r in rates)
