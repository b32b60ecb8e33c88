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
