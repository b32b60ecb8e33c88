"""Resumable batch labeling: a driver killed with SIGKILL mid-run (`emokp label`, and the Ray Job
entrypoint `jobs/label.py` writing to a file:// URI), then `--resume`, ends with every input exactly
once; a resume pointed at another run's output is refused with the reason; a run with more errors
than accepted fails after writing its summary.

The killed drivers are subprocesses joined to the session's Ray cluster (RAY_ADDRESS): when a driver
dies, Ray stops its job's tasks and actors, as on any cluster."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emokp_ray.cli import main
from emokp_ray.data.synth.crops import synthesize
from emokp_ray.errors import UserError
from emokp_ray.inference.label import LabelSummary, run_label
from emokp_ray.inference.label_output import PARQUET_DIR, SUMMARY_FILE, read_labels
from tests.helpers import write_tiny_checkpoints
from tests.test_jobs import _job

REPO = Path(__file__).resolve().parents[1]
N_CROPS = 960  # 60 parts of 16 crops: the kill lands mid-run even on a fast machine
KILL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[str, str]:
    kp, em = write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))
    return str(kp), str(em)


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """N_CROPS 96x96 face crops in 4 sub-folders (the walk lists one folder at a time)."""
    folder = tmp_path_factory.mktemp("resume") / "crops"
    for i, image in enumerate(synthesize(N_CROPS, seed=5).images):
        path = folder / f"d{i % 4}" / f"crop_{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    return folder


def _parts(out: Path) -> dict[str, int]:
    """Parquet part -> its size (whole parts only: hidden temporaries are not parts)."""
    folder = out / PARQUET_DIR
    return {p.name: p.stat().st_size for p in folder.glob("part-*.parquet")} if folder.is_dir() else {}


def _kill_mid_run(command: list[str], out: Path) -> dict[str, int]:
    """Start a labeling driver, SIGKILL it once its first part is written, wait until Ray has
    stopped the dead driver's workers (no new part for 5 s); returns the parts left."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while not _parts(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read().decode()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    parts, still = _parts(out), time.monotonic()
    while time.monotonic() - still < 5:
        time.sleep(0.5)
        if _parts(out) != parts:
            parts, still = _parts(out), time.monotonic()
    return parts


def _expected_sources(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("entry", ["cli", "job"])
def test_a_driver_killed_mid_run_resumes_to_every_input_exactly_once(
    ray_cluster, crops, checkpoints, tmp_path, entry, capsys
):
    out = tmp_path / "out"
    target = str(out) if entry == "cli" else out.as_uri()  # the job writes through a file:// URI
    flags = [
        str(crops),
        "--keypoints",
        checkpoints[0],
        "--emotion",
        checkpoints[1],
        "--out",
        target,
        "--batch-size",
        "2",
        "--concurrency",
        "1",
        "--detect",
        "crop",
        "--jsonl",
    ]
    command = (
        [sys.executable, "-m", "emokp_ray.cli", "label", *flags]
        if entry == "cli"
        else [sys.executable, "jobs/label.py", *flags, "--cpus-per-actor", "1", "--no-gpu"]
    )
    before = _kill_mid_run(command, out)
    assert not (out / SUMMARY_FILE).exists()
    with pytest.raises(UserError, match="not a complete"):
        read_labels(target)
    written_before = len(set(_sources(out)))
    assert 0 < written_before < N_CROPS, written_before

    # another run's output is refused with the reason, and nothing is touched
    with pytest.raises(UserError, match=r"holds another run's output \(models: "):
        run_label(
            str(crops),
            None,
            checkpoints[1],
            target,
            batch_size=2,
            detect="crop",
            jsonl=True,
            resume=True,
            progress=False,
        )
    with pytest.raises(UserError, match=r"holds another run's output \(INPUT: "):
        run_label(
            str(crops / "d0"),
            *checkpoints,
            target,
            batch_size=2,
            detect="crop",
            jsonl=True,
            resume=True,
            progress=False,
        )
    with pytest.raises(UserError, match="unfinished run .*add --resume"):
        run_label(str(crops), *checkpoints, target, batch_size=2, detect="crop", jsonl=True, progress=False)
    assert _parts(out) == before

    if entry == "cli":
        assert main(["label", *flags, "--resume"]) == 0
    else:
        assert _job("label").label([*flags, "--cpus-per-actor", "1", "--no-gpu", "--resume"]) == 0
    assert "resumed:" in capsys.readouterr().out

    table = read_labels(target)
    firsts = [s for s, k in zip(table["source"].to_pylist(), table["face_index"].to_pylist()) if k <= 0]
    counted = collections.Counter(firsts)
    assert sorted(counted) == _expected_sources(crops) and set(counted.values()) == {1}  # exactly once by source
    assert set(table["status"].to_pylist()) == {"ok"} and table.num_rows == N_CROPS
    after = _parts(out)
    assert all(after.get(name) == size for name, size in before.items())  # what was written is kept as it was
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert (summary["images"], summary["faces"], summary["resumed"]) == (N_CROPS, N_CROPS, written_before)
    jsonl = [
        json.loads(line)["source"]
        for part in sorted((out / "labels.jsonl").glob("part-*.jsonl"))
        for line in part.read_text().splitlines()
    ]
    assert sorted(jsonl) == sorted(firsts)  # JSONL exactly once too
    assert not list(out.rglob(".*tmp-*"))  # the killed run's temporaries removed


def _sources(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [
        s
        for part in sorted((out / PARQUET_DIR).glob("part-*.parquet"))
        for s in pq.read_table(part, columns=["source"])["source"].to_pylist()
    ]


def test_a_run_without_any_labelled_input_fails():
    summary = LabelSummary(
        input="in",
        input_kind="images",
        images=3,
        faces=0,
        no_face=0,
        errors=3,
        skipped_files=0,
        seconds=1.0,
        images_per_s=3.0,
        startup_s=0.5,
        steady_images_per_s=0.0,
        parquet="out/labels.parquet",
        jsonl=None,
        annotate_dir=None,
        actors="1 actor",
    )
    assert "no input was labelled: all 3 inputs are errors" in summary.failure()
    ok = LabelSummary(**{**summary.to_dict(), "errors": 1, "faces": 2})
    assert ok.failure() is None and ok.failure(0.5) is None
    assert "1 of 3 inputs are errors (33.3%), more than --max-error-fraction 0.2" in ok.failure(0.2)


@pytest.mark.ray
def test_label_exits_non_zero_past_max_error_fraction_with_the_summary_written(
    ray_cluster, checkpoints, tmp_path, capsys
):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(synthesize(3, seed=1).images):
        Image.fromarray(image).save(folder / f"ok_{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    args = [
        "label",
        str(folder),
        "--keypoints",
        checkpoints[0],
        "--emotion",
        checkpoints[1],
        "--out",
        str(out),
        "--concurrency",
        "1",
        "--detect",
        "crop",
    ]
    assert main([*args, "--max-error-fraction", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "emokp: error: 1 of 4 inputs are errors (25.0%), more than --max-error-fraction 0.2" in err
    summary = json.loads((out / SUMMARY_FILE).read_text())  # the run itself is complete
    assert (summary["images"], summary["errors"], summary["faces"]) == (4, 1, 3)
    assert np.isclose(sum(summary["emotions"].values()), 3)
