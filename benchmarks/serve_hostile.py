"""Hostile load on the Serve app (issue 31): long waits, face-heavy and annotate-heavy requests,
memory after a burst, each measured with the issue's settings on ("after") and off ("before").

    python benchmarks/serve_hostile.py                               # everything, ~15 minutes on 2 cores
    python benchmarks/serve_hostile.py --scenarios wait --clients 200 --seconds 30 --rounds 3
    python benchmarks/serve_hostile.py --scenarios memory --idle-seconds 60

Two apps are deployed side by side, one replica per deployment, serve/config.yaml's defaults
(--models builtin: the shipped models, as `emokp serve` serves them; course: random-init course
networks): "after" as shipped, "before" with the four settings turned off (max_queue_wait_s and
max_faces_per_image None, annotate_max_side 20000 and max_annotation_bytes 1 GiB, so annotations are
neither scaled down nor capped, trim_memory_idle_s None). Within a round the variants alternate, so
both meet the same machine; the summary gives medians over --rounds rounds.

Scenarios (aiohttp clients on 127.0.0.1; "good request": the synthetic 480x360 photo with 3 faces,
sent one after another by a prober, 0.2 s apart, latency client-side):
- wait (issue 31 item 2): --clients closed-loop clients send a real photo (emokp_ray/photos,
  detection on) and resend at once on every answer, 503s included, for --seconds. Figures: p99 of
  the answered requests (target <= 3 s) and of the 503s (target <= 100 ms).
- faces (item 3): --face-clients clients send a tiled image of 200 copies of a real portrait
  (faces found: as the "before" app answers) while the prober measures a good request (target:
  under 2 s).
- annotate (item 4): --annotate-clients clients send a 24 M-pixel JPEG (a real photo scaled to
  6000x4000 with noise, ~6 MB) with annotate=true while the prober measures a good request (target:
  under 2 s); the largest answer of all is recorded (target: none over 10 MB).
- memory (item 6): per variant, the RSS of its ingress and model replica (/proc VmRSS) warm (after 4 s
  of good requests), then through a burst (--annotate-clients clients, --burst-requests 24 M-pixel
  annotated requests with detect=false: the ingress decodes and draws 24 M pixels, the model replica
  receives the 24 M-pixel grey copy, without MTCNN's minute per photo) and --idle-seconds of idle,
  sampled every 2 s. Target: both back within 25% of the warm figure within a minute.

"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.fixtures import free_port, replica_rss, served_models
from benchmarks.harness import REPO, add_out_argument, percentile, save

SCENARIOS = ("wait", "faces", "annotate", "memory")
PHOTOS = REPO / "emokp_ray" / "photos"
MiB = 1024 * 1024
# The four settings of issue 31, off: what the app did before.
BEFORE: dict[str, Any] = {
    "max_queue_wait_s": None,
    "max_faces_per_image": None,
    "annotate_max_side": 20_000,
    "max_annotation_bytes": 1024 * MiB,
    "trim_memory_idle_s": None,
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--models", choices=["builtin", "course"], default="builtin")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="load per scenario, variant and round (s)")
    parser.add_argument("--clients", type=int, default=200, help="closed-loop clients of `wait`")
    parser.add_argument("--face-clients", type=int, default=6)
    parser.add_argument("--annotate-clients", type=int, default=4)
    parser.add_argument("--burst-requests", type=int, default=24, help="24 M-pixel requests in `memory`'s burst")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    add_out_argument(parser, "serve_hostile")
    return parser


# ----------------------------------------------------------------------------- inputs


def _jpeg(image: Any, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def inputs() -> dict[str, bytes]:
    """good: the synthetic 480x360 photo (3 faces); photo: a real portrait; faces: 200 copies of it
    tiled 20 x 10; huge: it scaled to 6000x4000 (24 M pixels) with noise, as a camera's JPEG."""
    import numpy as np
    from PIL import Image

    from emokp_ray.data.synth.photos import synthesize_photos

    good = Image.fromarray(synthesize_photos(4, seed=0)[3].image)
    portrait = Image.open(PHOTOS / "grace_hopper_us_navy.jpg").convert("RGB")
    tile = portrait.resize((160, 188))
    tiled = Image.new("RGB", (20 * tile.width, 10 * tile.height))  # 3200x1880
    for i in range(200):
        tiled.paste(tile, ((i % 20) * tile.width, (i // 20) * tile.height))
    big = np.asarray(portrait.resize((6000, 4000), Image.Resampling.BILINEAR), np.int16)
    noise = np.random.default_rng(0).integers(-12, 13, big.shape, dtype=np.int16)
    huge = Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8))
    return {
        "good": _jpeg(good),
        "photo": (PHOTOS / "grace_hopper_us_navy.jpg").read_bytes(),
        "faces": _jpeg(tiled),
        "huge": _jpeg(huge, 88),
    }


# ----------------------------------------------------------------------------- load


class Answers:
    """Latency and size of every answer, by status."""

    def __init__(self) -> None:
        self.seconds: dict[int, list[float]] = {}
        self.largest = 0
        self.faces: list[int] = []

    async def send(self, session: Any, url: str, body: bytes, params: dict[str, str] | None = None) -> None:
        import aiohttp

        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers={"Content-Type": "image/jpeg"}, params=params) as response:
                data = await response.read()
                status = response.status
                if status == 200:
                    self.faces.append(len(json.loads(data)["faces"]))
                self.largest = max(self.largest, len(data))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status = 0
        self.seconds.setdefault(status, []).append(time.perf_counter() - started)

    def summary(self) -> dict:
        def stats(values: list[float]) -> dict:
            v = sorted(values)
            return {"n": len(v), "p50_s": round(percentile(v, 50), 3), "p99_s": round(percentile(v, 99), 3)}

        return {
            "by_status": {str(k): stats(v) for k, v in sorted(self.seconds.items())},
            "largest_answer_bytes": self.largest,
            "faces_per_answer_max": max(self.faces, default=0),
        }


async def load(url: str, body: bytes, clients: int, seconds: float, params: dict | None, probe: bytes | None) -> dict:
    """`clients` closed-loop clients sending `body` for `seconds`; with `probe`, a prober sends that
    good request every 0.2 s after its answer. Returns {"load": ..., "probe": ...}."""
    import aiohttp

    heavy, prober = Answers(), Answers()
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            await heavy.send(session, url, body, params)

    async def probing(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(min(2.0, seconds / 4))  # the load first
        while time.perf_counter() < deadline and probe is not None:
            await prober.send(session, url, probe)
            await asyncio.sleep(0.2)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + 1), timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)), probing(session))
    return {"load": heavy.summary(), "probe": prober.summary() if probe is not None else None}


def rss(app: str) -> dict[str, int]:
    """{deployment: RSS bytes} of app's replicas."""
    return {name.split("#")[0]: value for name, value in replica_rss(app).items()}


def memory(port: int, app: str, data: dict[str, bytes], args: argparse.Namespace) -> dict:
    url = f"http://127.0.0.1:{port}/{app}/v1/predict"
    asyncio.run(load(url, data["good"], 1, 4.0, None, None))
    time.sleep(5)
    warm = rss(app)
    per_client = max(1, args.burst_requests // args.annotate_clients)

    answers = Answers()

    async def burst() -> None:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

            async def client() -> None:
                for _ in range(per_client):
                    await answers.send(session, url, data["huge"], {"annotate": "true", "detect": "false"})

            await asyncio.gather(*(client() for _ in range(args.annotate_clients)))

    started = time.perf_counter()
    asyncio.run(burst())
    burst_s = time.perf_counter() - started
    samples: list[dict[str, Any]] = [{"t_s": 0.0, "rss": rss(app)}]
    idle_started = time.perf_counter()
    while time.perf_counter() - idle_started < args.idle_seconds:
        time.sleep(2.0)
        samples.append({"t_s": round(time.perf_counter() - idle_started, 1), "rss": rss(app)})
    out: dict[str, Any] = {"burst_s": round(burst_s, 1), "burst_answers": answers.summary(), "samples": samples}
    for deployment, base in warm.items():
        series = [(s["t_s"], s["rss"].get(deployment, 0)) for s in samples]
        back = next((t for t, value in series if value <= 1.25 * base), None)
        out[deployment] = {
            "warm_mib": round(base / MiB),
            "after_burst_mib": round(series[0][1] / MiB),
            "end_mib": round(series[-1][1] / MiB),
            "end_over_warm": round(series[-1][1] / base, 2),
            "back_within_25pct_after_s": back,
        }
    return out


# ----------------------------------------------------------------------------- the run


def median(rows: list[dict], *path: str) -> float | None:
    values = []
    for row in rows:
        value: Any = row
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return round(statistics.median(values), 3) if values else None


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    import ray
    from ray import serve

    from emokp_ray.ray_utils import init_ray
    from emokp_ray.serving.app import compose
    from emokp_ray.serving.schemas import AppArgs

    data = inputs()
    variants: dict[str, dict[str, Any]] = {"before": BEFORE, "after": {}}
    results: dict[str, Any] = {"rounds": []}
    with tempfile.TemporaryDirectory(prefix="serve-hostile-") as tmp:
        kp, em = served_models(args.models, Path(tmp))
        init_ray()
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
        try:
            fixed = {"num_replicas": 1, "autoscaling_config": None}
            for name, settings in variants.items():
                app = compose(AppArgs(keypoints=kp, emotion=em, **settings), model_options=fixed, ingress_options=fixed)
                serve.run(app, name=f"hostile-{name}", route_prefix=f"/hostile-{name}")
            url = {name: f"http://127.0.0.1:{port}/hostile-{name}/v1/predict" for name in variants}
            for name in variants:  # warm-up
                asyncio.run(load(url[name], data["good"], 4, 5.0, None, None))
            plan = {
                "wait": (data["photo"], args.clients, None, None),
                "faces": (data["faces"], args.face_clients, None, data["good"]),
                "annotate": (data["huge"], args.annotate_clients, {"annotate": "true"}, data["good"]),
            }
            for round_index in range(args.rounds):
                for scenario, (body, clients, params, probe) in plan.items():
                    if scenario not in args.scenarios:
                        continue
                    for name in variants:
                        row = asyncio.run(load(url[name], body, clients, args.seconds, params, probe))
                        row.update(scenario=scenario, variant=name, round=round_index)
                        results["rounds"].append(row)
                        print(json.dumps({k: row[k] for k in ("scenario", "variant", "round", "load", "probe")}))
            if "memory" in args.scenarios:
                results["memory"] = {name: memory(port, f"hostile-{name}", data, args) for name in variants}
                for name, mem in results["memory"].items():
                    print(name, json.dumps({k: v for k, v in mem.items() if k != "samples"}))
        finally:
            serve.shutdown()
            ray.shutdown()
    summary: dict[str, Any] = {}
    for scenario in ("wait", "faces", "annotate"):
        for name in variants:
            rows = [r for r in results["rounds"] if r["scenario"] == scenario and r["variant"] == name]
            if not rows:
                continue
            summary[f"{scenario}/{name}"] = {
                "answered_p99_s": median(rows, "load", "by_status", "200", "p99_s"),
                "answered_p50_s": median(rows, "load", "by_status", "200", "p50_s"),
                "refused_503_p99_s": median(rows, "load", "by_status", "503", "p99_s"),
                "answered_per_round": median(rows, "load", "by_status", "200", "n"),
                "refused_per_round": median(rows, "load", "by_status", "503", "n"),
                "faces_per_answer_max": median(rows, "load", "faces_per_answer_max"),
                "largest_answer_mb": round((median(rows, "load", "largest_answer_bytes") or 0) / 1e6, 2),
                "good_p50_s": median(rows, "probe", "by_status", "200", "p50_s"),
                "good_p99_s": median(rows, "probe", "by_status", "200", "p99_s"),
                "good_answered": median(rows, "probe", "by_status", "200", "n"),
                "good_refused": median(rows, "probe", "by_status", "503", "n"),
            }
    result = {
        "models": args.models,
        "before": BEFORE,
        "summary": summary,
        **results,
    }
    for key, row in summary.items():
        print(f"{key:<18} {json.dumps(row)}")
    return save(result, args.out)


if __name__ == "__main__":
    main()
