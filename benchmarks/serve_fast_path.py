"""Ray Serve's throughput-optimized mode against its defaults, side by side in one run, as ratios.

    python benchmarks/serve_fast_path.py                 # 3 rounds of 3 modes, ~15 minutes on 2 cores
    python benchmarks/serve_fast_path.py --rounds 1 --modes default throughput
    python benchmarks/serve_fast_path.py --modes default throughput_proxied --out benchmarks/results/serve_fast_path_proxied.json

`RAY_SERVE_THROUGHPUT_OPTIMIZED=1` (Ray >= 2.55) switches several of Serve's request-path settings
at once: Serve's proxy and handles default to its gRPC transport instead of Ray actor calls
(RAY_SERVE_USE_GRPC_BY_DEFAULT), user code and the router run on each replica's main event loop instead
of threads of their own, request logs are buffered, and Serve logs no longer go to stderr. These
are read once, when Serve's processes start, so each mode needs a Ray cluster of its own: every
(round, mode) runs `benchmarks/serve_latency.py` once, in a subprocess with that mode's environment
(its local Ray inherits it), the modes alternating within each round so that a slow spell of the
machine hits all alike.

Each run measures, as serve_latency.py does: the `batch` config (today's defaults: @serve.batch,
two model calls in flight) on the torch and onnx backends at concurrency 1 and --concurrency-top
(p50 ms, requests/s), the front end's ceiling (GET /v1/labels), and the `overload` config (the
default limits, model_niceness idle) under open-loop arrivals at --overload-rate on torch (the 503 p99:
issue 11's target is < 100 ms) and under --overload-concurrency instant-retry clients (answers/s).
Reported: each figure's median over rounds per mode, and each mode's ratio to `default`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emokp_ray.ray_utils import SERVE_FAST_PATH_ENV

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script: the repo root, for the harness
from benchmarks.harness import add_out_argument, save  # noqa: E402

RAY_THROUGHPUT_MODE = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(4 * 1024 * 1024),
}
# Each mode's environment on top of this process's (with every variable below removed first, so
# that a mode is exactly what it says).
MODES: dict[str, dict[str, str]] = {
    # Serve's own request path ("0" explicitly: init_ray now sets the mode for every local cluster,
    # SERVE_FAST_PATH_ENV, and a value already set stands). init_ray still adds that env's other
    # two: direct ingress off (Ray's default without the mode) and the raised gRPC cap (no effect
    # found on one node, see ray_utils).
    "default": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
    # The whole mode as Ray ships it (direct ingress on, gRPC's 4 MB cap), set explicitly because
    # init_ray turns those two back otherwise.
    "throughput": RAY_THROUGHPUT_MODE,
    # The same with Serve's logs still on stderr (Ray's worker .err files; a console with
    # log_to_driver): what that part of the mode costs.
    "throughput_stderr": {**RAY_THROUGHPUT_MODE, "RAY_SERVE_LOG_TO_STDERR": "1"},
    # What init_ray sets for a local cluster (ray_utils.SERVE_FAST_PATH_ENV): no per-replica HTTP
    # servers (direct ingress: clients come through the proxy anyway, and each such replica drains
    # at least 30 s when stopped), and the replicas' gRPC receive cap raised from 4 MiB (a guard:
    # see ray_utils).
    "throughput_proxied": SERVE_FAST_PATH_ENV,
}
MANAGED = sorted({name for env in MODES.values() for name in env})


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode, alternating (default 3)")
    parser.add_argument("--concurrency-top", type=int, default=32, help="the loaded concurrency (default 32)")
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement at most (default 200)")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="seconds per measurement at most (default 8)")
    parser.add_argument("--overload-rate", type=float, default=150.0, help="open-loop arrivals/s (default 150)")
    parser.add_argument("--overload-seconds", type=float, default=10.0, help="each overload run (default 10)")
    parser.add_argument("--overload-concurrency", type=int, default=200, help="closed-loop clients (default 200)")
    add_out_argument(parser, "serve_fast_path")
    return parser


def latency_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """serve_latency.py's arguments for one run (tests/test_benchmark_imports.py parses them with
    its parser, so a renamed flag fails there rather than after a quarter of an hour here)."""
    return [
        "--configs", "batch", "overload",
        "--backends", "torch", "onnx",
        "--concurrency", "1", str(args.concurrency_top),
        "--rounds", "1",
        "--requests", str(args.requests),
        "--max-seconds", str(args.max_seconds),
        "--overload-rate", str(args.overload_rate),
        "--overload-seconds", str(args.overload_seconds),
        "--overload-concurrency", str(args.overload_concurrency),
        "--model-niceness", "idle",
        "--out", str(out),
    ]  # fmt: skip


def run_once(mode: str, args: argparse.Namespace, out: Path) -> dict:
    """serve_latency.py once under `mode`'s environment; its summary."""
    env = {k: v for k, v in os.environ.items() if k not in MANAGED and k != "RAY_ADDRESS"}
    env.update(MODES[mode])
    command = [sys.executable, str(HERE / "serve_latency.py"), *latency_argv(args, out)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-20:]
        raise RuntimeError(f"serve_latency.py under mode {mode} exited {done.returncode}:\n" + "\n".join(tail))
    summary = json.loads(out.read_text())["summary"]
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    return summary


# The figures compared, and whether higher is better (for the printout only).
FIGURES = {
    "p50_ms_at_c1_batch_torch": False,
    "p50_ms_at_c1_batch_onnx": False,
    "requests_per_s_at_c{top}_batch_torch": True,
    "requests_per_s_at_c{top}_batch_onnx": True,
    "front_end_requests_per_s_at_c{top}": True,
    "front_end_p50_ms_at_c{top}": False,
    "overload_open_503_p99_ms_nice5": False,
    "overload_open_200_per_s_nice5": True,
    "overload_closed_200_per_s_nice5": True,
    "overload_closed_503_p99_ms_nice5": False,
}


def medians(runs: list[dict], top: int) -> dict:
    """Each figure's median over a mode's runs (a figure a run lacks, e.g. no 503 at all, is left out)."""
    out = {}
    for template in FIGURES:
        name = template.format(top=top)
        values = [r[name] for r in runs if r.get(name) is not None]
        if values:
            out[name] = round(statistics.median(values), 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    top = args.concurrency_top
    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    with tempfile.TemporaryDirectory(prefix="serve-fast-path-") as tmp:
        for round_index in range(args.rounds):
            for mode in args.modes:
                summary = run_once(mode, args, Path(tmp) / f"{mode}-{round_index}.json")
                runs[mode].append(summary)
                print(
                    f"round {round_index} {mode:>17}: p50 c=1 torch {summary.get('p50_ms_at_c1_batch_torch')} "
                    f"onnx {summary.get('p50_ms_at_c1_batch_onnx')} ms; c={top} "
                    f"torch {summary.get(f'requests_per_s_at_c{top}_batch_torch')} "
                    f"onnx {summary.get(f'requests_per_s_at_c{top}_batch_onnx')} req/s; front end "
                    f"{summary.get(f'front_end_requests_per_s_at_c{top}')} req/s; overload 503 p99 "
                    f"{summary.get('overload_open_503_p99_ms_nice5')} ms, answered "
                    f"{summary.get('overload_open_200_per_s_nice5')}/s open, "
                    f"{summary.get('overload_closed_200_per_s_nice5')}/s closed ({summary['wall_s']} s)",
                    flush=True,
                )
    by_mode = {mode: medians(mode_runs, top) for mode, mode_runs in runs.items()}
    ratios: dict[str, dict[str, float]] = {}
    if "default" in by_mode:
        base = by_mode["default"]
        for mode, figures in by_mode.items():
            if mode != "default":
                ratios[mode] = {k: round(v / base[k], 3) for k, v in figures.items() if base.get(k)}
    print()
    print(f"medians of {args.rounds} rounds" + ("; ratio to default in ( )" if ratios else ""))
    for template, higher in FIGURES.items():
        name = template.format(top=top)
        cells = []
        for mode in args.modes:
            value = by_mode[mode].get(name)
            ratio = ratios.get(mode, {}).get(name)
            cells.append(f"{mode} {value}" + (f" ({ratio}x)" if ratio is not None else ""))
        print(f"{name} ({'higher' if higher else 'lower'} is better): " + ", ".join(cells))

    result = {
        "modes": {mode: MODES[mode] for mode in args.modes},
        "medians": by_mode,
        "ratios_to_default": ratios,
        "runs": runs,
    }
    return save(result, args.out)


if __name__ == "__main__":
    main()
