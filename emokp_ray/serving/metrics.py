"""Prometheus metrics of the Serve app, through `ray.serve.metrics` (Ray exports them, with the
deployment, replica and application tags Serve adds, on each node's metrics endpoint; Prometheus
names get Ray's `ray_` prefix, e.g. `ray_emokp_requests_total`).

    emokp_requests_total{route, status}         Counter    every HTTP answer of the ingress
    emokp_admissions_refused_total{reason}      Counter    503s of the ingress: "images" (admission
                                                           limit) or "pixels" (decoded-pixel budget)
    emokp_images_per_request                    Histogram  images in an admitted predict request
    emokp_faces_per_request                     Histogram  faces found in the images of a request
    emokp_model_batch_size                      Histogram  images per call to FaceModel (one forward)
    emokp_model_latency_s                       Histogram  duration of that call, seen by the ingress
    emokp_queue_wait_s                          Histogram  an image's wait in @serve.batch until its
                                                           batch's call starts

The metric objects are created on first use, inside the replica (`get()`), never at import.
`RequestMetrics` is the ASGI middleware that counts answers by route TEMPLATE (e.g.
"/v1/predict"; an unknown path is "unmatched", so clients cannot create label values).
"""

from __future__ import annotations

import functools
from typing import Any

COUNT_BOUNDARIES: list[float] = [1, 2, 4, 8, 16, 32, 64]
SECONDS_BOUNDARIES: list[float] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class ServeMetrics:
    """The app's metric objects (one set per replica process)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "emokp_requests",
            description="HTTP answers of the ingress by route and status code.",
            # Ray 2.60 annotates tag_keys as Tuple[str] (one key) where it means Tuple[str, ...].
            tag_keys=("route", "status"),  # type: ignore[arg-type]
        )
        self.refused = metrics.Counter(
            "emokp_admissions_refused",
            description="Requests refused with 503 by the ingress's "
            "admission limit (reason=images) or decoded-pixel budget (reason=pixels).",
            tag_keys=("reason",),
        )
        self.images = metrics.Histogram(
            "emokp_images_per_request",
            description="Images in an admitted predict request.",
            boundaries=COUNT_BOUNDARIES,
        )
        self.faces = metrics.Histogram(
            "emokp_faces_per_request",
            description="Faces in the answer to a predict request.",
            boundaries=[0.5, *COUNT_BOUNDARIES],
        )  # le=0.5: no face; Ray wants positive bounds
        self.batch_size = metrics.Histogram(
            "emokp_model_batch_size",
            description="Images per FaceModel call (one forward pass).",
            boundaries=COUNT_BOUNDARIES,
        )
        self.model_latency = metrics.Histogram(
            "emokp_model_latency_s",
            description="Duration of a FaceModel call seen by the ingress, in seconds.",
            boundaries=SECONDS_BOUNDARIES,
        )
        self.queue_wait = metrics.Histogram(
            "emokp_queue_wait_s",
            description="Seconds an image waits in the ingress's batcher until its batch's FaceModel call starts.",
            boundaries=SECONDS_BOUNDARIES,
        )


@functools.cache
def get() -> ServeMetrics:
    """This process's metrics, created on the first call."""
    return ServeMetrics()


class RequestMetrics:
    """ASGI middleware: counts every HTTP answer by route template and status (500 when the app
    raised before answering)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # Starlette's router writes the matched route into this same scope dict.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            get().requests.inc(tags={"route": route, "status": str(status)})
