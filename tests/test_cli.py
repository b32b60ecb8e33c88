"""The `emokp` command: --help everywhere, the data commands end to end, one-line user errors."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest

from emokp_ray.cli import build_parser, main
from emokp_ray.data.schema import read_info


def _commands(parser, prefix=()):
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


@pytest.mark.parametrize("command", list(_commands(build_parser())))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: emokp" in capsys.readouterr().out


def test_synth_then_prepare_round_trip(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "synth"), "--n", "200", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "synthesized 200 faces" in out and "train" in out and "val" in out
    info = read_info(tmp_path / "synth")
    assert info.counts["train"]["rows"] + info.counts["val"]["rows"] == 200

    csv = tmp_path / "fer.csv.gz"
    pixels = " ".join(["128"] * 48 * 48)
    rows = (
        ["emotion,pixels,Usage"]
        + [f"{label},{pixels},Training" for label in (0, 1, 3, 4, 5, 2)]
        + [f"3,{pixels},PublicTest"]
    )
    rows.append("9,1 2 3,Training")  # an unknown label with a wrong pixel count: skipped and reported
    with gzip.open(csv, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    assert main(["data", "prepare", str(csv), "--out", str(tmp_path / "fer")]) == 0
    out = capsys.readouterr().out
    assert "1 bad" in out and "line 9" in out
    info = read_info(tmp_path / "fer")
    # fear (2) dropped by seed5; val is a seeded share of Training, test the PublicTest row
    assert (
        sum(info.counts[s]["rows"] for s in ("train", "val") if s in info.counts) == 5
        and info.counts["test"]["rows"] == 1
    )

    assert main(["data", "prepare", str(csv), "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emokp: error:") and "fer.csv.gz:9" in err and "\n" not in err
    assert not (tmp_path / "strict").exists()  # nothing half-written


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["data", "prepare", "/no/such/file.csv", "--out", "OUT"], "no/such/file.csv"),
        (["data", "synth", "--out", "OUT", "--n", "-5"], "positive integer"),
        (["data", "synth", "--out", "OUT", "--seed", "-1"], "non-negative integer"),
        (["data", "prepare", "x.csv", "--out", "OUT", "--val-fraction", "2"], "fraction"),
        (["train", "emotion", "--data", "D"], "--out"),
        (["frobnicate"], "invalid choice"),
        (["predict", "x.jpg", "--detector", "dlib"], "invalid choice: 'dlib' (choose from 'mtcnn', 'haar')"),
        (["predict", "x.jpg", "--detector-threshold", "1.5"], "expected a number in (0, 1)"),
        (["label", "IN", "--out", "OUT", "--detector-threshold", "0"], "expected a number in (0, 1)"),
        (["serve", "--detector", "yolo"], "invalid choice: 'yolo'"),
    ],
)
def test_user_errors_are_one_line(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emokp: error:") and needle in err and "\n" not in err


def test_console_script_exits_2_without_traceback(tmp_path):
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)) * 10)
    proc = subprocess.run(
        [sys.executable, "-m", "emokp_ray.cli", "data", "prepare", str(binary), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1 and "bin.csv" in proc.stderr


# ----------------------------------------------------------------------------- train: flags from TrainConfig


def _train_args(*flags, task="keypoints"):
    return build_parser().parse_args(["train", task, "--data", "D", "--out", "O", *flags])


def test_train_has_one_flag_per_config_field_each_with_its_comment_as_help():
    import dataclasses

    from emokp_ray.cli import _field_comments
    from emokp_ray.training.config import TrainConfig

    train = next(a for a in build_parser()._actions if isinstance(a.choices, dict)).choices["train"]
    flags = {a.dest: a for a in train._actions if a.option_strings and a.dest != "help"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(flags) == fields - {"task"}  # task is the positional TASK
    comments = _field_comments(TrainConfig)
    assert set(comments) == fields  # every field is documented
    for name in fields - {"task", "data", "out", "recipe"}:  # those four keep their own help
        assert flags[name].help.startswith(comments[name]) and "(default" in flags[name].help
    # a comment continues on the lines right under its field, and a section heading is no one's help
    assert comments["ema_decay"].endswith("checkpoints use the average (0 = off; 0.999 ~ the last 1,000 steps)")
    assert "fer48" in comments["model"] and "torch uses this node's cores" in comments["cpus_per_worker"]
    assert not any("---" in text for text in comments.values())


def test_field_comments_rules():
    import dataclasses

    from emokp_ray.cli import _field_comments

    @dataclasses.dataclass
    class Example:
        a: int = 1  # first line
        # second line
        b: int = 2
        # a comment under a field without one is not its help
        c: tuple[int, ...] = (
            1,
            2,
        )  # after a multi-line default
        d: str = ""  # ends at a heading
        # --- heading ---
        e: float = 0.5  # ends at a blank line

        # not e's

        def method(self) -> int:  # not a field
            x: int = 3  # not a field either
            return x

    assert _field_comments(Example) == {
        "a": "first line second line",
        "c": "after a multi-line default",
        "d": "ends at a heading",
        "e": "ends at a blank line",
    }


def test_without_source_the_flags_have_no_comment_help_but_work(tmp_path, monkeypatch):
    import importlib
    import inspect
    import py_compile
    import zipfile

    from emokp_ray import cli

    module = "from dataclasses import dataclass\n\n\n@dataclass\nclass Cfg:\n    epochs: int = 1  # passes\n"
    (tmp_path / "zcfg_src.py").write_text(module)
    py_compile.compile(str(tmp_path / "zcfg_src.py"), cfile=str(tmp_path / "zcfg_pyc.pyc"), doraise=True)
    with zipfile.ZipFile(tmp_path / "site.zip", "w") as zf:  # a zipped install: one with source, one bytecode only
        zf.write(tmp_path / "zcfg_src.py", "zcfg_src.py")
        zf.write(tmp_path / "zcfg_pyc.pyc", "zcfg_pyc.pyc")
    (tmp_path / "zcfg_src.py").unlink()
    monkeypatch.syspath_prepend(str(tmp_path / "site.zip"))
    for name in ("zcfg_src", "zcfg_pyc"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert cli._field_comments(importlib.import_module("zcfg_src").Cfg) == {"epochs": "passes"}
    assert cli._field_comments(importlib.import_module("zcfg_pyc").Cfg) == {}
    made = {}
    exec("import dataclasses\n@dataclasses.dataclass\nclass Cfg:\n    epochs: int = 1  # passes\n", made)
    assert cli._field_comments(made["Cfg"]) == {}

    def no_source(obj):
        raise OSError("source code not available")

    monkeypatch.setattr(inspect, "getsource", no_source)
    train = next(a for a in build_parser()._actions if isinstance(a.choices, dict)).choices["train"]
    epochs = next(a for a in train._actions if a.dest == "epochs")
    assert epochs.help == "(default, recipe release: keypoints 80, emotion 40)"
    assert cli._train_config(_train_args("--epochs", "3")).epochs == 3


@pytest.mark.parametrize(
    "task, flags, expected",
    [
        ("keypoints", [], dict(recipe="release", model="compact", epochs=80, use_gpu=None, amp=None, augment=True)),
        ("emotion", [], dict(model="fer48", input_size=48, imbalance="sampling", warmup_fraction=0.2, no_ray=False)),
        ("emotion", ["--gpu", "--workers", "4", "--batch-size", "256", "--lr", "4e-3"], dict(use_gpu=True, workers=4)),
        ("emotion", ["--batch-size", "256", "--lr", "4e-3"], dict(batch_size=256, lr=4e-3)),
        ("keypoints", ["--no-gpu", "--no-augment", "--no-amp"], dict(use_gpu=False, augment=False, amp=False)),
        ("keypoints", ["--amp", "--no-channels-last"], dict(amp=True, channels_last=False)),
        (
            "keypoints",
            ["--drop-incomplete", "--resume", "--no-ray"],
            dict(drop_incomplete=True, resume=True, no_ray=True),
        ),
        ("keypoints", ["--recipe", "course"], dict(recipe="course", optimizer="adam", augment=False, epochs=60)),
        ("keypoints", ["--recipe", "course", "--augment", "--epochs", "2"], dict(augment=True, epochs=2)),
        ("emotion", ["--recipe", "fast", "--model", "course", "--seed", "5"], dict(model="course", seed=5)),
        (
            "emotion",
            ["--warmup-fraction", "0.3", "--storage", "s3://b/r"],
            dict(warmup_fraction=0.3, storage="s3://b/r"),
        ),
        ("emotion", ["--cpus-per-worker", "1.5", "--cutmix-alpha", "1"], dict(cpus_per_worker=1.5, cutmix_alpha=1.0)),
        ("emotion", ["--early-stopping", "3", "--keep-checkpoints", "1"], dict(early_stopping=3, keep_checkpoints=1)),
        ("emotion", ["--max-steps-per-epoch", "2", "--limit-rows", "32"], dict(max_steps_per_epoch=2, limit_rows=32)),
    ],
)
def test_train_flags_override_the_recipe(task, flags, expected):
    from emokp_ray import cli

    cfg = cli._train_config(_train_args(*flags, task=task))
    assert (cfg.task, cfg.data, cfg.out) == (task, "D", "O")
    assert {name: getattr(cfg, name) for name in expected} == expected


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--epochs", "0"], "positive integer"),
        (["--epochs", "two"], "positive integer"),
        (["--lr", "0"], "--lr: expected a positive number"),
        (["--seed", "-1"], "--seed"),
        (["--limit-rows", "-1"], "non-negative integer"),
        (["--cpus-per-worker", "-1"], "non-negative number"),
        (["--model", "huge"], "invalid choice"),
        (["--warmup-fraction", "1"], "--warmup-fraction must be in (0, 1)"),
        (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
        (["--mixup-alpha", "0.2"], "emotion only"),  # the keypoints task
        (["--workers", "8", "--batch-size", "4"], "smaller than --workers"),
        (["--recipe", "nope"], "unknown recipe"),
    ],
)
def test_bad_train_values_are_one_line_errors_before_training(flags, needle, tmp_path, capsys):
    assert main(["train", "keypoints", "--data", str(tmp_path / "D"), "--out", str(tmp_path / "O"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emokp: error:") and needle in err and "\n" not in err
    assert not (tmp_path / "O").exists()


def test_train_help_shows_each_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert (
        "--warmup-fraction WARMUP_FRACTION one-cycle: share of steps spent warming up, in (0, 1) (default: 0.2)" in out
    )
    assert "passes over the train split (default, recipe release: keypoints 80, emotion 40)" in out
    assert "--gpu, --no-gpu train on GPUs; None: when the cluster has them (default: None)" in out
    assert "--no-ray one process without Ray" in out and "--no-no-ray" not in out
