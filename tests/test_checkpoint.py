"""Checkpoint tests: round trips, path resolution, resume state, and every kind of bad checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emokp_ray.artifacts.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    save_checkpoint_file,
    unwrap_model,
)
from emokp_ray.errors import UserError
from emokp_ray.labels import FER7, KEYPOINT_NAMES, SEED5
from emokp_ray.models import emotion_config, emotion_resnet, keypoint_resnet

CALLS: list[str] = []


def _record_call(what: str) -> None:
    CALLS.append(what)


class Evil:
    """Pickles to a call of _record_call: unpickling it would run code."""

    def __reduce__(self):
        return (_record_call, ("unpickled",))


def raw_images(n: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def small_emotion_model(**overrides) -> torch.nn.Module:
    """A tiny emotion net (fast to save and load) with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = emotion_resnet(**{"input_size": 48, "width_mult": 0.25, **overrides})
    model.train()
    with torch.no_grad():
        model(raw_images(8, model.cfg.input_size))  # moves the BN running stats off their init
    return model.eval()


def meta_for(model, **kw) -> CheckpointMeta:
    return CheckpointMeta(model_config=model.cfg, **kw)


@pytest.fixture
def saved(tmp_path) -> tuple[Path, torch.nn.Module]:
    model = small_emotion_model()
    path = save_checkpoint(tmp_path / "ckpt", model, meta_for(model, epoch=3, metrics={"val/accuracy": 0.5}))
    return path, model


def assert_user_error(path, *fragments: str) -> str:
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- round trips -------------------------------------------------------------------------------


def test_round_trip_gives_identical_outputs_and_meta(tmp_path):
    torch.manual_seed(0)
    model = keypoint_resnet().eval()  # the real 18M-parameter course model
    meta = CheckpointMeta(
        model_config=model.cfg,
        train_config={"lr": 1e-3, "epochs": 10, "augment": True},
        epoch=7,
        metrics={"val/rmse_px": 2.25, "val/per_keypoint_rmse_px": [1.0, 2.0]},
        run_id="run-42",
    )
    path = save_checkpoint(tmp_path / "kp", model, meta)
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.pt"]
    loaded = load_checkpoint(path)
    x = raw_images(2, 96)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert not loaded.model.training
    assert loaded.meta == meta
    assert loaded.meta.keypoint_names == KEYPOINT_NAMES
    assert loaded.optimizer_state is None and loaded.extra_state is None


def test_meta_json_describes_the_model(saved):
    path, model = saved
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format_version"] == 1
    assert meta["task"] == "emotion"
    assert meta["label_scheme"] == "seed5" and meta["class_names"] == list(SEED5.classes)
    assert meta["input_size"] == 48 and meta["in_chans"] == 1
    assert meta["normalization"] == {"input": "raw grey pixels 0..255", "mean": 0.0, "std": 255.0}
    assert meta["model_config"] == json.loads(json.dumps(model.cfg.to_dict()))
    assert meta["epoch"] == 3 and meta["metrics"] == {"val/accuracy": 0.5}
    assert meta["torch_version"] == str(torch.__version__) and meta["created"]
    assert read_meta(path) == load_checkpoint(path).meta


def test_fer7_scheme_names_follow_the_scheme(tmp_path):
    model = small_emotion_model(num_outputs=7)
    path = save_checkpoint(tmp_path / "c", model, meta_for(model, label_scheme="fer7"))
    assert load_checkpoint(path).meta.class_names == FER7.classes
    with pytest.raises(UserError, match="5 class names for a model with 7 outputs"):
        meta_for(model)  # seed5 by default


def test_run_dir_resolves_to_best(saved, tmp_path):
    path, model = saved
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path.rename(run_dir / "best")
    loaded = load_checkpoint(run_dir)
    assert loaded.path == run_dir / "best"


def test_exported_file_round_trip(tmp_path):
    model = small_emotion_model()
    meta = meta_for(model, epoch=1)
    file = save_checkpoint_file(tmp_path / "emotion.pt", model, meta)
    loaded = load_checkpoint(file)
    x = raw_images(3, 48)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.meta == meta and read_meta(file) == meta


def test_resume_state_round_trip(tmp_path):
    model = small_emotion_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    loss = model(raw_images(4, 48)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    extra = {"epoch": 1, "best_metric": 0.25, "seed": 7}
    path = save_checkpoint(tmp_path / "c", model, meta_for(model), optimizer, scheduler, scaler, extra_state=extra)
    loaded = load_checkpoint(path)
    assert loaded.extra_state == extra
    optimizer2 = torch.optim.AdamW(loaded.model.parameters(), lr=1e-3)
    optimizer2.load_state_dict(loaded.optimizer_state)
    first = next(iter(optimizer.state.values()))["exp_avg"]
    assert torch.equal(next(iter(optimizer2.state.values()))["exp_avg"], first)
    scheduler2 = torch.optim.lr_scheduler.OneCycleLR(optimizer2, max_lr=1e-2, total_steps=10)
    scheduler2.load_state_dict(loaded.scheduler_state)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert loaded.scaler_state == scaler.state_dict()
    disabled = torch.amp.GradScaler("cpu", enabled=False)  # its state is {}: nothing to resume
    path = save_checkpoint(tmp_path / "c", model, meta_for(model), optimizer, scheduler, disabled)
    assert not (path / "scaler.pt").exists() and load_checkpoint(path).scaler_state is None


@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)  # torch.compile's import
def test_wrappers_are_unwrapped_before_saving(tmp_path):
    model = small_emotion_model()
    for wrapped in (torch.nn.DataParallel(model), torch.compile(model)):
        assert unwrap_model(wrapped) is model
        path = save_checkpoint(tmp_path / "c", wrapped, meta_for(model))
        state = torch.load(path / "model.pt", weights_only=True)
        assert set(state) == set(model.state_dict())  # no "module." / "_orig_mod." prefixes


def test_channels_last_model_saves_and_loads(tmp_path):
    model = small_emotion_model().to(memory_format=torch.channels_last)
    path = save_checkpoint(tmp_path / "c", model, meta_for(model))
    x = raw_images(2, 48)
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(path).model(x), model(x), atol=1e-5)


def test_save_replaces_atomically_and_a_failed_save_keeps_the_old(saved):
    path, model = saved
    save_checkpoint(path, model, meta_for(model, epoch=4))
    assert load_checkpoint(path).meta.epoch == 4
    with pytest.raises(TypeError):  # not JSON: fails after model.pt was written to the temp dir
        save_checkpoint(path, model, meta_for(model, epoch=5), extra_state={"bad": object()})
    assert load_checkpoint(path).meta.epoch == 4
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp or old dirs left


def test_meta_must_match_the_model_being_saved(tmp_path):
    model = small_emotion_model()
    with pytest.raises(ValueError, match="model_config"):
        save_checkpoint(tmp_path / "c", model, CheckpointMeta(model_config=emotion_config()))


# ---- bad checkpoints ---------------------------------------------------------------------------


def edit_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


def test_missing_directory(tmp_path):
    assert_user_error(tmp_path / "nope", str(tmp_path / "nope"), "does not exist")


def test_directory_without_meta(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(tmp_path / "empty", "empty", "no meta.json")


def test_invalid_json(saved):
    path, _ = saved
    (path / "meta.json").write_text('{"format_version": 1,')
    assert_user_error(path, str(path / "meta.json"), "not valid JSON")


def test_unknown_format_version(saved):
    path, _ = saved
    edit_meta(path, format_version=99)
    assert_user_error(path, str(path / "meta.json"), "format_version 99")


def test_unknown_task(saved):
    path, _ = saved
    edit_meta(path, task="age")
    assert_user_error(path, "unknown task 'age'")


def test_unknown_model_config_key(saved):
    path, model = saved
    edit_meta(path, model_config={**model.cfg.to_dict(), "depth": 50})
    assert_user_error(path, str(path / "meta.json"), "unknown model config key(s): depth")


def test_derived_meta_must_agree_with_model_config(saved):
    path, _ = saved
    edit_meta(path, input_size=96)
    assert_user_error(path, "input_size 96 disagrees")


def test_missing_weights_file(saved):
    path, _ = saved
    (path / "model.pt").unlink()
    assert_user_error(path, str(path), "no model.pt")


def test_state_dict_missing_key(saved):
    path, _ = saved
    state = torch.load(path / "model.pt", weights_only=True)
    del state["stem.0.weight"]
    torch.save(state, path / "model.pt")
    assert_user_error(path, str(path / "model.pt"), "missing key 'stem.0.weight'")


def test_state_dict_shape_mismatch_names_the_key(saved):
    path, model = saved
    edit_meta(
        path,
        model_config={**model.cfg.to_dict(), "num_outputs": 7},
        class_names=list(FER7.classes),
        label_scheme="fer7",
    )
    assert_user_error(path, "'head.2.weight' has shape [5, 128]", "[7, 128]")


def test_not_a_torch_file(saved):
    path, _ = saved
    (path / "model.pt").write_text("hello, I am text")
    assert_user_error(path, str(path / "model.pt"), "not a torch file")


def test_truncated_file(saved):
    path, _ = saved
    data = (path / "model.pt").read_bytes()
    (path / "model.pt").write_bytes(data[: len(data) // 2])
    assert_user_error(path, str(path / "model.pt"), "truncated")


def test_pickled_objects_are_refused_without_running_them(saved):
    path, _ = saved
    state = torch.load(path / "model.pt", weights_only=True)
    torch.save({**state, "payload": Evil()}, path / "model.pt")
    CALLS.clear()
    assert_user_error(path, str(path / "model.pt"), "refused", "weights_only=True", "_record_call")
    assert CALLS == []  # the payload never ran
    torch.save({"meta_json": "{}", "state_dict": {}, "x": Evil()}, path.parent / "evil.pt")
    assert_user_error(path.parent / "evil.pt", "refused")
    assert CALLS == []


def test_bad_exported_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    assert_user_error(tmp_path / "plain.pt", "not an exported checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert_user_error(tmp_path / "empty.pt", "is empty")
