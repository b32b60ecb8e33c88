"""`emokp demo` end to end (reduced run) in its own process and Ray cluster: every stage, the
learning thresholds, re-runs over old output, refusal of a foreign folder, Ctrl-C cleanup."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from emokp_ray.cli import main

pytestmark = pytest.mark.ray


@pytest.fixture
def ray_root():
    """A private, short Ray temp root (Unix socket paths must stay under 108 bytes): this run's
    processes are recognizable by it (Ctrl-C test)."""
    root = tempfile.mkdtemp(prefix="emokp-demo-ray-", dir="/tmp")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _demo_env(ray_root: str) -> dict[str, str]:
    return {**os.environ, "RAY_TMPDIR": ray_root, "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_quick_demo_learns_labels_serves_and_reports(tmp_path, ray_root):
    out = tmp_path / "demo"
    out.mkdir()
    (out / ".emokp-demo").write_text("an earlier run\n")
    (out / "stale.txt").write_text("left over from an earlier run\n")
    proc = subprocess.run(
        [sys.executable, "-m", "emokp_ray.cli", "demo", "--out", str(out), "--quick"],
        capture_output=True,
        text=True,
        timeout=900,
        env=_demo_env(ray_root),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in range(1, 8):
        assert f"[{stage}/7]" in proc.stdout
    assert not (out / "stale.txt").exists()  # a re-run replaces the old output
    summary = json.loads((out / "report" / "summary.json").read_text())
    # the synthetic data is learnable: well under half the mean-shape error, emotion above 90%
    assert summary["keypoints"]["rmse_px"] < 0.5 * summary["keypoints"]["mean_shape_rmse_px"]
    assert summary["emotion"]["accuracy"] > 0.90
    labels = summary["labels"]
    assert labels["images"] == 3 + 2 and labels["errors"] == 2 and labels["faces"] >= 1
    answers = json.loads((out / "report" / "serve_answers.json").read_text())
    assert answers["good_photo"]["status"] == 200 and answers["good_photo"]["body"]["faces"]
    assert answers["bad_photo"]["status"] in (400, 415) and answers["bad_photo"]["body"]["error"]
    index = (out / "report" / "index.html").read_text()
    for figure in ("keypoints/learning_curves.png", "emotion/confusion.png", "served.png"):
        assert figure in index and (out / "report" / figure).is_file()
    assert (out / "labels" / "labels.parquet").is_dir() and (
        out / "labels" / "summary.json"
    ).is_file()  # part files, complete
    # the shipped models on the bundled real photos (skipped in one line where they are not shipped)
    real = summary["real_photos"]
    if (Path(__file__).resolve().parents[1] / "emokp_ray" / "builtin" / "emotion.pt").is_file():
        assert [p["photo"] for p in real["photos"]] == [
            "eileen_collins_nasa.jpg",
            "grace_hopper_us_navy.jpg",
            "eileen_collins_nasa.jpg tilted 30 deg",  # found by MTCNN and aligned by its landmarks
        ]
        assert all(len(p["faces"]) == 1 for p in real["photos"]) and "real/grace_hopper_us_navy.png" in index
        assert "real/eileen_collins_nasa_tilted.png" in index
    else:
        assert real["line"].startswith("skipped:")


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("important\n")
    assert main(["demo", "--out", str(foreign)]) == 2
    assert "not an emokp demo folder" in capsys.readouterr().err
    assert (foreign / "thesis.tex").exists()


@pytest.mark.slow
def test_ctrl_c_leaves_no_ray_processes(tmp_path, ray_root):
    env = _demo_env(ray_root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "emokp_ray.cli", "demo", "--out", str(tmp_path / "demo"), "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 300
        for line in proc.stdout:  # wait until training (and so the Ray cluster) has started
            if "[2/7]" in line or time.time() > deadline:
                break
        time.sleep(8)
        proc.send_signal(signal.SIGINT)
        # 130 from our handler, or 1 where Ray Train's own SIGINT handling ends the driver first
        assert proc.wait(timeout=120) in (1, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 30
    while time.time() < deadline:
        left = subprocess.run(["pgrep", "-f", ray_root], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(1)
    assert not left, f"Ray processes left behind: {left}"
