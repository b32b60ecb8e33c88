"""`emokp serve`: start Serve on HOST:PORT with the app, print the URL, block until Ctrl-C, clean up."""

from __future__ import annotations

import os
import time
from typing import Any

APP_NAME = "emokp"


def run_serve(keypoints: str | None, emotion: str | None, host: str = "127.0.0.1", port: int = 8000, **app_options: Any) -> None:
    """Serve the two checkpoints at http://HOST:PORT/ until Ctrl-C (SIGINT).

    `app_options` are further AppArgs fields (max_batch_size, batch_wait_timeout_s, max_body_bytes,
    device, ...). On a local cluster started here, Ctrl-C shuts Serve and Ray down (no Ray process is
    left); on a cluster named by RAY_ADDRESS only this app is deleted.
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
    # Fail here, in one line, rather than inside a replica that Serve retries forever.
    from emokp_ray.checkpoint import read_meta

    for task, path in (("keypoints", args.keypoints), ("emotion", args.emotion)):
        if path and (found := read_meta(path).task) != task:
            raise UserError(f"serve: --{task} {path} is a {found} checkpoint")
    from emokp_ray.inference.backends import resolve_backend
    from emokp_ray.inference.predictor import resolve_device

    resolve_backend(args.backend, resolve_device(args.device))   # e.g. onnx without the extra: one line, now

    from emokp_ray.serving.model import opencv_available

    if args.detect and not opencv_available():
        print("emokp serve: face detection is off (OpenCV missing: pip install 'emokp-ray[detect]'); "
              "face crops and caller boxes still work", flush=True)
        args = args.model_copy(update={"detect": False})
    local = not os.environ.get("RAY_ADDRESS")
    init_ray()
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            app = compose(args)
        except ValueError as err:
            raise UserError(f"serve: {err}") from None
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"emokp serve: http://{host}:{port}/ (demo page; API under /v1) - Ctrl-C to stop", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("emokp serve: stopping", flush=True)
    finally:
        try:
            if local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
