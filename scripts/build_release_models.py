"""Regenerate the shipped release models (builtin:keypoints, builtin:emotion, builtin:emotion-fer7)
from the Kaggle files in ../shared/data, with the exact recipe, step by step:

    python scripts/build_release_models.py prepare    # Kaggle CSVs -> prepared/release/{kp,fer,fer7}
    python scripts/build_release_models.py train      # the three release runs (MODELS), side by side
    python scripts/build_release_models.py finish     # temperature on val, test evaluation, fp16 export,
                                                      # model card -> emokp_ray/builtin/
    python scripts/build_release_models.py all        # the three in order
    python scripts/build_release_models.py card       # MODEL_CARD.md again from release.json

`train` is resumable: run it again after an interruption and each run continues from its latest
checkpoint (`emokp train --resume`). Runs go to runs/release/NAME (ignored by git); their console
logs and per-epoch metrics are copied to results/release/ (committed beside the models).

Each run is `emokp train TASK --recipe release --no-ray` in its own process with ONE torch thread:
on a 2-core machine, three single-thread processes keep both cores busier than one run at a time
with two threads (whose per-op barriers stall whenever anything else runs), and the plain loop is the
same code that Ray Train runs in each worker. On a GPU machine the same commands run unchanged: the
runs train on the GPU (mixed precision) with torch's default threads (`--threads` overrides), and
MODEL_CARD.md names the machine that trained each model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PREPARED = REPO / "prepared" / "release"
RUNS = REPO / "runs" / "release"
RESULTS = REPO / "results" / "release"
BUILTIN = REPO / "emokp_ray" / "builtin"

# builtin name -> (task, prepared data set, `emokp data prepare` arguments, `emokp train` arguments
# beyond `--recipe release`)
MODELS = {
    # training_people.csv beside the CSV: a person-disjoint split (data/prepare.py)
    "keypoints": ("keypoints", "kp", [str(SHARED / "facial-keypoints" / "training.csv.gz")], []),
    "emotion": ("emotion", "fer", [str(SHARED / "fer2013" / "fer2013.csv.gz"), "--scheme", "seed5"], []),
    "emotion-fer7": ("emotion", "fer7", [str(SHARED / "fer2013" / "fer2013.csv.gz"), "--scheme", "fer7"], []),
}
SPLIT_SEED = 0  # `emokp data prepare --seed`: the val (and keypoint test) shares


def emokp(*args: str) -> list[str]:
    return [sys.executable, "-m", "emokp_ray.cli", *args]


def prepare() -> None:
    for _task, folder, inputs, _ in MODELS.values():
        out = PREPARED / folder
        if (out / "dataset.json").is_file():
            print(f"prepare: {out} exists, kept")
            continue
        subprocess.run(emokp("data", "prepare", *inputs, "--out", str(out), "--seed", str(SPLIT_SEED)), check=True)


def _default_threads() -> int:
    """1 torch thread per run on a CPU-only machine (module docstring), torch's default with a GPU."""
    import torch

    return 0 if torch.cuda.is_available() else 1


def train(names: list[str], threads: int) -> None:
    """Start every run at once (one process each), wait for all; logs -> results/release/NAME.log."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    procs = {}
    for name in names:
        task, folder, _, overrides = MODELS[name]
        run_dir = RUNS / name
        cmd = emokp(
            "train",
            task,
            "--data",
            str(PREPARED / folder),
            "--out",
            str(run_dir),
            "--recipe",
            "release",
            *overrides,
            "--no-ray",
        )
        resume = (run_dir / "config.json").is_file()
        if resume:
            cmd.append("--resume")
        # a fresh run starts a fresh log (the committed log is the shipped model's; history stays in git)
        log = open(RESULTS / f"{name}.log", "a" if resume else "w")
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd[1:])}\n")
        log.flush()
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO), log)
        print(f"train: {name} started (pid {procs[name][0].pid}), log {RESULTS / (name + '.log')}")
    failed = []
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            failed.append(name)
        log.close()
        if (RUNS / name / "metrics.jsonl").is_file():
            shutil.copy(RUNS / name / "metrics.jsonl", RESULTS / f"{name}.metrics.jsonl")
    if failed:
        raise SystemExit(f"train: {', '.join(failed)} failed; see results/release/*.log, then rerun to resume")


DESCRIPTIONS = {
    "keypoints": "15 facial keypoints (Kaggle order, pixels) from a 96x96 grey face crop",
    "emotion": "5 emotions (seed5: anger, disgust, sad, happiness, surprise) from a grey face crop, 48x48",
    "emotion-fer7": "FER2013's 7 emotions (anger, disgust, fear, happiness, sad, surprise, neutral) from a grey "
    "face crop, 48x48: the default emotion model",
}
EMOTION_ONLY = ("imbalance", "label_smoothing", "mixup_alpha", "cutmix_alpha")
FP16_CHECK_FACES = 512  # test faces on which the fp16 file is compared with the fp32 checkpoint


def _machine() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (1 GPU)"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), 1 torch thread per run"


def _fp16_check(fp16_file: Path, data: Path, task: str) -> dict:
    """Largest change the fp16 file makes to the predictor's outputs on FP16_CHECK_FACES test faces,
    against the same model and meta (temperature included) stored in fp32."""
    import tempfile

    import numpy as np

    from emokp_ray.artifacts.checkpoint import save_checkpoint_file
    from emokp_ray.artifacts.export import load_model
    from emokp_ray.evaluation.evaluate import _dataset_batches
    from emokp_ray.inference.predictor import Predictor

    b = load_model(fp16_file)
    with tempfile.TemporaryDirectory() as tmp:
        reference = RUNS / fp16_file.stem / "best"
        fp32 = save_checkpoint_file(Path(tmp) / "fp32.pt", load_model(reference).model, b.meta)
        a = load_model(fp32)
    size = a.meta.input_size
    crops = np.concatenate([batch["image"] for batch in _dataset_batches(str(data), "test", task, size, 256)])[
        :FP16_CHECK_FACES
    ]
    kw = {"keypoints": (a, None), "emotion": (None, a)}[task]
    pa = Predictor(*kw, device="cpu", detector=None)
    pb = Predictor(*({"keypoints": (b, None), "emotion": (None, b)}[task]), device="cpu", detector=None)
    fa, fb = pa.predict_crops(crops), pb.predict_crops(crops)
    if task == "keypoints":
        points = [(x.keypoints, y.keypoints) for x, y in zip(fa, fb) if x.keypoints and y.keypoints]
        diff = max(abs(u - v) for kx, ky in points for k in kx for u, v in zip(kx[k], ky[k]))
        return {"faces": len(crops), "max_keypoint_change_px": float(diff)}
    probs = [(x.probabilities, y.probabilities) for x, y in zip(fa, fb) if x.probabilities and y.probabilities]
    diff = max(abs(px[c] - py[c]) for px, py in probs for c in px)
    flips = sum(x.emotion != y.emotion for x, y in zip(fa, fb))
    return {"faces": len(crops), "max_probability_change": float(diff), "changed_labels": int(flips)}


def _calm_faces(model_file: Path) -> dict:
    """How a shipped emotion model answers FER's neutral test faces (FER7 label 6, PREPARED/fer7's test
    split, which every scheme's model can be asked about): the share it calls a non-neutral emotion with
    calibrated probability >= 0.5 and >= 0.7, and the share it calls neutral (a model without the
    class: 0). Real photos are full of calm faces; a model that calls them angry or sad misleads."""
    import numpy as np

    from emokp_ray.artifacts.export import load_model
    from emokp_ray.evaluation.evaluate import _dataset_batches
    from emokp_ray.inference.predictor import Predictor

    loaded = load_model(model_file)
    batches = list(_dataset_batches(str(PREPARED / "fer7"), "test", "emotion", loaded.meta.input_size, 512))
    labels = np.concatenate([b["label"] for b in batches])
    crops = np.concatenate([b["image"] for b in batches])[labels == 6]  # fer7 6 = neutral
    faces = Predictor(None, loaded, device="cpu", detector=None).predict_crops(crops)
    emotion = np.array([max((p for c, p in f.probabilities.items() if c != "neutral"), default=0.0) for f in faces])
    return {
        "neutral_faces": len(crops),
        "called_emotion_p50": float((emotion >= 0.5).mean()),
        "called_emotion_p70": float((emotion >= 0.7).mean()),
        "called_neutral": float(np.mean([f.emotion == "neutral" for f in faces])),
    }


def _canonical_names(entry: dict) -> dict:
    """A release.json entry written with FER's words ("angry", "happy") under the one name set."""
    from emokp_ray.labels import canonical_emotion_name as name

    entry["class_names"] = [name(c) for c in entry.get("class_names", [])]
    entry["splits"] = {split: {name(k): v for k, v in c.items()} for split, c in entry.get("splits", {}).items()}
    if "per_class" in entry.get("test", {}):
        entry["test"]["per_class"] = {name(k): v for k, v in entry["test"]["per_class"].items()}
    if entry.get("task") == "emotion":
        entry["description"] = DESCRIPTIONS.get(entry["file"][: -len(".pt")], entry["description"])
    return entry


def finish(names: list[str]) -> None:
    """Per model: fit the temperature on val (emotion), write the fp16 file into the package, check it
    against the fp32 checkpoint, evaluate it on test (and val, and test without flip TTA), then
    release.json and MODEL_CARD.md."""
    import dataclasses

    from emokp_ray.artifacts.checkpoint import load_checkpoint, save_checkpoint_file
    from emokp_ray.builtin import RELEASE_FILE
    from emokp_ray.evaluation.evaluate import collect_logits, evaluate_checkpoint
    from emokp_ray.inference.calibration import fit_temperature, nll, reliability, softmax
    from emokp_ray.models.resnet import num_parameters

    BUILTIN.mkdir(parents=True, exist_ok=True)
    release_path = BUILTIN / RELEASE_FILE
    release = json.loads(release_path.read_text()) if release_path.is_file() else {"models": {}}
    for name in names:
        task, folder, _, _ = MODELS[name]
        data = PREPARED / folder
        best = RUNS / name / "best"
        loaded = load_checkpoint(best, training_state=False)
        meta = loaded.meta
        calibration: dict = {}
        if task == "emotion":
            logits, labels = collect_logits(str(best), str(data), "val")
            temperature = fit_temperature(logits, labels)
            calibration = {
                "temperature": temperature,
                "fitted_on": "val",
                "method": "temperature scaling (NLL), flip-TTA logits",
                "val_nll": [nll(logits, labels, 1.0), nll(logits, labels, temperature)],
                "val_ece": [
                    reliability(softmax(logits, 1.0), labels)["ece"],
                    reliability(softmax(logits, temperature), labels)["ece"],
                ],
            }
            print(
                f"finish: {name}: temperature {temperature:.3f} (val NLL {calibration['val_nll'][0]:.4f} -> {calibration['val_nll'][1]:.4f})"
            )
        released = dataclasses.replace(meta, run_id=f"release-{name}-{meta.run_id}", calibration=calibration)
        target = BUILTIN / f"{name}.pt"
        save_checkpoint_file(target, loaded.model, released, fp16=True)
        fp16 = _fp16_check(target, data, task)
        print(f"finish: {name}: {target} ({target.stat().st_size / 1e6:.2f} MB), fp16 vs fp32: {fp16}")
        reports = {}
        for split, tta in (("test", True), ("val", True), ("test", False)):
            key = split + ("" if tta else "_no_tta")
            out = RESULTS / f"{name}-{key}"
            reports[key] = evaluate_checkpoint(str(target), str(data), str(out), split=split, flip_tta=tta).report
            print(
                f"finish: {name}: {key}: "
                + ", ".join(
                    f"{k} {reports[key][k]:.4f}" for k in ("rmse_px", "accuracy", "macro_f1") if k in reports[key]
                )
            )
        test = reports["test"]
        keep = (
            "n",
            "rmse_px",
            "mean_shape_rmse_px",
            "per_keypoint_rmse_px",
            "near_duplicate_holdout",
            "accuracy",
            "macro_f1",
            "per_class",
            "confusion",
        )
        entry = {
            "task": task,
            "description": DESCRIPTIONS[name],
            "file": target.name,
            "size_mb": round(target.stat().st_size / 1e6, 2),
            "parameters": num_parameters(loaded.model),
            "architecture": f"{meta.train_config.get('model')} variant, {meta.input_size}x{meta.input_size} input",
            "model_config": meta.model_config.to_dict(),
            "recipe": meta.train_config.get("recipe"),
            "train_config": {k: v for k, v in meta.train_config.items() if k not in ("data_facts", "extra")},
            "epoch": meta.epoch,
            "label_scheme": meta.label_scheme,
            "class_names": list(meta.class_names),
            "splits": json.loads((data / "dataset.json").read_text())["counts"],
            "test": {k: test[k] for k in keep if k in test},
            "val": {k: reports["val"][k] for k in ("n", "rmse_px", "accuracy", "macro_f1") if k in reports["val"]},
            "test_without_flip_tta": {
                k: reports["test_no_tta"][k] for k in ("rmse_px", "accuracy", "macro_f1") if k in reports["test_no_tta"]
            },
            "fp16_check": fp16,
            "machine": _machine(),
        }
        if task == "emotion":
            entry["temperature"] = calibration["temperature"]
            entry["calibration"] = {k: v for k, v in calibration.items() if k != "temperature"}
            entry["test"]["ece"] = test["calibration"]["ece"]
            entry["test"]["ece_uncalibrated"] = test["calibration"]["ece_uncalibrated"]
        history = [
            json.loads(line) for line in (RUNS / name / "metrics.jsonl").read_text().splitlines() if line.strip()
        ]
        entry["train_seconds"] = round(
            sum(r.get("train/images", 0) / max(r.get("train/images_per_s", 1), 1e-9) for r in history)
        )
        entry["epochs_run"] = len(history)
        release["models"][name] = entry
        shutil.copy(RUNS / name / "metrics.jsonl", RESULTS / f"{name}.metrics.jsonl")
    from emokp_ray.builtin import DEFAULT_EMOTION, DEFAULT_KEYPOINTS

    for name, entry in release["models"].items():  # every shipped emotion model, rebuilt now or not
        _canonical_names(entry)
        if entry["task"] == "emotion":
            entry["test"]["calm_faces"] = _calm_faces(BUILTIN / entry["file"])
            print(f"finish: {name}: neutral test faces: {entry['test']['calm_faces']}")
    release["default"] = {"keypoints": DEFAULT_KEYPOINTS, "emotion": DEFAULT_EMOTION}
    release["regenerate"] = "python scripts/build_release_models.py all"
    tmp = release_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(release, indent=2, sort_keys=True) + "\n")
    tmp.replace(release_path)
    (BUILTIN / "MODEL_CARD.md").write_text(model_card(release))
    print(f"finish: wrote {release_path} and {BUILTIN / 'MODEL_CARD.md'}")


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def model_card(release: dict) -> str:
    """MODEL_CARD.md from release.json: every figure in it comes from the files this script wrote."""
    order = list(MODELS)
    models = dict(
        sorted(release["models"].items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    )
    lines = [
        "# emokp-ray release models: model card",
        "",
        "Generated by `python scripts/build_release_models.py finish` from `release.json` (do not edit by",
        "hand). Training logs and per-epoch metrics: `results/release/` in the repository.",
        "",
        f"Without model flags, predict, label, serve and the demo use `{release.get('default', {}).get('keypoints')}`"
        f" and `{release.get('default', {}).get('emotion')}`.",
        "",
        "| builtin | what | parameters | file | test (never used to choose) | val (chose epochs, temperature) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        t, v = m["test"], m["val"]
        if m["task"] == "keypoints":
            test_txt = f"RMSE **{_f(t.get('rmse_px'))} px** on {t.get('n')} faces (mean shape {_f(t.get('mean_shape_rmse_px'))})"
            val_txt = f"RMSE {_f(v.get('rmse_px'))} px"
        else:
            test_txt = (
                f"accuracy **{_f(t.get('accuracy'))}**, macro-F1 **{_f(t.get('macro_f1'))}** on {t.get('n')} faces, "
                f"ECE {_f(t.get('ece_uncalibrated'))} -> {_f(t.get('ece'))}"
            )
            val_txt = f"accuracy {_f(v.get('accuracy'))}, macro-F1 {_f(v.get('macro_f1'))}"
        lines.append(
            f"| `builtin:{name}` | {m['description']} | {m['parameters']:,} | {m['file']} ({m['size_mb']:.1f} MB, fp16) | {test_txt} | {val_txt} |"
        )
    lines += [
        "",
        "Figures are the predictor's: horizontal-flip test-time augmentation on (for keypoints the mirrored",
        "prediction is flipped back with left/right names swapped), emotion probabilities divided by the",
        "temperature. Without flip TTA: "
        + "; ".join(
            f"{n} " + ", ".join(f"{k} {_f(val)}" for k, val in m["test_without_flip_tta"].items())
            for n, m in models.items()
        )
        + ".",
        "",
        "## Data and splits",
        "",
        '- Emotion: FER2013 (Kaggle "Challenges in Representation Learning: Facial Expression Recognition',
        "  Challenge\", the JPEG release's pixel values), 48x48 grey faces. `test` = the PublicTest rows;",
        "  `val` = a seeded (seed 0), stratified 10% of the Training rows; `train` = the rest. `seed5` keeps",
        "  anger, disgust, sad, happiness, surprise (fear and neutral dropped); `fer7` keeps all seven.",
        '- Keypoints: Kaggle "Facial Keypoints Detection" `training.csv` format, 3,383 faces (frames of the',
        "  YouTube Faces data set with their landmarks mapped to Kaggle's 15; 1,007 carry only 4 keypoints).",
        "  Split by PERSON (`training_people.csv`: 278 people, 8-15 frames each): seeded 10% val and 10% test",
        "  of the rows by whole people, stratified by complete / partial rows, so the test figures are what",
        "  a user gets on people the model never saw (a split by near-duplicate frames left other frames of",
        "  the same people in training, so its test figure flattered the model).",
        "",
        "| model | split | rows | per class / keypoints |",
        "|---|---|---|---|",
    ]
    for name, m in models.items():
        for split, counts in m["splits"].items():
            extra = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "rows" and v)
            lines.append(f"| {name} | {split} | {counts.get('rows', 0):,} | {extra} |")
    for name, m in models.items():
        t = m["test"]
        cfg = m["train_config"]
        lines += [
            "",
            f"## `builtin:{name}`",
            "",
            f"{m['description']}. Architecture: {m['architecture']}, "
            f"{m['parameters']:,} parameters; best epoch {m['epoch']} of {m['epochs_run']} by the val metric; "
            f"{m['train_seconds'] / 60:.0f} min of training on {m['machine']}.",
            "",
            "Recipe (`emokp train "
            + m["task"]
            + " --recipe "
            + str(m["recipe"])
            + "`): "
            + ", ".join(
                f"{k}={cfg[k]}"
                for k in (
                    "model",
                    "input_size",
                    "epochs",
                    "batch_size",
                    "optimizer",
                    "lr",
                    "weight_decay",
                    "schedule",
                    "imbalance",
                    "label_smoothing",
                    "random_erasing",
                    "mixup_alpha",
                    "cutmix_alpha",
                    "ema_decay",
                    "augment",
                    "seed",
                )
                if k in cfg and not (m["task"] == "keypoints" and k in EMOTION_ONLY)
            )
            + ".",
            "",
        ]
        if m["task"] == "keypoints":
            hold = t.get("near_duplicate_holdout") or {}
            lines += [
                f"Test RMSE {_f(t.get('rmse_px'))} px over {t.get('n')} faces of people never trained on "
                f"(the mean-shape predictor: {_f(t.get('mean_shape_rmse_px'))} px)."
            ]
            if hold:
                lines += [
                    f"Near-duplicate holdout: {hold['n']} faces whose twin frame was trained on score "
                    f"{_f(hold['rmse_px'])} px; scoring all {hold['all_n']} test rows together would report "
                    f"{_f(hold['all_rmse_px'])} px: the optimism a random row split would carry."
                ]
            lines += ["", "| keypoint | test RMSE (px) |", "|---|---|"]
            from emokp_ray.labels import KEYPOINT_NAMES

            per_keypoint = t.get("per_keypoint_rmse_px", {})  # Kaggle order (release.json sorts its keys)
            order = [k for k in KEYPOINT_NAMES if k in per_keypoint] + sorted(set(per_keypoint) - set(KEYPOINT_NAMES))
            lines += [f"| {k} | {_f(per_keypoint[k])} |" for k in order]
        else:
            lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
            for cls, v in t.get("per_class", {}).items():
                lines.append(
                    f"| {cls} | {_f(v.get('precision'))} | {_f(v.get('recall'))} | {_f(v.get('f1'))} | {v.get('support')} |"
                )
            calm = t.get("calm_faces")
            if calm:
                lines += [
                    "",
                    f"Calm faces: of FER's {calm['neutral_faces']} neutral test faces it calls "
                    f"{calm['called_emotion_p50']:.1%} a non-neutral emotion with probability >= 0.5 "
                    f"({calm['called_emotion_p70']:.1%} with >= 0.7) and {calm['called_neutral']:.1%} neutral.",
                ]
            cal = m.get("calibration", {})
            lines += [
                "",
                f"Calibration: temperature T = {m['temperature']:.3f} fitted on val (NLL "
                f"{_f(cal.get('val_nll', [None, None])[0], 4)} -> {_f(cal.get('val_nll', [None, None])[1], 4)}); "
                f"on test, expected calibration error (15 bins) {_f(t.get('ece_uncalibrated'), 4)} at T = 1 -> "
                f"{_f(t.get('ece'), 4)} with T. Reliability diagram: results/release/{name}-test/reliability.png.",
            ]
        fp = m["fp16_check"]
        lines += [
            "",
            "fp16 storage against the fp32 checkpoint on "
            + str(fp["faces"])
            + " test faces: "
            + ", ".join(
                f"{k.replace('_', ' ')} {v:.2g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                for k, v in fp.items()
                if k != "faces"
            )
            + ".",
        ]
    lines += [
        "",
        "## Known limits",
        "",
        "- Grey faces only, framed like the training crops (eyes near 40% of the crop's height). In photos,",
        "  faces come from the face detector (README: detectors); profiles and faces turned far from the",
        "  camera are missed or badly framed.",
        "- Emotion labels are FER2013's: single annotators, noisy (human agreement on FER2013 is about",
        "  65%), mostly posed or web images of adults; disgust has 436 training faces. Expression is not",
        "  emotion: these models say what a face looks like, not what a person feels. Do not use them to",
        "  make decisions about people.",
        "- Accuracy by age, gender or skin tone was not measured (the data sets carry no such labels);",
        "  expect it to vary.",
        "- Keypoints: 15 points on near-frontal faces from video frames of celebrities; large pose,",
        "  occlusion and expressions far from the training frames raise the error.",
        "- The test figures come from the same data sets' held-out rows; on other photographs (light,",
        "  cameras, framing) expect lower accuracy.",
        "",
        "## Terms of use",
        "",
        "The code is Apache-2.0. The weights are derived from FER2013 (Kaggle competition data, released for",
        "research by its authors, Goodfellow et al. 2013) and from frames of the YouTube Faces data set",
        "(Wolf et al., 2011; research use) in the layout of Kaggle's Facial Keypoints Detection data. Those",
        "terms restrict the data to research and do not clearly permit commercial use; treat the weights",
        "as research-only as well, and check the data sets' terms yourself before any other use.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "train", "finish", "card", "all"])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per training process (0: torch's default); default 1 on a CPU-only machine, "
        "0 where CUDA is available (the runs train on the GPU and their data loading gets the cores)",
    )
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(MODELS)})")
    if not SHARED.is_dir() and args.step in ("prepare", "all"):
        parser.error(f"{SHARED} not found: the Kaggle files are expected there (see its README)")
    if args.step in ("prepare", "all"):
        prepare()
    if args.step in ("train", "all"):
        train(names, args.threads if args.threads is not None else _default_threads())
    if args.step in ("finish", "all"):
        finish(names)
    if args.step == "card":  # MODEL_CARD.md again from release.json, without rebuilding anything
        (BUILTIN / "MODEL_CARD.md").write_text(model_card(json.loads((BUILTIN / "release.json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
