"""Latency and throughput of the Serve app over HTTP on loopback: dynamic batching on and off, on the
torch and ONNX Runtime backends, and the latency of refusals under overload.

    python benchmarks/serve_latency.py                        # everything, ~8 minutes on 2 cores
    python benchmarks/serve_latency.py --configs batch no_batch --backends torch onnx --concurrency 1 32
    python benchmarks/serve_latency.py --configs overload       # only the 503 latency under overload

Models: --models builtin (default: the shipped builtin:keypoints + builtin:emotion, what `emokp serve`
serves) or course (the course-size networks, keypoint_resnet() + emotion_resnet(input_size=48), random
init: timing does not depend on the weights).

`batch` (@serve.batch with --max-batch-size and the load-adaptive batch window, two model calls in
flight as serve/config.yaml sets), `batch_serial` (the same, one call at a time:
`max_concurrent_batches: 1`), `batch_nice5` (the same with the model replica at `model_niceness: 5`,
the default before `idle`), `overlap` (`batch` with the model replica running the two networks at
once, `overlap_networks: true`) and `no_batch`
(max_batch_size 1), each on every --backends entry, are deployed as their own apps with ONE replica per
deployment (autoscaling off, so all get the same hardware) and warmed up; then an asyncio/aiohttp
client on 127.0.0.1 drives them in alternation, --rounds times: at concurrency c, c closed-loop
workers each send one 96x96 grey PNG crop (raw image/png body) to /v1/predict and the next as soon as
the answer arrives, for --requests requests or --max-seconds, whichever comes first. Latency is
client-side wall time per request (connect + send + server + receive). Reported per (config, backend,
c): the round with the best throughput (on a shared machine, the least disturbed) with its p50/p95/p99
ms and requests/s; ratios side by side: onnx / torch p50 at c=1 (and overlap's over torch's batch),
batch / no_batch requests/s at the top concurrency (issue 14's targets: <= 0.7 and >= 3). Last, the
front end's ceiling: GET /v1/labels at the top concurrency (best of 2), through the proxy and the ingress but never the model; batching
cannot lift predictions above it, so ceiling / (batch size 1's requests/s) bounds batching's gain
on this machine.

`overload` (issue 11: a refusal must be fast) deploys the app with the DEFAULT limits of
serve/config.yaml (admission of 64 images per ingress, FaceModel 2 + 4 calls), one replica each, once
per --model-niceness value (default idle and 5: the model replica under SCHED_IDLE, today's default, or
5 nice values below the proxy and ingress, the default before; their Ray workers start at
--worker-niceness, 0 as `emokp serve` starts them), and drives each app
two ways for --overload-seconds, the apps alternating for --rounds rounds (the summary gives medians
over rounds):
- open: requests ARRIVE at --overload-rate per second (Poisson, seeded), whatever the answers, as many
  independent users do; the rate is several times what the replica can answer, so most are refused.
  Latency runs from a request's scheduled arrival, so client-side waiting counts. This is the 503
  latency a client meets at a full service (target: p99 < 100 ms).
- closed: --overload-concurrency closed-loop clients (default 200) that resend the moment an answer
  (a 503 too) arrives. By Little's law their latency is concurrency / throughput, so a refusal's p99
  here says how many refusals per second the ingress can turn out, not how long one waits.
Each reports the latency of the 503s beside that of the 200s, and how many 503s came from the
ingress (JSON) rather than from Serve's proxy queue (plain text).
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
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.fixtures import free_port, served_models
from benchmarks.harness import add_out_argument, load_average, save

if TYPE_CHECKING:
    from emokp_ray.serving.schemas import Backend, ModelNiceness


def model_niceness(value: str) -> ModelNiceness:
    """A --model-niceness value, checked by AppArgs's own type: "idle" (SCHED_IDLE) or a nice
    increment 0-19."""
    from pydantic import TypeAdapter, ValidationError

    from emokp_ray.serving.schemas import ModelNiceness

    try:
        return TypeAdapter(ModelNiceness).validate_python(value if value == "idle" else int(value))
    except (ValueError, ValidationError):
        raise argparse.ArgumentTypeError(f"{value!r} is neither idle nor a nice value 0-19") from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8, 32], help="client concurrencies (default 1 8 32)"
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement at most (default 300)")
    parser.add_argument("--max-seconds", type=float, default=12.0, help="seconds per measurement at most (default 12)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measurements per (config, concurrency), alternating; the best is reported (default 3)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=16, help="@serve.batch size of the batched config (default 16)"
    )
    parser.add_argument(
        "--batch-wait-timeout-s", type=float, default=0.001, help="@serve.batch wait when idle (default 0.001)"
    )
    parser.add_argument(
        "--busy-batch-wait-max-s",
        type=float,
        default=0.05,
        help="longest wait while a batch runs (default 0.05; 0: fixed wait)",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch threads in the model replica (default: torch's)"
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["batch", "no_batch", "overload"],
        choices=["batch", "batch_serial", "batch_nice5", "no_batch", "overlap", "overload"],
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["torch", "onnx"],
        choices=["torch", "onnx", "onnx-int8"],
        help="backends of the batch / no_batch configs (default torch onnx); overload runs on the first",
    )
    parser.add_argument(
        "--models", choices=["builtin", "course"], default="builtin", help="networks served (default builtin)"
    )
    parser.add_argument(
        "--overload-concurrency", type=int, default=200, help="clients of the closed-loop overload run (default 200)"
    )
    parser.add_argument(
        "--overload-rate", type=float, default=150.0, help="arrivals per second of the open overload run (default 150)"
    )
    parser.add_argument("--overload-seconds", type=float, default=15.0, help="length of each overload run (default 15)")
    parser.add_argument(
        "--model-niceness",
        type=model_niceness,
        nargs="+",
        default=["idle", 5],
        help="AppArgs.model_niceness of the overload apps (0-19 or idle), one app each, measured in alternation "
        "(default idle 5: today's default and the one before)",
    )
    parser.add_argument(
        "--worker-niceness",
        type=int,
        default=0,
        help="nice value of the local Ray's workers (default 0, as `emokp serve` starts them; Ray's own is 15)",
    )
    add_out_argument(parser, "serve_latency")
    return parser


def crop_png() -> bytes:
    from PIL import Image

    from emokp_ray.data.synth.crops import synthesize

    buffer = io.BytesIO()
    Image.fromarray(synthesize(1, seed=7).images[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


class Tally:
    """Every answer's status and client-side latency; `summary()` gives the figures of a run."""

    def __init__(self) -> None:
        self.by_status: dict[int, list[float]] = {}
        self.json_503 = 0  # 503s with a JSON body: the ingress's; plain text ones are Serve's proxy's

    async def send(self, session: Any, url: str, body: bytes | None, started: float) -> None:
        """POST `body` as image/png, or GET `url` where body is None."""
        import aiohttp

        try:
            if body is None:
                request = session.get(url)
            else:
                request = session.post(url, data=body, headers={"Content-Type": "image/png"})
            async with request as response:
                await response.read()
                status = response.status
                if status == 503 and response.content_type == "application/json":
                    self.json_503 += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status = 0  # no HTTP answer (connection reset or refused, client timeout): counted as "0"
        self.by_status.setdefault(status, []).append(time.perf_counter() - started)

    def summary(self, concurrency: int | None, seconds: float) -> dict:
        def stats(values: list[float]) -> dict:
            v = sorted(1000 * t for t in values)
            return {
                "n": len(v),
                "p50_ms": round(percentile(v, 50), 2),
                "p95_ms": round(percentile(v, 95), 2),
                "p99_ms": round(percentile(v, 99), 2),
                "max_ms": round(v[-1], 2),
            }

        ok = sorted(1000 * t for t in self.by_status.get(200, []))
        return {
            "latency_by_status": {str(k): stats(v) for k, v in sorted(self.by_status.items())},
            "json_503": self.json_503,
            "concurrency": concurrency,
            "requests": sum(len(v) for v in self.by_status.values()),
            "ok": len(ok),
            "statuses": {str(k): len(v) for k, v in sorted(self.by_status.items())},
            "seconds": round(seconds, 3),
            "requests_per_s": round(len(ok) / seconds, 2),
            "p50_ms": round(percentile(ok, 50), 2) if ok else None,
            "p95_ms": round(percentile(ok, 95), 2) if ok else None,
            "p99_ms": round(percentile(ok, 99), 2) if ok else None,
            "mean_ms": round(statistics.fmean(ok), 2) if ok else None,
        }


async def drive(url: str, body: bytes | None, concurrency: int, total: int, max_seconds: float) -> dict:
    """c closed-loop workers until `total` requests are sent or `max_seconds` pass (GET where body
    is None)."""
    import aiohttp

    tally = Tally()
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while sent < total and time.perf_counter() < deadline:
            sent += 1
            await tally.send(session, url, body, time.perf_counter())

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return tally.summary(concurrency, time.perf_counter() - started)


async def drive_open(url: str, body: bytes, rate: float, seconds: float, seed: int = 0) -> dict:
    """Open-loop load: requests arrive at `rate` per second (exponential gaps, seeded) for `seconds`,
    each sent at its arrival whatever is still in flight (up to 2,000 connections). A request's
    latency runs from its scheduled arrival, so time spent waiting for a connection counts."""
    import aiohttp
    import numpy as np

    tally = Tally()
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=int(rate * seconds * 2) + 16)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < seconds]
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        tasks = []
        for at in arrivals:
            delay = started + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(tally.send(session, url, body, started + at)))
        await asyncio.gather(*tasks)
        row = tally.summary(None, time.perf_counter() - started)
    row["offered_rate_per_s"] = rate
    row["arrivals"] = len(arrivals)
    return row


def deploy_overload(kp: str, em: str, niceness: ModelNiceness, args: argparse.Namespace) -> str:
    """The app with serve/config.yaml's default limits and batching, one replica per deployment, its
    model replica `niceness` below the rest, or under SCHED_IDLE for "idle" (AppArgs.model_niceness).
    Returns the route prefix."""
    from ray import serve

    from emokp_ray.serving.app import compose
    from emokp_ray.serving.schemas import AppArgs

    fixed = {"num_replicas": 1, "autoscaling_config": None}
    app_args = AppArgs(
        keypoints=kp, emotion=em, torch_threads=args.torch_threads, backend=args.backends[0], model_niceness=niceness
    )
    name = f"overload-nice{niceness}"
    app = compose(app_args, model_options=fixed, ingress_options=fixed)
    serve.run(app, name=f"bench-{name}", route_prefix=f"/{name}")
    return name


def run_overload(port: int, body: bytes, names: dict[ModelNiceness, str], args: argparse.Namespace) -> list[dict]:
    """Each overload app ({model niceness: route prefix}) under both overloads, the apps alternating,
    for --rounds rounds."""
    for name in names.values():
        asyncio.run(drive(f"http://127.0.0.1:{port}/{name}/v1/predict", body, 8, 64, 30.0))  # warm-up
    rows = []
    for round_index in range(args.rounds):
        for niceness, name in names.items():
            url = f"http://127.0.0.1:{port}/{name}/v1/predict"
            runs = {
                "open": asyncio.run(drive_open(url, body, args.overload_rate, args.overload_seconds)),
                "closed": asyncio.run(drive(url, body, args.overload_concurrency, 10**9, args.overload_seconds)),
            }
            print_overload(round_index, niceness, runs, args)
            rows.append({"model_niceness": niceness, "round": round_index, "backend": args.backends[0], **runs})
    return rows


def print_overload(round_index: int, niceness: ModelNiceness, runs: dict, args: argparse.Namespace) -> None:
    for name, result in runs.items():
        load = f"{args.overload_rate:g} arrivals/s" if name == "open" else f"{args.overload_concurrency} clients"
        print(
            f"round {round_index} overload, model_niceness {niceness}, {name} ({load}): statuses {result['statuses']} "
            f"({result['json_503']} of the 503s JSON from the ingress)"
        )
        for status in ("503", "200"):
            stats = result["latency_by_status"].get(status, {"n": 0})
            if stats["n"]:
                print(
                    f"  {status}: n {stats['n']:>6}  p50 {stats['p50_ms']:>7.1f}  p95 {stats['p95_ms']:>7.1f}  "
                    f"p99 {stats['p99_ms']:>7.1f}  max {stats['max_ms']:>7.1f} ms",
                    flush=True,
                )
        result["load_avg_1m"] = load_average()


def deploy(config: str, backend: Backend, kp: str, em: str, args: argparse.Namespace) -> str:
    """One app per (configuration, backend) at /<config>-<backend>, one replica per deployment,
    queues deep enough that every client request in flight is waited for, never refused (the
    benchmark measures waiting). Returns the route prefix."""
    from ray import serve

    from emokp_ray.serving.app import compose
    from emokp_ray.serving.schemas import AppArgs

    batched = config in ("batch", "batch_serial", "batch_nice5", "overlap")
    batch_size = args.max_batch_size if batched else 1
    app_args = AppArgs(
        keypoints=kp,
        emotion=em,
        backend=backend,
        max_batch_size=batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s if batched else 0.0,
        busy_batch_wait_max_s=args.busy_batch_wait_max_s if batched else 0.0,
        torch_threads=args.torch_threads,
        overlap_networks=True if config == "overlap" else None,
    )
    if config == "batch_serial":  # one model call at a time, as before max_concurrent_batches
        app_args = app_args.model_copy(update={"max_concurrent_batches": 1})
    if config == "batch_nice5":  # the model replica at nice 5, the default before SCHED_IDLE
        app_args = app_args.model_copy(update={"model_niceness": 5})
    fixed = {"num_replicas": 1, "autoscaling_config": None}
    model = {**fixed, "max_ongoing_requests": max(64, batch_size), "max_queued_requests": 1024}
    ingress = {**fixed, "max_ongoing_requests": 256, "max_queued_requests": 1024}
    name = f"{config}-{backend}"
    serve.run(
        compose(app_args, model_options=model, ingress_options=ingress), name=f"bench-{name}", route_prefix=f"/{name}"
    )
    return name


def best_rows(rows: list[dict]) -> list[dict]:
    """Per (config, backend, concurrency), the round with the highest throughput: on a shared machine
    the least disturbed one (other rounds are kept in the JSON)."""
    best: dict[tuple[str, str, int], dict] = {}
    for row in rows:
        key = (row["config"], row["backend"], row["concurrency"])
        if key not in best or row["requests_per_s"] > best[key]["requests_per_s"]:
            best[key] = row
    order = {"batch": 0, "batch_serial": 1, "batch_nice5": 2, "overlap": 3, "no_batch": 4}
    return sorted(best.values(), key=lambda r: (r["backend"], order[r["config"]], r["concurrency"]))


def ratios(best: list[dict], backends: list[str], concurrency: list[int]) -> dict:
    """The side-by-side figures of issue 14: each backend's p50 at c=1 over torch's, and batching's
    requests/s over batch size 1's at the top concurrency, per backend."""
    by = {(r["config"], r["backend"], r["concurrency"]): r for r in best}
    out: dict[str, Any] = {}
    top = max(concurrency)
    for backend in backends:
        for config in ("batch", "batch_serial", "batch_nice5", "overlap", "no_batch"):
            if (config, backend, 1) in by:
                out[f"p50_ms_at_c1_{config}_{backend}"] = by[(config, backend, 1)]["p50_ms"]
            if (config, backend, top) in by:
                out[f"requests_per_s_at_c{top}_{config}_{backend}"] = by[(config, backend, top)]["requests_per_s"]
        for config in ("batch", "batch_serial"):
            if (config, backend, top) in by and ("no_batch", backend, top) in by:
                suffix = "" if config == "batch" else "_serial"
                out[f"batching_gain{suffix}_at_c{top}_{backend}"] = round(
                    by[(config, backend, top)]["requests_per_s"] / by[("no_batch", backend, top)]["requests_per_s"], 2
                )
        if backend != "torch" and ("batch", backend, 1) in by and ("batch", "torch", 1) in by:
            out[f"p50_at_c1_{backend}_over_torch"] = round(
                by[("batch", backend, 1)]["p50_ms"] / by[("batch", "torch", 1)]["p50_ms"], 3
            )
        # The model replica under SCHED_IDLE (today's `batch`) against nice 5 below normal load.
        for c, figure in ((1, "p50_ms"), (top, "requests_per_s")):
            if ("batch", backend, c) in by and ("batch_nice5", backend, c) in by:
                out[f"{figure}_at_c{c}_idle_over_nice5_{backend}"] = round(
                    by[("batch", backend, c)][figure] / by[("batch_nice5", backend, c)][figure], 3
                )
        if ("overlap", backend, 1) in by and ("batch", "torch", 1) in by:
            out[f"p50_at_c1_overlap_{backend}_over_torch"] = round(
                by[("overlap", backend, 1)]["p50_ms"] / by[("batch", "torch", 1)]["p50_ms"], 3
            )
    return out


def overload_summary(rows: list[dict]) -> dict:
    """Per model niceness: the median over rounds of each overload's 503 and 200 p99 (one disturbed
    round should neither make nor break a tail figure), the worst round's open-loop 503 p99, and the
    200s answered per second."""
    out: dict[str, Any] = {}
    for niceness in sorted({r["model_niceness"] for r in rows}, key=str):
        mine = [r for r in rows if r["model_niceness"] == niceness]
        for name in ("open", "closed"):
            for status in ("503", "200"):
                p99s = [
                    r[name]["latency_by_status"][status]["p99_ms"]
                    for r in mine
                    if status in r[name]["latency_by_status"]
                ]
                if p99s:
                    out[f"overload_{name}_{status}_p99_ms_nice{niceness}"] = round(statistics.median(p99s), 2)
                    if name == "open" and status == "503":
                        out[f"overload_open_503_p99_ms_worst_round_nice{niceness}"] = max(p99s)
            answered = [r[name]["statuses"].get("200", 0) / r[name]["seconds"] for r in mine]
            out[f"overload_{name}_200_per_s_nice{niceness}"] = round(statistics.median(answered), 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    import ray
    from ray import serve

    from emokp_ray.ray_utils import init_ray

    body = crop_png()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        kp, em = served_models(args.models, Path(tmp))
        # Logical CPUs for every app at once (0.75 each: ingress 0.25 + model 0.5); each replica
        # still gets the threads its own num_cpus gives (Ray's OMP_NUM_THREADS=1), as in serve/config.yaml.
        init_ray(num_cpus=8, worker_niceness=args.worker_niceness)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        overload: list[dict] | None = None
        front_end: dict | None = None
        top = max(args.concurrency)
        try:
            if "overload" in args.configs:
                names = {niceness: deploy_overload(kp, em, niceness, args) for niceness in args.model_niceness}
                overload = run_overload(port, body, names, args)
                for name in names.values():
                    serve.delete(f"bench-{name}")
            apps = [(c, b) for c in args.configs if c != "overload" for b in args.backends]
            for config, backend in apps:
                name = deploy(config, backend, kp, em, args)
                # Warm-up: connections, kernels, the batch loop, the batch window's estimate.
                asyncio.run(drive(f"http://127.0.0.1:{port}/{name}/v1/predict", body, 8, 64, 30.0))
            # Rounds alternate the apps, so a burst of load from elsewhere on the machine hits all
            # alike rather than one app's whole measurement.
            for round_index in range(args.rounds if apps else 0):
                for c in args.concurrency:
                    for config, backend in apps:
                        url = f"http://127.0.0.1:{port}/{config}-{backend}/v1/predict"
                        result = asyncio.run(drive(url, body, c, args.requests, args.max_seconds))
                        row = {
                            "config": config,
                            "backend": backend,
                            "max_batch_size": args.max_batch_size if config != "no_batch" else 1,
                            "round": round_index,
                            "load_avg_1m": load_average(),
                            **result,
                        }
                        rows.append(row)
                        print(
                            f"round {round_index} {config:>8} {backend:>9} c={c:<3} {row['requests_per_s']:>7.1f} req/s  "
                            f"p50 {row['p50_ms']:>7.1f}  p95 {row['p95_ms']:>7.1f}  p99 {row['p99_ms']:>7.1f} ms  "
                            f"statuses {row['statuses']}  load {row['load_avg_1m']}",
                            flush=True,
                        )
            if apps:
                # The front end's ceiling: GET /v1/labels at the top concurrency goes through the
                # proxy and the ingress like a prediction and never reaches the model. No config
                # can answer predictions faster than this on this machine, so batching's gain is
                # bounded by ceiling / (batch size 1's requests/s).
                url = f"http://127.0.0.1:{port}/{apps[0][0]}-{apps[0][1]}/v1/labels"
                runs = [asyncio.run(drive(url, None, top, args.requests, args.max_seconds)) for _ in range(2)]
                front_end = max(runs, key=lambda r: r["requests_per_s"])
                print(
                    f"front end (GET /v1/labels, no model) c={top}: "
                    f"{front_end['requests_per_s']:.1f} req/s, p50 {front_end['p50_ms']:.1f} ms",
                    flush=True,
                )
        finally:
            serve.shutdown()
            ray.shutdown()

    best = best_rows(rows)
    summary = ratios(best, args.backends, args.concurrency)
    if front_end is not None:
        summary[f"front_end_requests_per_s_at_c{top}"] = front_end["requests_per_s"]
        summary[f"front_end_p50_ms_at_c{top}"] = front_end["p50_ms"]
        for backend in args.backends:
            no_batch = summary.get(f"requests_per_s_at_c{top}_no_batch_{backend}")
            if no_batch:
                summary[f"batching_gain_bound_at_c{top}_{backend}"] = round(front_end["requests_per_s"] / no_batch, 2)
    if overload is not None:
        summary.update(overload_summary(overload))
        summary["overload_open_rate_per_s"] = args.overload_rate
        summary["overload_closed_concurrency"] = args.overload_concurrency

    print()
    print(f"best of {args.rounds} rounds per row")
    print(
        f"{'config':>8} {'backend':>9} {'batch':>5} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'n':>5} {'load':>5}"
    )
    for r in best:
        print(
            f"{r['config']:>8} {r['backend']:>9} {r['max_batch_size']:>5} {r['concurrency']:>3} "
            f"{r['requests_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} "
            f"{r['ok']:>5} {r['load_avg_1m']:>5.1f}"
        )
    print(json.dumps(summary))

    result = {
        "models": {"keypoints": kp, "emotion": em} if args.models == "builtin" else "course, random init",
        "request": "one 96x96 grey PNG crop, raw image/png body, POST /v1/predict, aiohttp clients on 127.0.0.1",
        "replicas": "1 ingress + 1 model replica per app, autoscaling off",
        "batch_wait_timeout_s": args.batch_wait_timeout_s,
        "busy_batch_wait_max_s": args.busy_batch_wait_max_s,
        "torch_threads": args.torch_threads,
        "worker_niceness": args.worker_niceness,
        "best": best,
        "overload": overload,
        "summary": summary,
        "all_rounds": rows,
    }
    return save(result, args.out)


if __name__ == "__main__":
    main()
