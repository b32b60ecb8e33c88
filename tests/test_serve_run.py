"""`run_serve` (behind `emokp serve`) in a child process of its own: it prints the URL, answers on
127.0.0.1:PORT, and SIGTERM stops it with exit status 0 and no Ray process left behind. Ctrl-C takes
the same path (SIGTERM is turned into the KeyboardInterrupt that Ctrl-C raises): one child process
checks the drain, an in-process test checks that both signals end in that KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import write_tiny_checkpoints

requests = pytest.importorskip("requests")
pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session_processes(sid: int) -> list[str]:
    """Processes still in the child's session (Ray's raylet, GCS, workers... would be)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,sid=,args="], capture_output=True, text=True, check=True).stdout
    return [" ".join(line.split()[2:]) for line in out.splitlines() if int(line.split()[1]) == sid]


@pytest.mark.slow
def test_run_serve_answers_then_drains_and_stops_cleanly_on_sigterm(tmp_path):
    # SIGTERM (Docker, systemd, Kubernetes) while a request is in the model (each batch takes 3 s
    # here): that request is still answered, then Serve and Ray shut down, status 0, one line, no
    # stack dump, no Ray process left, the port closed.
    kp, em = write_tiny_checkpoints(tmp_path)
    port = _free_port()
    code = (
        "from emokp_ray.serving import app; from tests.helpers import slow_face_model; "
        "app.FaceModel = slow_face_model(3.0); from emokp_ray.serving.run import run_serve; "
        f"run_serve({str(kp)!r}, {str(em)!r}, port={port})"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster of its own
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        line, head = "", ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "http://" not in line:
            line = child.stdout.readline()
            head += line
            assert line or child.poll() is None, "run_serve exited early"
        assert f"http://127.0.0.1:{port}/" in line
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "<title>emokp-ray demo</title>" in page.text

        running = " ".join(_session_processes(child.pid))
        assert "raylet" in running and "gcs_server" in running  # so the check below means something

        crop = tiny_png()
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                requests.post,
                f"http://127.0.0.1:{port}/v1/predict",
                data=crop,
                headers={"Content-Type": "image/png"},
                timeout=60,
            )
            time.sleep(1.0)  # the request is in the model's 3 s batch now
            child.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["faces"]) == 1
        assert child.wait(timeout=120) == 0
        rest = child.stdout.read()
        assert "stopping" in rest
        for dump in ("Traceback", "Stack (most recent", "SIGTERM received", "Fatal Python error", "*** "):
            assert dump not in rest, rest
        # A quiet stop: Serve 2.60's own shutdown prints that its controller's graceful_shutdown
        # call "failed" and will be retried (run.shutdown_serve says why); no warning of any kind.
        for noise in ("graceful_shutdown failed", "retries remaining", "Warning", "WARNING"):
            assert noise not in head + rest, head + rest
        deadline = time.monotonic() + 30  # Ray's processes exit right after the driver's shutdown
        while _session_processes(child.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session_processes(child.pid) == []
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_and_sigterm_both_end_the_wait_in_a_keyboard_interrupt(ray_cluster, stop):
    # As run_serve sets it up: after ray.init (whose core worker installs a SIGTERM handler of its
    # own), so the drain above runs for either signal.
    from emokp_ray.serving.run import _stop_on_sigterm

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    # Python's own Ctrl-C handler, as a fresh `emokp serve` process has it (an earlier test's
    # library may have installed another in this process).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), stop)
            time.sleep(5.0)  # the handler runs between bytecodes, well before this ends
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def tiny_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((96, 96), 100, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_serve_refuses_an_untrusted_torchscript_file_before_starting_anything(tmp_path):
    from emokp_ray.artifacts.export import export_checkpoint

    kp, _ = write_tiny_checkpoints(tmp_path)
    scripted = export_checkpoint(kp, tmp_path / "keypoints.ts")
    result = subprocess.run(
        [sys.executable, "-m", "emokp_ray.cli", "serve", "--keypoints", str(scripted)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("emokp: error:") and "--trust-torchscript" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
