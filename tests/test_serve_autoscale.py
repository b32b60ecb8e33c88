"""Serve's replica autoscaling on the local Ray, over real HTTP: under load the model deployment grows
from 1 to 2 replicas, every request is answered meanwhile, and after the load stops it shrinks back
to 1 while a lone client is still answered.

The app is the real one (`compose`, FaceModel's own autoscaling_config: 1-2 replicas, target 1.5
ongoing calls) with tiny checkpoints; only the delays are short (Ray's defaults: 30 s up, 600 s
down). Each model call also sleeps SERVICE_S (tests/helpers.slow_face_model), so a call lasts as long
whatever else runs on this shared machine, and the replicas take little CPU: 0.25 each, so that two
fit beside the ingress on the session's 4 logical CPUs."""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import serving_model, slow_face_model, write_tiny_checkpoints

requests = pytest.importorskip("requests")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
APP = "emokp-autoscale"
SERVICE_S = 0.2  # each model call's extra sleep
# Short delays for the test. metrics_interval_s is how often the ingress's handle reports the model
# calls it has in flight to Serve's controller: Ray 2.60 deprecates the field (with a warning) in
# favour of environment variables that nothing reads yet, and its router still pushes at this
# interval, so it is the knob that works. look_back_period_s must exceed it.
FAST_AUTOSCALING = {
    "upscale_delay_s": 1.0,
    "downscale_delay_s": 3.0,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2.0,
}
CLIENTS = 8  # closed-loop clients under load: the ingress keeps 2 model calls in flight all the time


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _crop_png() -> bytes:
    import io

    from PIL import Image

    from emokp_ray.data.synth.crops import synthesize

    buffer = io.BytesIO()
    Image.fromarray(synthesize(1, seed=3).images[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def _model_replicas() -> Counter:
    """FaceModel's replicas by state (RUNNING, STARTING, STOPPING, ...), from Serve's controller."""
    from ray import serve

    deployment = serve.status().applications[APP].deployments["FaceModel"]
    return Counter({str(getattr(state, "value", state)): n for state, n in deployment.replica_states.items()})


class Load:
    """`clients` threads POSTing a crop in a loop until stopped; every answer's status kept."""

    def __init__(self, url: str, body: bytes, clients: int):
        self.url, self.body = url, body
        self.statuses: Counter = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    status: Any = session.post(
                        self.url, data=self.body, headers={"Content-Type": "image/png"}, timeout=60
                    ).status_code
                except requests.RequestException as err:
                    status = type(err).__name__
                with self.lock:
                    self.statuses[status] += 1

    def finish(self) -> Counter:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)
        return self.statuses


def _wait_for(condition, timeout_s: float, what: str, timeline: list) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replicas = _model_replicas()
        timeline.append((round(time.monotonic(), 1), dict(replicas)))
        if condition(replicas):
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s:.0f} s; FaceModel replicas over time: {timeline}")


def _shipped_model_autoscaling() -> dict:
    """FaceModel's autoscaling_config in serve/config.yaml: what `serve run` and the RayService use."""
    import yaml

    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    (app,) = config["applications"]
    return dict(next(d for d in app["deployments"] if d["name"] == "FaceModel")["autoscaling_config"])


@pytest.fixture(scope="module")
def autoscaled(ray_cluster, tmp_path_factory):
    from ray import serve

    from emokp_ray.serving.app import compose
    from emokp_ray.serving.run import shutdown_serve
    from emokp_ray.serving.schemas import AppArgs

    kp, em = write_tiny_checkpoints(tmp_path_factory.mktemp("autoscale-ckpt"))
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    autoscaling = {**_shipped_model_autoscaling(), **FAST_AUTOSCALING}
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 2)
    # Admission by expected wait off: it would refuse (503) what this test needs to see queue up and
    # drive the model deployment's growth (tests/test_serve_load.py tests the wait budget).
    args = AppArgs(keypoints=str(kp), emotion=str(em), detect=False, max_batch_size=4, max_queue_wait_s=None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*metrics_interval_s.*", category=DeprecationWarning)
        with serving_model(slow_face_model(SERVICE_S)):
            app = compose(
                args,
                model_options={"autoscaling_config": autoscaling, "ray_actor_options": {"num_cpus": 0.25}},
                ingress_options={
                    "num_replicas": 1,
                    "autoscaling_config": None,
                    "ray_actor_options": {"num_cpus": 0.25},
                },
            )
        serve.run(app, name=APP, route_prefix="/as")
    try:
        yield f"http://127.0.0.1:{port}/as"
    finally:
        serve.delete(APP)
        shutdown_serve()


def test_model_deployment_grows_under_load_and_shrinks_after_it(autoscaled):
    url = autoscaled + "/v1/predict"
    body = _crop_png()
    timeline: list = []
    first = requests.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=60)
    assert first.status_code == 200, first.text
    assert _model_replicas() == Counter({"RUNNING": 1})

    load = Load(url, body, CLIENTS)
    try:
        _wait_for(lambda r: r["RUNNING"] == 2, 180, "FaceModel did not reach 2 running replicas under load", timeline)
        time.sleep(2.0)  # a while on two replicas: the answers keep coming
        with load.lock:
            answered_before = sum(load.statuses.values())
        time.sleep(2.0)
        with load.lock:
            assert sum(load.statuses.values()) > answered_before, "no answers while on 2 replicas"
        assert _model_replicas()["RUNNING"] == 2, "scaled down while still loaded"
    finally:
        heavy = load.finish()
    assert heavy.keys() == {200}, f"not every request under load was answered: {heavy}"
    assert heavy[200] >= 20, heavy

    # One client keeps 1 call in flight (below the target of 1.5): Serve takes a replica away while
    # that client's requests are still answered.
    lone = Load(url, body, 1)
    try:
        _wait_for(lambda r: r == Counter({"RUNNING": 1}), 180, "FaceModel did not shrink back to 1 replica", timeline)
        time.sleep(1.0)
    finally:
        light = lone.finish()
    assert light.keys() == {200}, f"not every request while shrinking was answered: {light}"
    assert light[200] >= 3, light
    answer = requests.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["faces"]) == 1
