"""The Ray Job entrypoints (jobs/*.py) without a cluster: URI staging, flag forwarding to `emokp`,
the `both` plan, one-line errors. file:// URIs go through the same pyarrow code path as s3://.
tests/test_cluster.py submits them to a real two-node cluster."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from emokp_ray.artifacts.checkpoint import load_checkpoint
from emokp_ray.errors import UserError
from tests.helpers import write_random_dataset, write_tiny_checkpoints

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def _job(name: str):
    """Load jobs/<name>.py as `python jobs/<name>.py` sees it (jobs/ first on sys.path for job_common)."""
    if str(JOBS) not in sys.path:
        sys.path.insert(0, str(JOBS))
    spec = importlib.util.spec_from_file_location(f"emokp_job_{name}", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def common():
    return _job("job_common")


def test_staged_output_starts_from_the_uri_and_uploads_even_after_a_failure(common, tmp_path):
    remote = tmp_path / "bucket" / "run"
    remote.mkdir(parents=True)
    (remote / "config.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with common.staged_output(remote.as_uri()) as local:
            assert Path(local) != remote and (Path(local) / "config.json").read_text() == "{}"
            (Path(local) / "ray" / "checkpoint_000001").mkdir(parents=True)
            (Path(local) / "ray" / "checkpoint_000001" / "model.pt").write_bytes(b"w")
            raise RuntimeError("the training failed")
    # what the run left is on the "remote" side, so a --resume elsewhere starts from it
    assert (remote / "ray" / "checkpoint_000001" / "model.pt").read_bytes() == b"w"
    assert not Path(local).exists()  # the staging folder is gone


def test_staged_output_of_a_new_uri_and_of_a_plain_path(common, tmp_path):
    remote = tmp_path / "bucket" / "new" / "reports"
    with common.staged_output(remote.as_uri()) as local:
        assert not Path(local).exists()  # the command creates it
        Path(local).mkdir()
        (Path(local) / "report.json").write_text('{"n": 1}')
    assert json.loads((remote / "report.json").read_text()) == {"n": 1}
    with common.staged_output(str(tmp_path / "plain")) as local:
        assert local == str(tmp_path / "plain")


def test_staged_input_downloads_files_and_folders(common, tmp_path):
    folder = tmp_path / "bucket" / "best"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("m")
    file = tmp_path / "bucket" / "test.csv"
    file.write_text("a,b\n")
    with common.staged_input(folder.as_uri()) as local_folder, common.staged_input(file.as_uri()) as local_file:
        assert Path(local_folder).name == "best" and (Path(local_folder) / "meta.json").read_text() == "m"
        assert Path(local_file).name == "test.csv" and Path(local_file).read_text() == "a,b\n"
        assert Path(local_folder).resolve() != folder.resolve()
    assert not Path(local_folder).exists()
    with common.staged_input(str(folder)) as local:
        assert local == str(folder)
    with pytest.raises(UserError, match="no such file or folder"):
        with common.staged_input((tmp_path / "missing").as_uri()):
            pass


def test_run_job_prints_a_user_error_as_one_line_and_exits_2(common, capsys):
    def body(argv):
        common.require_path("s3://bucket/data", "--data", "workers read it")

    assert common.run_job(body) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data s3://bucket/data: must be a path every node sees" in err


def test_train_plan_of_both_tasks_and_its_errors():
    train = _job("train")
    runs = train.plan_runs("both", "s3://bucket/runs/r1/", "/data/all", emotion_data="/data/fer")
    assert runs == [
        ("keypoints", "/data/all", "s3://bucket/runs/r1/keypoints"),
        ("emotion", "/data/fer", "s3://bucket/runs/r1/emotion"),
    ]
    assert train.plan_runs("emotion", "/runs/e", None, emotion_data="/data/fer") == [
        ("emotion", "/data/fer", "/runs/e")
    ]
    with pytest.raises(UserError, match="--keypoints-data"):
        train.plan_runs("both", "/runs", None, emotion_data="/data/fer")
    # a data set URI is passed through: Ray Data and the driver read it with pyarrow filesystems
    assert train.plan_runs("keypoints", "/runs", "gs://bucket/data") == [("keypoints", "gs://bucket/data", "/runs")]


def test_train_job_refuses_remote_storage_and_bad_forwarded_flags(tmp_path, capsys):
    train = _job("train")
    common = _job("job_common")
    assert common.run_job(train.train, ["keypoints", "--data", "/d", "--out", "/o", "--storage", "s3://b/ray"]) == 2
    assert "--storage s3://b/ray" in capsys.readouterr().err
    # a flag the job does not know goes to `emokp train`, which rejects a bad value in one line
    assert (
        common.run_job(
            train.train, ["keypoints", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs", "0"]
        )
        == 2
    )
    assert "--epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_train_job_trains_both_evaluates_and_uploads_to_a_uri(tmp_path):
    """`jobs/train.py both ... --no-ray --evaluate val` with --out a file:// URI: keypoints, then
    emotion, each run folder arriving whole under OUT/<task> (best/, metrics.jsonl, eval-val/)."""
    train = _job("train")
    data = write_random_dataset(tmp_path / "data", n_train=32, n_val=16)
    remote = tmp_path / "bucket" / "runs" / "r1"
    code = train.train(
        [
            "both",
            "--data",
            str(data),
            "--out",
            remote.as_uri(),
            "--no-ray",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--max-steps-per-epoch",
            "1",
            "--evaluate",
            "val",
        ]
    )
    assert code == 0
    for task in ("keypoints", "emotion"):
        run = remote / task
        assert load_checkpoint(run / "best").meta.task == task
        assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
        report = json.loads((run / "eval-val" / "report.json").read_text())
        assert report["task"] == task and report["n"] == 16
    # keypoints ran first: its run folder was complete before the emotion run started
    assert (remote / "keypoints" / "config.json").stat().st_mtime <= (
        remote / "emotion" / "config.json"
    ).stat().st_mtime


def test_evaluate_job_reads_and_writes_uris(tmp_path):
    evaluate = _job("evaluate")
    data = write_random_dataset(tmp_path / "bucket" / "data", n_train=8, n_val=8, size=48)
    _, emotion = write_tiny_checkpoints(tmp_path / "bucket" / "ckpt")
    out = tmp_path / "bucket" / "reports" / "tiny"
    code = evaluate.evaluate(
        [
            "--checkpoint",
            emotion.as_uri(),
            "--data",
            data.as_uri(),
            "--out",
            out.as_uri(),
            "--split",
            "val",
            "--batch-size",
            "4",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "emotion" and report["n"] == 8


def test_label_job_takes_emokp_labels_flags_and_refuses_uris_for_checkpoints(monkeypatch, capsys):
    """jobs/label.py parses with `emokp label`'s own parser: the same flags reach run_label the same
    way from both, and a flag `emokp label` does not know is refused by the job too."""
    import emokp_ray.inference.label as label_module

    calls = []

    class Summary:
        def failure(self, max_error_fraction):
            return None

    def fake_run_label(*args, **kwargs):
        calls.append((args, kwargs))
        return Summary()

    monkeypatch.setattr(label_module, "run_label", fake_run_label)
    label = _job("label")
    flags = ["imgs", "--emotion", "/c", "--out", "/o", "--concurrency", "1-4", "--threads", "2", "--detector", "haar"]
    assert label.label(flags) == 0
    from emokp_ray.cli import main

    assert main(["label", *flags]) == 0
    assert len(calls) == 2 and calls[0] == calls[1]
    args, kwargs = calls[0]
    assert args == ("imgs", None, "/c", "/o")
    assert kwargs["concurrency"] == (1, 4) and kwargs["threads"] == 2 and kwargs["detector"] == "haar"
    assert main(["label", "imgs", "--out", "/o"]) == 0
    assert calls[-1][1]["concurrency"] is None  # an auto-sized pool
    for bad in ("0", "3-2", "2-", "x"):
        with pytest.raises(UserError, match="--concurrency: expected N or MIN-MAX"):
            label.label(["imgs", "--out", "/o", "--concurrency", bad])
    with pytest.raises(UserError, match="emokp: unrecognized arguments: --num-cpus"):
        label.label(["imgs", "--out", "/o", "--num-cpus", "1"])
    with pytest.raises(UserError, match="--emotion s3://bucket/best: must be a path every node sees"):
        label.label(["imgs", "--emotion", "s3://bucket/best", "--out", "/o"])
    assert len(calls) == 3
