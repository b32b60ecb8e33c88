"""A load step against the autoscaling Serve app: arrivals per second up, then down; each second, the
replicas of both deployments, the p50/p99 latency of the answers and the 503s, as JSON and a PNG.

    python benchmarks/serve_autoscale.py                                  # 5/s for 20 s, 60/s for 90 s, 5/s for 90 s
    python benchmarks/serve_autoscale.py --steps 5:20 100:60 5:60 --upscale-delay-s 10 --downscale-delay-s 30

The app is serve/config.yaml's: its builder args (the builtin models) and, for both deployments, its
autoscaling_config (1-2 replicas; targets 32 ongoing requests for the ingress, 1.5 ongoing model
calls for FaceModel), queue limits and `num_cpus`. Only the autoscaler's timing is shortened so that
a step fits in minutes: --upscale-delay-s, --downscale-delay-s, --look-back-period-s and
--metrics-interval-s (Ray's defaults 30, 600, 30 and 10 s; the last one is deprecated by Ray 2.60 in
favour of environment variables its router does not read yet, so it warns). Serve starts as
`emokp serve` starts it (init_ray: 4 logical CPUs at least, workers at nice 0).

Load: open loop, as many independent users send: requests ARRIVE at each step's rate (Poisson,
seeded) whatever is still in flight, one 96x96 grey PNG crop each (raw image/png body) to
POST /v1/predict. Latency runs from a request's scheduled arrival. Beside it a thread asks Serve's
controller every --sample-s for each deployment's replicas by state. Per second of the run: the
offered and answered rates, the 503s (JSON from the ingress, or Serve's plain-text ones), other
failures, p50/p99 of the 200s that finished in that second, and the replicas RUNNING (and STARTING
or STOPPING). The PNG has three panels over time: rates, latency, replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.fixtures import crop_png, free_port
from benchmarks.harness import REPO, add_out_argument, percentile, save

APP = "autoscale"
DEPLOYMENTS = ("Ingress", "FaceModel")


def step(text: str) -> tuple[float, float]:
    """A --steps item RATE:SECONDS, e.g. 60:90."""
    try:
        rate, seconds = (float(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a step is RATE:SECONDS, e.g. 60:90") from None
    if rate < 0 or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the rate must be >= 0 and the seconds > 0")
    return rate, seconds


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=step,
        nargs="+",
        default=[(5.0, 20.0), (60.0, 90.0), (5.0, 90.0)],
        help="the load: RATE:SECONDS arrivals per second for so long, one after another (default 5:20 60:90 5:90)",
    )
    parser.add_argument("--upscale-delay-s", type=float, default=5.0, help="autoscaler's upscale delay (default 5)")
    parser.add_argument("--downscale-delay-s", type=float, default=20.0, help="its downscale delay (default 20)")
    parser.add_argument("--look-back-period-s", type=float, default=5.0, help="window of the averaged load (default 5)")
    parser.add_argument(
        "--metrics-interval-s", type=float, default=1.0, help="how often handles report their load (default 1)"
    )
    parser.add_argument("--sample-s", type=float, default=0.5, help="how often the replicas are read (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival times (default 0)")
    add_out_argument(parser, "serve_autoscale")  # the PNG goes beside it
    return parser


def shipped_app() -> tuple[dict, dict[str, dict]]:
    """serve/config.yaml's builder args and each deployment's options (without its name)."""
    import yaml

    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    (app,) = config["applications"]
    deployments = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app["deployments"]}
    return dict(app["args"]), deployments


def with_timing(options: dict, args: argparse.Namespace) -> dict:
    """A deployment's options with the autoscaler's timing shortened as the flags say."""
    timing = {
        "upscale_delay_s": args.upscale_delay_s,
        "downscale_delay_s": args.downscale_delay_s,
        "look_back_period_s": args.look_back_period_s,
        "metrics_interval_s": args.metrics_interval_s,
    }
    return {**options, "autoscaling_config": {**options["autoscaling_config"], **timing}}


def deploy(args: argparse.Namespace) -> dict[str, dict]:
    """The app at /autoscale; returns the options each deployment got."""
    from ray import serve

    from emokp_ray.serving.app import compose
    from emokp_ray.serving.schemas import AppArgs

    app_args, deployments = shipped_app()
    options = {name: with_timing(deployments[name], args) for name in DEPLOYMENTS}
    with warnings.catch_warnings():  # metrics_interval_s: deprecated, still the knob (module docstring)
        warnings.filterwarnings("ignore", message=".*metrics_interval_s.*")
        app = compose(AppArgs(**app_args), model_options=options["FaceModel"], ingress_options=options["Ingress"])
        serve.run(app, name=APP, route_prefix=f"/{APP}")
    return options


class ReplicaSampler:
    """A thread reading each deployment's replicas by state from Serve's controller."""

    def __init__(self, every_s: float, started: float):
        self.every_s, self.started = every_s, started
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from ray import serve

        while not self.stop.is_set():
            try:
                deployments = serve.status().applications[APP].deployments
                sample: dict[str, Any] = {"t": round(time.perf_counter() - self.started, 2)}
                for name in DEPLOYMENTS:
                    states = deployments[name].replica_states
                    sample[name] = {str(getattr(s, "value", s)): n for s, n in states.items()}
                self.samples.append(sample)
            except Exception as err:  # a slow controller under load: one sample lost, said so
                self.samples.append({"t": round(time.perf_counter() - self.started, 2), "error": repr(err)})
            self.stop.wait(self.every_s)

    def finish(self) -> list[dict]:
        self.stop.set()
        self.thread.join(timeout=30)
        return self.samples


async def drive(url: str, body: bytes, steps: list[tuple[float, float]], seed: int, started: float) -> list[tuple]:
    """Open-loop arrivals at each step's rate, one step after another. Returns (arrival s, done s,
    status, JSON 503) per request, times from `started`; status 0: no HTTP answer."""
    import aiohttp
    import numpy as np

    rng = np.random.default_rng(seed)
    arrivals: list[float] = []
    at = 0.0
    for rate, seconds in steps:
        end = at + seconds
        t = at
        while rate > 0:
            t += rng.exponential(1.0 / rate)
            if t >= end:
                break
            arrivals.append(t)
        at = end
    records: list[tuple] = []

    async def send(session: aiohttp.ClientSession, arrival: float) -> None:
        json_503 = False
        try:
            async with session.post(url, data=body, headers={"Content-Type": "image/png"}) as response:
                await response.read()
                status = response.status
                json_503 = status == 503 and response.content_type == "application/json"
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status = 0
        records.append((arrival, time.perf_counter() - started, status, json_503))

    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=90)) as session:
        tasks = []
        for arrival in arrivals:
            delay = started + arrival - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, arrival)))
        await asyncio.gather(*tasks)
    return records


def per_second(records: list[tuple], samples: list[dict], seconds: int) -> list[dict]:
    """One row per second of the run: rates by arrival and by answer, latency of the 200s finished in
    it, the last replica sample in it."""
    rows = []
    for second in range(seconds):
        arrived = sum(1 for a, _, _, _ in records if second <= a < second + 1)
        done = [(a, d, s, j) for a, d, s, j in records if second <= d < second + 1]
        ok = sorted(1000 * (d - a) for a, d, s, _ in done if s == 200)
        statuses = Counter(s for _, _, s, _ in done)
        sample = next((x for x in reversed(samples) if x["t"] < second + 1 and "error" not in x), None)
        rows.append(
            {
                "second": second,
                "offered_per_s": arrived,
                "answered_per_s": statuses.get(200, 0),
                "refused_503_per_s": statuses.get(503, 0),
                "refused_503_json": sum(1 for _, _, s, j in done if s == 503 and j),
                "other_failures": sum(n for s, n in statuses.items() if s not in (200, 503)),
                "p50_ms": round(percentile(ok, 50), 1) if ok else None,
                "p99_ms": round(percentile(ok, 99), 1) if ok else None,
                **{
                    f"{name}_{state.lower()}": (sample or {}).get(name, {}).get(state, 0)
                    for name in DEPLOYMENTS
                    for state in ("RUNNING", "STARTING", "STOPPING")
                },
            }
        )
    return rows


def draw(rows: list[dict], steps: list[tuple[float, float]], path: Path, title: str) -> None:
    """Three panels over time: arrivals, answers and 503s per second; p50/p99; running replicas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = [r["second"] + 0.5 for r in rows]
    fig = Figure(figsize=(10, 8.5))
    FigureCanvasAgg(fig)
    rates, latency, replicas = fig.subplots(3, 1, sharex=True)
    rates.plot(t, [r["offered_per_s"] for r in rows], color="0.6", label="arrivals/s")
    rates.plot(t, [r["answered_per_s"] for r in rows], color="tab:green", label="answered (200)/s")
    rates.plot(t, [r["refused_503_per_s"] for r in rows], color="tab:red", label="503/s")
    rates.set_ylabel("requests per second")
    rates.legend(loc="upper right", fontsize=8)
    latency.plot(t, [r["p50_ms"] for r in rows], color="tab:blue", label="p50 of the 200s")
    latency.plot(t, [r["p99_ms"] for r in rows], color="tab:orange", label="p99 of the 200s")
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms (log)")
    latency.legend(loc="upper right", fontsize=8)
    for name, color in zip(DEPLOYMENTS, ("tab:purple", "tab:brown")):
        replicas.step(t, [r[f"{name}_running"] for r in rows], where="mid", color=color, label=f"{name} running")
        replicas.step(
            t, [r[f"{name}_starting"] for r in rows], where="mid", color=color, linestyle=":", label=f"{name} starting"
        )
    replicas.set_ylabel("replicas")
    replicas.set_xlabel("seconds since the first arrival")
    replicas.set_ylim(-0.1, max(2, max(r["FaceModel_running"] + r["FaceModel_starting"] for r in rows)) + 0.5)
    replicas.legend(loc="upper right", fontsize=8)
    edge = 0.0
    for _, seconds in steps[:-1]:  # the step changes
        edge += seconds
        for ax in (rates, latency, replicas):
            ax.axvline(edge, color="0.8", linewidth=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")


def summary(rows: list[dict], steps: list[tuple[float, float]], samples: list[dict]) -> dict:
    """Per step: arrivals, answered and refused per second, p50/p99 over the step; the most model
    replicas; when FaceModel first ran 2 replicas and when it was back to 1 after the step up."""
    out: dict[str, Any] = {"steps": []}
    start = 0
    for rate, seconds in steps:
        mine = rows[start : start + int(seconds)]
        out["steps"].append(
            {
                "rate_per_s": rate,
                "seconds": seconds,
                "answered_per_s": round(sum(r["answered_per_s"] for r in mine) / len(mine), 2),
                "refused_503_per_s": round(sum(r["refused_503_per_s"] for r in mine) / len(mine), 2),
                "other_failures": sum(r["other_failures"] for r in mine),
                "max_model_replicas": max(r["FaceModel_running"] for r in mine),
                "max_ingress_replicas": max(r["Ingress_running"] for r in mine),
            }
        )
        start += int(seconds)
    first_two = next((s["t"] for s in samples if s.get("FaceModel", {}).get("RUNNING", 0) >= 2), None)
    out["model_second_replica_running_at_s"] = first_two
    if first_two is not None:
        out["model_back_to_one_at_s"] = next(
            (s["t"] for s in samples if s["t"] > first_two and s.get("FaceModel") == {"RUNNING": 1}), None
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    import ray

    from emokp_ray.ray_utils import init_ray
    from emokp_ray.serving.run import SERVE_WORKER_NICENESS, shutdown_serve

    body = crop_png()
    seconds = int(sum(s for _, s in args.steps))
    init_ray(worker_niceness=SERVE_WORKER_NICENESS)
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        options = deploy(args)
        url = f"http://127.0.0.1:{port}/{APP}/v1/predict"
        # Warm-up below any scaling: connections, the batch loop, the first forward passes.
        asyncio.run(drive(url, body, [(5.0, 5.0)], args.seed + 1, time.perf_counter()))
        started = time.perf_counter()
        sampler = ReplicaSampler(args.sample_s, started)
        try:
            records = asyncio.run(drive(url, body, args.steps, args.seed, started))
            time.sleep(1.0)
        finally:
            samples = sampler.finish()
    finally:
        shutdown_serve()
        ray.shutdown()

    rows = per_second(records, samples, seconds)
    result_summary = summary(rows, args.steps, samples)
    print(f"{'s':>4} {'arr/s':>6} {'200/s':>6} {'503/s':>6} {'p50 ms':>8} {'p99 ms':>8} {'model':>6} {'ingress':>7}")
    for r in rows:
        print(
            f"{r['second']:>4} {r['offered_per_s']:>6} {r['answered_per_s']:>6} {r['refused_503_per_s']:>6} "
            f"{r['p50_ms'] if r['p50_ms'] is not None else '-':>8} {r['p99_ms'] if r['p99_ms'] is not None else '-':>8} "
            f"{r['FaceModel_running']:>3}+{r['FaceModel_starting']:<2} {r['Ingress_running']:>4}+{r['Ingress_starting']:<2}"
        )
    print(json.dumps(result_summary))
    result = {
        "request": "one 96x96 grey PNG crop, raw image/png body, POST /v1/predict, open-loop Poisson arrivals",
        "steps": [{"rate_per_s": r, "seconds": s} for r, s in args.steps],
        "deployment_options": options,
        "summary": result_summary,
        "per_second": rows,
        "replica_samples": samples,
    }
    result = save(result, args.out)
    png = args.out.with_suffix(".png")
    steps_text = ", ".join(f"{r:g}/s for {s:g} s" for r, s in args.steps)
    draw(
        rows,
        args.steps,
        png,
        f"emokp serve, serve/config.yaml autoscaling (delays up {args.upscale_delay_s:g} s, down "
        f"{args.downscale_delay_s:g} s), {os.cpu_count()} CPUs: {steps_text}",
    )
    print(f"saved {png}")
    return result


if __name__ == "__main__":
    main()
