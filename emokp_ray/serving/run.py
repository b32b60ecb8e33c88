"""`emokp serve`: start Serve on HOST:PORT with the app, print the URL, block until Ctrl-C or SIGTERM
(as Docker, systemd and Kubernetes stop a service), drain, clean up, exit 0."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

APP_NAME = "emokp"
REQUEST_TIMEOUT_S = 60.0  # the proxy's end-to-end limit per request (as in serve/config.yaml)
# The nice value of the workers of the local Ray that `emokp serve` starts: 0, with the model
# replica below the proxy and ingress (AppArgs.model_niceness: SCHED_IDLE by default, or a nice
# value), so a full service still refuses promptly (Ray's default 15 leaves a nice value only 4
# steps to go below them).
SERVE_WORKER_NICENESS = 0


def _stop_on_sigterm() -> None:
    """SIGTERM stops the server like Ctrl-C: a KeyboardInterrupt in the main thread, so the cleanup
    below runs (Ray's own handler would end the process with a native stack dump)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        signal.signal(signal.SIGTERM, handler)


def _ignore_stop_signals() -> None:
    """While draining, a second Ctrl-C or SIGTERM must not cut the cleanup short."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _check_model(task: str, path: str, trust_torchscript: bool) -> None:
    """Fail here, in one line, rather than inside a replica that Serve retries forever: the model
    loads as a replica loads it (export.load_model: a TorchScript file only with trust_torchscript)
    and is a `task` model."""
    from emokp_ray.artifacts.export import load_model
    from emokp_ray.errors import UserError

    try:
        found = load_model(path, trust_torchscript=trust_torchscript).meta.task
    except UserError as err:
        raise UserError(f"serve: --{task} {err}") from None
    if found != task:
        raise UserError(f"serve: --{task} {path} is a {found} checkpoint")


DRAIN_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 30.0  # serve.shutdown()'s own limit on the controller's graceful shutdown


def shutdown_serve() -> None:
    """`serve.shutdown()` (Ray 2.60) without the line it prints: `(raylet) Task
    ServeController.graceful_shutdown failed. There are infinite retries remaining...`.

    Serve's shutdown waits on the controller's `graceful_shutdown` call, which ends when the
    controller, having stopped every replica and proxy, kills itself. Calls to the controller are
    retried forever (it is created with max_task_retries=-1), so that expected end is announced on
    the console as a failure to retry, and so is any `listen_for_change` long poll of this process's
    handles still waiting then. This is the same sequence with that call made without retries (it
    then ends in the RayActorError Serve itself expects, silently) and the applications deleted
    first: their replicas drain and stop as they would in the graceful shutdown, and the change
    answers the handles' pending long polls, which, their handles shut down, poll no more. Uses
    Serve's client internals (`ray.serve.context`), checked against Ray 2.60 by
    tests/test_serve_run.py; a stuck controller falls back to `serve.shutdown()`.
    """
    import ray
    from ray import serve
    from ray.serve import context

    client = context._get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return
    client.shutdown_cached_handles()
    for name in serve.status().applications:
        serve.delete(name)
    try:
        ray.get(client._controller.graceful_shutdown.options(max_task_retries=0).remote(), timeout=SHUTDOWN_TIMEOUT_S)
    except ray.exceptions.RayActorError:
        pass  # the controller ended itself: the call's expected end
    except ray.exceptions.GetTimeoutError:
        serve.shutdown()  # Serve's own path, with its warning about the stuck controller
        return
    context._disconnect()


def _wait_until_idle(app: str, timeout_s: float) -> None:
    """Wait (up to timeout_s) until the app's ingress holds no admitted request."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    handle = serve.get_app_handle(app)
    while time.monotonic() < deadline and handle.in_flight.remote().result(timeout_s=5.0) > 0:
        time.sleep(0.2)


def _drain() -> None:
    """Wait (up to DRAIN_TIMEOUT_S) until the ingress holds no admitted request: stopping Serve
    stops the HTTP proxy, which would cut the connections of requests still being answered.

    The handle that asks lives in a one-off Ray task whose worker exits after it (max_calls=1), not
    in this process: a handle keeps a long poll open on Serve's controller, and the one still
    waiting when the controller ends itself would be reported on this console as a failed call
    (shutdown_serve)."""
    import ray

    wait = ray.remote(num_cpus=0, max_calls=1)(_wait_until_idle)
    try:
        ray.get(wait.remote(APP_NAME, DRAIN_TIMEOUT_S), timeout=DRAIN_TIMEOUT_S + 30)
    except Exception:
        return


def run_serve(
    keypoints: str | None, emotion: str | None, host: str = "127.0.0.1", port: int = 8000, **app_options: Any
) -> None:
    """Serve the two checkpoints at http://HOST:PORT/ until Ctrl-C (SIGINT) or SIGTERM.

    `app_options` are further AppArgs fields (max_batch_size, batch_wait_timeout_s, max_body_bytes,
    device, trust_torchscript, ...). On a stop signal, requests in flight are answered (Serve drains
    each replica before it stops, up to its graceful_shutdown_timeout_s, 20 s), then on a local
    cluster started here Serve and Ray are shut down (no Ray process is left), on a cluster named by
    RAY_ADDRESS only this app is deleted; the process then exits normally (status 0).
    """
    import ray
    from pydantic import ValidationError
    from ray import serve

    from emokp_ray.errors import UserError
    from emokp_ray.ray_utils import init_ray
    from emokp_ray.serving.app import compose
    from emokp_ray.serving.schemas import AppArgs

    try:
        args = AppArgs(keypoints=keypoints, emotion=emotion, **app_options)
    except ValidationError as err:
        raise UserError(f"serve: {'; '.join(e['msg'] for e in err.errors())}") from None
    for task, path in (("keypoints", args.keypoints), ("emotion", args.emotion)):
        if path:
            _check_model(task, path, args.trust_torchscript)
    from emokp_ray.inference.backends import resolve_backend
    from emokp_ray.inference.predictor import resolve_device

    resolve_backend(args.backend, resolve_device(args.device))  # e.g. onnx without the extra: one line, now

    from emokp_ray.inference.detect import detector_installed

    if args.detect and not detector_installed(args.detector):
        print(
            "emokp serve: face detection is off (OpenCV missing: pip install 'emokp-ray[detect]'); "
            "face crops and caller boxes still work",
            flush=True,
        )
        args = args.model_copy(update={"detect": False})
    local = not os.environ.get("RAY_ADDRESS")
    init_ray(worker_niceness=SERVE_WORKER_NICENESS)
    _stop_on_sigterm()  # after ray.init, whose core worker installs a handler of its own
    try:
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": REQUEST_TIMEOUT_S})
        try:
            app = compose(args)
        except ValueError as err:
            raise UserError(f"serve: {err}") from None
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"emokp serve: http://{host}:{port}/ (demo page; API under /v1) - Ctrl-C to stop", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("emokp serve: stopping (answering the requests in flight)", flush=True)
    finally:
        _ignore_stop_signals()
        _drain()
        try:
            if local:
                shutdown_serve()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
