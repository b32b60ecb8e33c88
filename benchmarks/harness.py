"""The one harness of the benchmarks: time a call, summarize timings, compare side by side, save.

Every script under benchmarks/ measures its own thing and then calls `save(report, out)`, which
stamps the report with the benchmark's name, the command line that produced it, the UTC date and the
machine, writes ONE result JSON (the script's `--out`, by default results/<benchmark>.json) and says
where. Figures published in benchmarks/README.md name that command, so a row can be re-run as is.

    parser = argparse.ArgumentParser(...)
    add_out_argument(parser, "augment_speed")
    ...
    seconds = timings(lambda: work(batch), repeats=15)
    save({"cases": {"x": summary(seconds)}}, args.out)

Machines of this project's kind differ up to 2x in speed and are often shared, so a speed figure is
a median over repeats, and a comparison is a ratio of variants measured in the same run (`ratios`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def result_path(name: str) -> Path:
    """Where benchmark `name` saves by default: benchmarks/results/<name>.json."""
    return RESULTS / f"{name}.json"


def add_out_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """The `--out` flag every benchmark has: its one result JSON."""
    default = result_path(name)
    parser.add_argument("--out", type=Path, default=default, help=f"result JSON (default {default.relative_to(REPO)})")


def load_average() -> float | None:
    """The 1-minute load average: other work on a shared machine slows every timing."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPUs, processor, Python, the numeric libraries already imported, the GPU."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1min": load_average(),
    }
    # versions of what the benchmark itself imported, never an import for the sake of the stamp
    for module in ("numpy", "torch", "ray", "onnxruntime", "cv2"):
        if module in sys.modules:
            info[module] = getattr(sys.modules[module], "__version__", None)
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timings(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed calls (allocations, caches).
    clock=time.process_time gives the process's CPU seconds instead of wall-clock seconds."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        started = clock()
        fn()
        seconds.append(clock() - started)
    return seconds


def side_by_side(
    variants: Mapping[str, Callable[[], Any]], rounds: int, calls: int = 1, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each variant. Rounds interleave the variants (each round times
    every variant for `calls` calls), so background load on a shared machine hits all of them alike."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            per_round[name].append(sum(timings(fn, calls, warmup=0)) / calls)
    return {name: statistics.median(seconds) for name, seconds in per_round.items()}


def summary(seconds: list[float], digits: int = 5) -> dict[str, float | int]:
    """Median, best and worst of a list of timings (s), and how many."""
    return {
        "median_s": round(statistics.median(seconds), digits),
        "min_s": round(min(seconds), digits),
        "max_s": round(max(seconds), digits),
        "n": len(seconds),
    }


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """The median time of fn in milliseconds."""
    return round(statistics.median(timings(fn, repeats, warmup)) * 1e3, 2)


def ratios(figures: Mapping[str, float], base: str, digits: int = 2) -> dict[str, float]:
    """Each figure divided by the figure of `base`, measured in the same run."""
    reference = figures[base]
    return {name: round(value / reference, digits) if reference else float("nan") for name, value in figures.items()}


def command_line() -> str:
    """The command that is running, as it would be typed from the repository's root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def save(report: Mapping[str, Any], out: Path | str, name: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Write the report as the benchmark's one result JSON, stamped with name, command, date and machine.

    A `machine` the report already has (taken at the start, say) is kept; numbers that JSON cannot
    hold (a Path, a numpy scalar) are written as text. Returns the stamped report."""
    out = Path(out)
    stamped = {
        "benchmark": name or Path(sys.argv[0]).stem,
        "command": command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **report,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stamped, indent=1, default=str) + "\n")
    if not quiet:
        print(f"saved {out}", flush=True)
    return stamped
