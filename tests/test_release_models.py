"""Shipped models: builtin:NAME resolution and its errors, fp16 storage, `emokp predict`,
`emokp models`, and evaluation that scores like the predictor (temperature, holdout)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emokp_ray import builtin
from emokp_ray.artifacts.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint, save_checkpoint_file
from emokp_ray.artifacts.export import load_model
from emokp_ray.cli import main
from emokp_ray.errors import UserError
from emokp_ray.inference.predictor import Predictor
from emokp_ray.labels import EMOTION_NAMES, FER7, LEGACY_EMOTION_NAMES, SEED5
from emokp_ray.models.resnet import build_model, model_config
from tests.helpers import write_random_dataset, write_tiny_checkpoints

PHOTOS = builtin.FOLDER.parent / "photos"
SHIPPED = all((builtin.FOLDER / f"{n}.pt").is_file() for n in builtin.NAMES)
FP16_TOLERANCE = {"keypoints_px": 0.05, "probability": 5e-3}  # the stated fp16-storage tolerance


@pytest.fixture
def fake_builtin(tmp_path, monkeypatch):
    """A builtin folder of tiny models (the shipped files stay untouched)."""
    kp, em = write_tiny_checkpoints(tmp_path / "ckpt")
    folder = tmp_path / "builtin"
    folder.mkdir()
    for name, src in (("keypoints", kp), ("emotion", em), ("emotion-fer7", em)):
        loaded = load_checkpoint(src)
        save_checkpoint_file(folder / f"{name}.pt", loaded.model, loaded.meta, fp16=True)
    monkeypatch.setattr(builtin, "FOLDER", folder)
    return folder


def test_unknown_builtin_name_lists_the_known_ones():
    with pytest.raises(
        UserError,
        match=r"unknown builtin model 'builtin:nope' \(known: builtin:keypoints, builtin:emotion, builtin:emotion-fer7\)",
    ):
        load_model("builtin:nope")


def test_truncated_or_missing_shipped_file_is_named(fake_builtin):
    data = (fake_builtin / "emotion.pt").read_bytes()
    (fake_builtin / "emotion.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"emotion\.pt is truncated or corrupt"):
        load_model("builtin:emotion")
    (fake_builtin / "emotion.pt").unlink()
    with pytest.raises(
        UserError, match=r"builtin model builtin:emotion is not in this installation .*emotion\.pt is missing"
    ):
        load_model("builtin:emotion")


def test_fp16_storage_changes_predictions_less_than_the_stated_tolerance(tmp_path):
    """Release files store fp16 and load as fp32: measured on trained-like weights (random init
    scaled as training leaves them) through the whole predictor, flip TTA included."""
    torch.manual_seed(0)
    crops = np.random.default_rng(0).integers(0, 256, (64, 96, 96), dtype=np.uint8)
    for task, variant in (("keypoints", "compact"), ("emotion", "fer48")):
        cfg = model_config(task, variant)
        model = build_model(cfg).eval()
        if task == "keypoints":  # the zero-initialized last layer would make every output the centre
            torch.nn.init.normal_(model.head[-1].weight, std=0.01)
        meta = CheckpointMeta(model_config=cfg, run_id=f"fp16-{task}")
        full = save_checkpoint(tmp_path / f"{task}-fp32", model, meta)
        half = save_checkpoint_file(tmp_path / f"{task}-fp16.pt", model, meta, fp16=True)
        assert half.stat().st_size < 0.6 * (full / "model.pt").stat().st_size
        loaded = load_model(half)
        assert all(p.dtype == torch.float32 for p in loaded.model.parameters())  # loads as fp32
        pair = [load_model(full), loaded]
        args = [(m, None) if task == "keypoints" else (None, m) for m in pair]
        a, b = (Predictor(*x, device="cpu").predict_crops(crops) for x in args)
        if task == "keypoints":
            diff = max(
                abs(u - v)
                for fa, fb in zip(a, b)
                for k in fa.keypoints
                for u, v in zip(fa.keypoints[k], fb.keypoints[k])
            )
            assert diff < FP16_TOLERANCE["keypoints_px"], diff
        else:
            diff = max(abs(fa.probabilities[c] - fb.probabilities[c]) for fa, fb in zip(a, b) for c in fa.probabilities)
            assert diff < FP16_TOLERANCE["probability"], diff


@pytest.mark.skipif(not SHIPPED, reason="the release models are not in this checkout")
def test_shipped_models_load_and_carry_their_release_figures():
    info = builtin.release_info()
    total = sum((builtin.FOLDER / f"{n}.pt").stat().st_size for n in builtin.NAMES)
    assert total <= 40e6, f"shipped weights {total / 1e6:.1f} MB exceed the 40 MB budget"
    for name in builtin.NAMES:
        loaded = load_model(f"builtin:{name}")
        entry = info["models"][name]
        assert loaded.meta.task == entry["task"] and loaded.meta.run_id.startswith("release-")
        if entry["task"] == "emotion":
            assert loaded.meta.calibration["fitted_on"] == "val" and loaded.meta.calibration["temperature"] > 0
            assert entry["fp16_check"]["max_probability_change"] < FP16_TOLERANCE["probability"]
        else:
            assert entry["fp16_check"]["max_keypoint_change_px"] < FP16_TOLERANCE["keypoints_px"]
    assert "builtin:emotion-fer7" in builtin.FOLDER.joinpath("MODEL_CARD.md").read_text()


@pytest.mark.skipif(not SHIPPED, reason="the release models are not in this checkout")
def test_predict_with_the_shipped_models_finds_the_faces_in_the_bundled_photos(capsys):
    pytest.importorskip("cv2")
    photos = sorted(str(p) for p in PHOTOS.glob("*.jpg"))
    assert main(["predict", *photos, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in records] == photos
    for r in records:
        assert len(r["faces"]) == 1
        # every answer names its models: the default emotion model, fer7, in the one name set
        emotion_model = r["model"]["emotion"]
        assert emotion_model["label_scheme"] == "fer7" and emotion_model["run_id"].startswith("release-emotion-fer7")
        assert emotion_model["class_names"] == list(EMOTION_NAMES)
        face = r["faces"][0]
        assert set(face["probabilities"]) == set(EMOTION_NAMES)
        assert abs(sum(face["probabilities"].values()) - 1.0) < 1e-4 and len(face["keypoints"]) == 15
        x, y, w, h = face["box"]
        left, right = face["keypoints"]["left_eye_center"], face["keypoints"]["right_eye_center"]
        # eyes inside the box, the subject's left eye on the image's right
        assert x < right[0] < left[0] < x + w and y < left[1] < y + h


def test_predict_prints_faces_writes_annotations_and_reports_bad_files(tmp_path, capsys):
    kp, em = write_tiny_checkpoints(tmp_path / "ckpt")
    from PIL import Image

    crop = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(crop)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    code = main(
        [
            "predict",
            str(crop),
            str(bad),
            str(crop),
            "--keypoints",
            str(kp),
            "--emotion",
            str(em),
            "--annotate",
            str(tmp_path / "ann"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out.startswith("models: keypoints ") and ", seed5 scheme)" in captured.out.splitlines()[0]
    assert captured.out.count("96x96, 1 face") == 2 and "2 of 3 images labelled" in captured.out
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 2 and "notes.png" in err_lines[0] and "1 of 3 images could not be labelled" in err_lines[1]
    assert (tmp_path / "ann" / "face.annotated.png").is_file()


def test_models_lists_every_builtin(fake_builtin, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in builtin.NAMES:
        assert f"builtin:{name}" in out


def test_label_and_serve_default_to_the_builtin_pair():
    from emokp_ray.cli import _model_pair, build_parser

    parser = build_parser()
    # the default emotion model knows "neutral"; the course's five classes are there by name
    assert _model_pair(parser.parse_args(["serve"])) == ("builtin:keypoints", "builtin:emotion-fer7")
    assert _model_pair(parser.parse_args(["predict", "x.jpg"])) == ("builtin:keypoints", "builtin:emotion-fer7")
    assert _model_pair(parser.parse_args(["label", "in", "--out", "o"])) == (
        "builtin:keypoints",
        "builtin:emotion-fer7",
    )
    assert _model_pair(parser.parse_args(["label", "in", "--out", "o", "--emotion", "builtin:emotion"])) == (
        None,
        "builtin:emotion",
    )


def test_evaluate_applies_the_temperature_and_reports_calibration(tmp_path):
    from emokp_ray.evaluation.evaluate import evaluate_checkpoint

    data = write_random_dataset(tmp_path / "data", n_train=8, n_val=40, size=48)
    _, em = write_tiny_checkpoints(tmp_path / "ckpt")
    loaded = load_checkpoint(em)
    hot = save_checkpoint(
        tmp_path / "hot",
        loaded.model,
        CheckpointMeta(
            model_config=loaded.meta.model_config, run_id="hot", calibration={"temperature": 4.0, "fitted_on": "val"}
        ),
    )
    plain = evaluate_checkpoint(str(em), str(data), str(tmp_path / "r1")).report
    scaled = evaluate_checkpoint(str(hot), str(data), str(tmp_path / "r2")).report
    assert plain["accuracy"] == scaled["accuracy"]  # a temperature never changes the label
    assert scaled["calibration"]["temperature"] == 4.0 and plain["calibration"]["temperature"] == 1.0
    assert scaled["calibration"]["ece_uncalibrated"] == pytest.approx(plain["calibration"]["ece"])
    assert (tmp_path / "r2" / "reliability.png").is_file()


def test_every_scheme_uses_the_one_name_set_and_old_fer_words_are_read_as_it(tmp_path):
    assert set(SEED5.classes) <= set(EMOTION_NAMES) and FER7.classes == EMOTION_NAMES
    config = model_config("emotion", "fer48", num_outputs=7)
    old_words = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    meta = CheckpointMeta(model_config=config, label_scheme="fer7", class_names=old_words, run_id="old")
    saved = save_checkpoint(tmp_path / "old", build_model(config), meta)
    loaded = load_checkpoint(saved)
    assert loaded.meta.class_names == EMOTION_NAMES
    faces = Predictor(None, loaded, device="cpu").predict_crops(np.zeros((2, 48, 48), np.uint8))
    assert faces[0].emotion in EMOTION_NAMES and set(faces[0].probabilities) == set(EMOTION_NAMES)
    # a data set prepared with FER's words: its counts read under the one name set (class weights use them)
    from emokp_ray.data.schema import read_info

    data = write_random_dataset(tmp_path / "data", n_train=4, n_val=2, size=48)
    raw = json.loads((data / "dataset.json").read_text())
    raw["counts"]["train"] |= dict.fromkeys(LEGACY_EMOTION_NAMES, 3)
    (data / "dataset.json").write_text(json.dumps(raw))
    counts = read_info(data).counts["train"]
    assert counts["anger"] == 3 and counts["happiness"] == 3 and not set(LEGACY_EMOTION_NAMES) & set(counts)


@pytest.mark.parametrize("where", ["/proc/emokp-annotations", "a_file"])
def test_predict_annotate_to_an_unwritable_place_is_one_line(tmp_path, capsys, monkeypatch, where):
    """It printed a 22-line traceback and exited 1."""
    kp, em = write_tiny_checkpoints(tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("taken")
    crop = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(np.zeros((96, 96), np.uint8)).save(crop)
    assert main(["predict", str(crop), "--keypoints", str(kp), "--emotion", str(em), "--annotate", where]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"emokp: error: --annotate {where}: cannot create the folder")
